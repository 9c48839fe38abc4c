"""Cluster mode (docs/SCALE.md): conversation leases in Redis, the epoch fence, the
conversation WAL replica in S3-compatible storage, and presence and a user's own
frames across nodes.

Optional: needs the `cluster` extra (`coredis`) for `lease`, `presence` and `userbus`;
`fence`, `replica` and `s3` need nothing more than the server's own dependencies.
"""
