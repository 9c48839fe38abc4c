"""Operating a server's data: backups (`ops.backup`)."""
