"""Token ACLs: what a restricted token may do, per operation. Pure (no I/O).

An ACL names each operation it allows; an operation it does not name is refused::

    {"command": ["uptime", "systemctl status *"],   # command lines (patterns)
     "env": ["LANG"],                               # env names those commands may set
     "websh": true,                                 # terminals
     "webftp": ["/srv/site"],                       # file transfers under these paths
     "tunnel": [5432],                              # tunnels to these loopback ports
     "users": ["deploy"]}                           # server accounts (absent: any)

A token created with the older ``command_acl: [...]`` has ``{"command": [...]}``: it runs
those lines and nothing else (no terminals, transfers or tunnels, no env).
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator


__all__ = ["OPERATIONS", "SHELL_SYNTAX", "AclRefusal", "TokenAcl", "acl_allows", "line_allowed"]

SHELL_SYNTAX = frozenset(";|&$`<>\n\r")
"""Characters that make a command line more than one simple command; such a line never
matches an ACL pattern (``$(`` is covered by ``$``)."""

OPERATIONS = ("command", "websh", "webftp", "tunnel")
"""The operations an ACL can allow (``sudo`` is never allowed to a restricted token)."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class AclRefusal(Exception):
    """What an ACL does not allow; ``source`` names the request field."""

    def __init__(self, detail: str, source: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.source = source


class TokenAcl(BaseModel):
    """A token's ACL (stored as JSON on the token)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    command: tuple[str, ...] | None = Field(default=None, max_length=1000)
    env: tuple[str, ...] = Field(default=(), max_length=1000)
    websh: bool = False
    webftp: tuple[str, ...] | None = Field(default=None, max_length=1000)
    tunnel: tuple[int, ...] | None = Field(default=None, max_length=1000)
    users: tuple[str, ...] | None = Field(default=None, max_length=1000)

    @field_validator("command")
    @classmethod
    def _patterns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and any(not p.strip() or len(p) > 4096 for p in value):
            raise ValueError("patterns must be non-empty strings of at most 4096 characters")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [n for n in value if not _ENV_NAME.match(n)]
        if bad:
            raise ValueError(f"not an environment variable name: {bad[0][:40]!r}")
        return value

    @field_validator("webftp")
    @classmethod
    def _paths(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if any(not p.startswith("/") or "\0" in p or len(p) > 4096 for p in value):
            raise ValueError("paths must be absolute")
        return tuple(posixpath.normpath(p) for p in value)

    @field_validator("tunnel")
    @classmethod
    def _ports(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and any(not 1 <= p <= 65535 for p in value):
            raise ValueError("ports must be between 1 and 65535")
        return value

    def allows_operation(self, operation: str) -> bool:
        """Whether the ACL names ``operation`` at all."""
        if operation == "websh":
            return self.websh
        if operation in ("command", "webftp", "tunnel"):
            return getattr(self, operation) is not None
        return False

    def check_user(self, username: str | None) -> None:
        """Refuse a server account the ACL does not list (``None``: the default account)."""
        if self.users is None:
            return
        if username is None or username not in self.users:
            raise AclRefusal(
                f"this token may act only as {', '.join(self.users) or 'no account'} "
                f"on servers, not as {username or 'the default account'!r}",
                "username",
            )

    def check_command(self, line: str, env_names: Sequence[str], username: str | None) -> None:
        """Refuse a command line, env or account the ACL does not allow."""
        if not line_allowed(self.command, line):
            raise AclRefusal("This token's command ACL does not allow this command line.", "line")
        extra = sorted(set(env_names) - set(self.env))
        if extra:
            raise AclRefusal(f"env: this token's ACL does not allow setting {extra[0]}", "env")
        self.check_user(username)

    def check_path(self, path: str, username: str | None) -> None:
        """Refuse a transfer outside the ACL's paths (``..`` is resolved first)."""
        prefixes = self.webftp or ()
        norm = posixpath.normpath(path) if path.startswith("/") else ""
        if not any(norm == p or norm.startswith(p.rstrip("/") + "/") for p in prefixes):
            raise AclRefusal(f"this token's ACL does not allow transfers of {path[:200]!r}", "path")
        self.check_user(username)

    def check_port(self, port: int) -> None:
        """Refuse a tunnel to a port the ACL does not list."""
        if port not in (self.tunnel or ()):
            raise AclRefusal(f"this token's ACL does not allow tunnels to port {port}", "port")


def _split(text: str) -> list[str] | None:
    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError:
        return None


def _pattern_matches(pattern: str, words: Sequence[str]) -> bool:
    if any(ch in SHELL_SYNTAX for ch in pattern):
        return False
    pattern_words = _split(pattern)
    if not pattern_words:
        return False
    if pattern_words[-1] == "*":
        prefix = pattern_words[:-1]
        return list(words[: len(prefix)]) == prefix
    return list(words) == pattern_words


def line_allowed(patterns: Sequence[str] | None, line: str) -> bool:
    """Whether a command ``line`` matches one of ``patterns`` (``None``: no commands).

    The line and each pattern are split into words like the shell does (``shlex``); a
    final ``*`` in a pattern matches any remaining arguments (including none), every
    other word must be equal. A line containing shell syntax (``; | & $ ` < >``, newline)
    never matches, so an allowed prefix cannot smuggle a second command.
    """
    if patterns is None:
        return False
    if not line.strip() or any(ch in SHELL_SYNTAX for ch in line):
        return False
    words = _split(line)
    if not words:
        return False
    return any(_pattern_matches(pattern, words) for pattern in patterns)


def acl_allows(acl: Sequence[str] | None, line: str) -> bool:
    """Whether a token whose ``command_acl`` is ``acl`` may run ``line`` (``None``: no
    ACL, everything allowed; an empty list allows nothing)."""
    return True if acl is None else line_allowed(acl, line)
