"""MessageAI: a self-hosted chat server on Trio with one SQLite file per conversation."""

__version__ = "0.1.0"
