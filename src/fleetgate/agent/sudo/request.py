"""The decision socket's two lines: the plugin's request and the agent's answer (pure).

The plugin writes one JSON line ``{"command", "argv", "runas_uid", "runas_gid", "shell",
"sudoedit"}``; the agent answers ``allow <code> <message>`` or ``deny <code> <message>``.
What the request says about its caller is never read: the kernel says who it is.
"""

from __future__ import annotations

from fleetgate.agent.policy.sudo_decision import SudoCall, SudoVerdict
from fleetgate.shared.jsontext import loads as json_loads


__all__ = ["MAX_REQUEST_BYTES", "BadRequest", "parse_request", "reply_line"]

MAX_REQUEST_BYTES = 64 * 1024


class BadRequest(ValueError):
    """The plugin's request is not what it should be."""


def parse_request(data: bytes, *, caller_uid: int, caller_user: str) -> SudoCall:
    """The call described by the plugin's JSON line.

    Raises:
        BadRequest: not JSON, or a field missing or of the wrong type.
    """
    try:
        doc = json_loads(data)
    except ValueError:
        raise BadRequest("not JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("not a JSON object")
    command, argv = doc.get("command"), doc.get("argv")
    if not isinstance(command, str) or not command:
        raise BadRequest("command: a non-empty string is required")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise BadRequest("argv: a non-empty list of strings is required")
    ids = [doc.get("runas_uid"), doc.get("runas_gid")]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise BadRequest("runas_uid, runas_gid: integers are required")
    return SudoCall(
        command=command,
        argv=tuple(argv),
        runas_uid=int(doc["runas_uid"]),
        runas_gid=int(doc["runas_gid"]),
        shell=doc.get("shell") is True,
        sudoedit=doc.get("sudoedit") is True,
        caller_uid=caller_uid,
        caller_user=caller_user,
    )


def reply_line(verdict: SudoVerdict) -> bytes:
    """The answer the plugin reads: one line, the message shortened and on that line."""
    word = "allow" if verdict.allowed else "deny"
    message = verdict.message.replace("\n", " ")[:1000]
    return f"{word} {verdict.code} {message}\n".encode()
