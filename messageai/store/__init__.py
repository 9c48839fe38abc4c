"""The server's SQL: plain synchronous functions that take the connection first.

`directory`, `clerk`, `media` and `push` run on the directory database and are
called through `services.directory.Directory` (its own methods, and `read`/`write`
for the media and push services), and by the CLI's `user add` until that goes
through the directory; `conversation` runs on one conversation's own file and is
called only by that conversation's actor. Where each call runs (inline, or on a
commit thread) is decided in `messageai.threads`. The client SDK keeps its own SQL
(`client/store.py`).
"""
