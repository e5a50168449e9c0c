"""Agent daemon for managed Linux servers."""

__version__ = "0.1.0"

__all__ = ["__version__"]
