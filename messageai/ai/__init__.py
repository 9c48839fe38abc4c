"""AI over each conversation: local embeddings and the assistant (PROTOCOL.md v1.1)."""
