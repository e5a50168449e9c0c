"""agentctl: the operator's command line, an HTTP and websocket client of `docs/api.md`."""

from __future__ import annotations
