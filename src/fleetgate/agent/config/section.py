"""The base of every table of the agent configuration."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


__all__ = ["Section"]


class Section(BaseModel):
    """One table of the file: frozen once loaded, and an unknown key is an error (a
    misspelt setting fails the start instead of being silently ignored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
