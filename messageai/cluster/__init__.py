"""Cluster mode (docs/SCALE.md): conversation leases in Redis and the epoch fence.

Optional: needs the `cluster` extra (`coredis`) for `lease`; `fence` needs nothing.
"""
