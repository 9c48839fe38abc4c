"""Cluster mode (docs/SCALE.md): several processes, one server.

`lease` (conversation leases in Redis) and `fence` (the epoch in a conversation's
file) are the ownership; `node` (this process in the cluster), `placement`, `link`
and `codec` (node-to-node forwarding), `drain` and `startup` (wired in by the server
when `cluster.enabled`) are the runtime; `storage` says where a taken conversation's
file comes from: the shared data directory, or `replica` and `s3`, which keep each
conversation's WAL in S3-compatible storage before the ack (§7b). `presence` and
`userbus` (presence and a user's own frames across nodes) are built beside it, not
wired into the node yet. Optional: `lease`, `node`, `link`, `drain`, `startup`,
`storage`, `presence` and `userbus` need the `cluster` extra (`coredis`); a
single-node server imports none of it.
"""
