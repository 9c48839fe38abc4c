"""Cluster mode (docs/SCALE.md): conversation leases in Redis and the epoch fence
(`lease`, `fence`), presence and a user's own frames across nodes (`presence`,
`userbus`).

Optional: needs the `cluster` extra (`coredis`) for all but `fence`, which needs nothing.
"""
