"""The MessageAI benchmark (`./scripts/bench`): orchestrator, load processes, seeding."""
