"""The browser tests; here, what the end of a run says about their screenshots, which
tests/conftest.py prints too (for an xdist run) without importing Playwright."""

from __future__ import annotations

from pathlib import Path

# The key of an xdist worker's `workeroutput` that carries its screenshots' paths.
SCREENSHOTS_KEY = "messageai_screenshots"


def screenshots_line(count: int, folder: Path) -> str:
    """What the end of the run says about the screenshots it took."""
    return f"browser screenshots ({count}, light and dark): {folder}"
