"""What every wire model shares: strictness and the account-name type."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from fleetgate.shared.labels import MAX_LABELS, check_labels


__all__ = ["Labels", "Message", "Username"]

Username = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?$")
]
"""A POSIX-ish account name: no slashes, spaces, colons or leading dash."""


class Message(BaseModel):
    """Base of every wire model: immutable, and unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


Labels = Annotated[dict[str, str], Field(max_length=MAX_LABELS), AfterValidator(check_labels)]
"""A server's labels (``key=value``, :mod:`fleetgate.shared.labels`): the agent's
``[labels]`` table and its ``hello`` carry the same checked type."""
