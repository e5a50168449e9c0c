"""agentctl: the operator CLI of the control plane (a pure HTTP client of `docs/api.md`)."""

from __future__ import annotations
