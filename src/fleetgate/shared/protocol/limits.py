"""The size limits of a command, in one place, so the API and the agent agree.

The API refuses a command that the agent would refuse (``400 INVALID_COMMAND`` naming
the limit); the agent refuses the same things with the same models. Pure: no I/O.

- a line of at most :data:`MAX_LINE_CHARS` characters;
- at most :data:`MAX_ENV_VARS` environment variables, each ``NAME=value`` at most
  :data:`MAX_ENV_VAR_BYTES` bytes (the kernel's limit for one string passed to
  ``execve``) and all of them together at most :data:`MAX_ENV_BYTES`;
- the whole ``command.run`` frame, grant included, at most the receiving agent's
  ``limits.max_message_bytes`` (default :data:`DEFAULT_MAX_MESSAGE_BYTES`), which the
  agent announces in its ``hello``.
"""

from __future__ import annotations

from collections.abc import Mapping


__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "GRANT_MAX_BYTES",
    "MAX_ENV_BYTES",
    "MAX_ENV_VARS",
    "MAX_ENV_VAR_BYTES",
    "MAX_LINE_CHARS",
    "env_problem",
    "frame_problem",
]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""A final result is capped at 1 MiB of output; JSON escaping can grow it, never 4x."""

MAX_LINE_CHARS = 65_536
"""Characters in a command line."""

MAX_ENV_VARS = 256
"""Variables in a command's ``env``."""

MAX_ENV_VAR_BYTES = 128 * 1024 - 1
"""Bytes of one ``NAME=value`` (UTF-8), the terminating NUL excluded: Linux refuses a
longer string in ``execve`` (``MAX_ARG_STRLEN``)."""

MAX_ENV_BYTES = 1024 * 1024
"""Bytes of all of a command's ``NAME=value`` strings together (UTF-8)."""

GRANT_MAX_BYTES = 65_536 + 256 + 64
"""The most a grant adds to a frame (its payload and signature bounds, and the JSON)."""


def env_problem(env: Mapping[str, str]) -> str | None:
    """Why ``env`` is too large, naming the limit; ``None`` when it fits."""
    total = 0
    for key, value in env.items():
        size = len(key.encode("utf-8", "surrogatepass")) + 1
        size += len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_ENV_VAR_BYTES:
            return (
                f"environment variable {key[:64]} is {size} bytes; one variable may have "
                f"at most {MAX_ENV_VAR_BYTES} bytes"
            )
        total += size
    if total > MAX_ENV_BYTES:
        return f"the environment is {total} bytes; the limit is {MAX_ENV_BYTES} bytes"
    return None


def frame_problem(size: int, max_message_bytes: int) -> str | None:
    """Why a ``command.run`` frame of ``size`` bytes cannot be sent; ``None`` when it fits."""
    if size > max_message_bytes:
        return (
            f"the command.run message is {size} bytes; the agent accepts at most "
            f"{max_message_bytes} bytes (limits.max_message_bytes)"
        )
    return None
