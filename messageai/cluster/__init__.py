"""Cluster mode (docs/SCALE.md): conversation leases in Redis, the epoch fence, and the
conversation WAL replica in S3-compatible storage.

Optional: needs the `cluster` extra (`coredis`) for `lease`; `fence`, `replica` and `s3`
need nothing more than the server's own dependencies.
"""
