"""What replicas tell each other: small notes carrying ids, pure (no I/O).

A note is one line ``<kind> <ref> [<target>]`` sent as a PostgreSQL ``NOTIFY`` payload
(capped at 8000 bytes by PostgreSQL; ours are < 200). Anything larger (an encoded frame,
a revocation's detail) is a row of ``cluster_frames`` and the note names its id.

Kinds:

``frame <replica id>``
    frames wait for the agents linked to that replica: it claims them all (one
    ``DELETE ... RETURNING``, so exactly one replica sends each) and sends them.
``chan <frame id> <channel id>``
    an agent's answer about a channel (its refusal) for the replica where the channel's
    client waits.
``revoke <frame id>``
    a revocation every replica applies to the channels and tunnels it relays.
``link <server id> <replica id>`` / ``unlink <server id> <replica id>``
    an agent's link came up on, or left, that replica (the others mirror it).
``down <replica id>``
    a replica stops (its links are gone).
``reinstate <user id>``
    a disabled user was enabled again: every replica forgets its revocation.
``kick <server id> <replica id>``
    the server was deleted: the replica holding its link closes it.
``poke scheduler`` / ``poke clock``
    a command was scheduled, or a work session changed, on some replica: the leader's
    scheduler or work-session clock looks again.
``wake <command id>,<command id>,...``
    these commands changed (reports stored): output streams waiting on them read again.
    At most :data:`MAX_WAKE_IDS` ids per note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args


__all__ = [
    "CHANNEL_NAME",
    "KINDS",
    "MAX_NOTE_BYTES",
    "MAX_WAKE_IDS",
    "Note",
    "NoteError",
    "parse_note",
    "wake_notes",
]

Kind = Literal[
    "frame", "chan", "revoke", "link", "unlink", "down", "wake", "poke", "kick", "reinstate"
]
KINDS: frozenset[str] = frozenset(get_args(Kind))
MAX_WAKE_IDS = 150
"""Command ids per ``wake`` note (150 UUIDs: 5.5 KB, under the payload limit)."""
CHANNEL_NAME = "fleetgate_cluster"
"""The ``LISTEN``/``NOTIFY`` channel of every replica of one database."""
MAX_NOTE_BYTES = 8000
"""PostgreSQL's limit of a ``NOTIFY`` payload (in bytes, with the default block size)."""

_TOKEN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ARITY = {
    "frame": 2,
    "chan": 3,
    "revoke": 2,
    "link": 3,
    "unlink": 3,
    "down": 2,
    "wake": 2,
    "poke": 2,
    "kick": 3,
    "reinstate": 2,
}
"""Parts of each kind of note, the kind included."""


class NoteError(ValueError):
    """A payload that is not a note (ignored and logged by the receiver)."""


@dataclass(frozen=True, slots=True)
class Note:
    """One note: its kind, what it refers to, and whom it is for (if anyone)."""

    kind: Kind
    ref: str
    target: str | None = None

    def encode(self) -> str:
        """The payload; raises :class:`NoteError` when a part is not a plain token."""
        parts = [self.kind, self.ref] if self.target is None else [self.kind, self.ref, self.target]
        text = " ".join(parts)
        check = parse_note(text)  # one definition of what is valid
        if check != self:
            raise NoteError(f"note does not round-trip: {text!r}")
        return text


def wake_notes(command_ids: list[str]) -> list[Note]:
    """``wake`` notes naming ``command_ids`` (each once), :data:`MAX_WAKE_IDS` per note."""
    unique = list(dict.fromkeys(command_ids))
    return [
        Note("wake", ",".join(unique[i : i + MAX_WAKE_IDS]))
        for i in range(0, len(unique), MAX_WAKE_IDS)
    ]


def parse_note(payload: str) -> Note:
    """The note in ``payload``.

    Raises:
        NoteError: an unknown kind, a wrong number of parts, a part that is not a plain
            token (letters, digits, ``._:-``, at most 128), or a payload over the limit.
    """
    if len(payload.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise NoteError("note longer than a NOTIFY payload may be")
    parts = payload.split(" ")
    kind = parts[0]
    if kind not in KINDS:
        raise NoteError(f"unknown note kind {kind[:32]!r}")
    if len(parts) != _ARITY[kind]:
        raise NoteError(f"a {kind!r} note has {_ARITY[kind]} parts, got {len(parts)}")
    tokens = parts[1].split(",") if kind == "wake" else parts[1:]
    if len(tokens) > MAX_WAKE_IDS:
        raise NoteError(f"more than {MAX_WAKE_IDS} ids in one note")
    for part in [*tokens, *parts[2:]]:
        if not _TOKEN.match(part):
            raise NoteError(f"not a plain token: {part[:32]!r}")
    target = parts[2] if len(parts) == 3 else None
    return Note(kind, parts[1], target)  # type: ignore[arg-type]  # checked against KINDS


assert set(_ARITY) == KINDS, "every kind of note has an arity"
