"""MessageAI: a self-hosted chat server on Trio with one SQLite file per conversation."""

from importlib import metadata

try:
    # pyproject.toml's version is the one source; `messageai --version` prints it.
    __version__ = metadata.version("messageai")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
