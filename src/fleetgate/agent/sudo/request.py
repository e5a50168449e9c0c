"""The decision socket's two lines: the plugin's request and the agent's answer (pure).

The plugin writes one JSON line ``{"command", "argv", "runas_uid", "runas_gid", "shell",
"sudoedit"}``; the agent answers ``allow <code> <message>`` or ``deny <code> <message>``.
What the request says about its caller is never read: the kernel says who it is.
"""

from __future__ import annotations

from pydantic_core import from_json

from fleetgate.agent.policy.sudo_decision import SudoCall, SudoVerdict


__all__ = ["MAX_REQUEST_BYTES", "BadRequest", "parse_request", "reply_line"]

MAX_REQUEST_BYTES = 64 * 1024


class BadRequest(ValueError):
    """The plugin's request is not what it should be."""


def parse_request(data: bytes, *, caller_uid: int, caller_user: str) -> SudoCall:
    """The call described by the plugin's JSON line.

    Raises:
        BadRequest: not JSON, or a field missing or of the wrong type.
    """
    # sudo waits on this: one pass of the Rust parser, which never recurses on the
    # Python stack (too deep a nesting is a ValueError), then the fields read are checked
    # by their exact types (the parser makes nothing but dict, list, str, int, float,
    # bool and None; ``type(x) is int`` leaves bool out). Nothing else of the value is
    # looked at, so how deep other fields nest does not matter.
    try:
        doc = from_json(data)
    except (ValueError, TypeError):
        raise BadRequest("not JSON") from None
    if type(doc) is not dict:
        raise BadRequest("not a JSON object")
    command, argv = doc.get("command"), doc.get("argv")
    if type(command) is not str or not command:
        raise BadRequest("command: a non-empty string is required")
    if type(argv) is not list or not argv or any(type(a) is not str for a in argv):
        raise BadRequest("argv: a non-empty list of strings is required")
    runas_uid, runas_gid = doc.get("runas_uid"), doc.get("runas_gid")
    if type(runas_uid) is not int or type(runas_gid) is not int:
        raise BadRequest("runas_uid, runas_gid: integers are required")
    return SudoCall(
        command=command,
        argv=tuple(argv),
        runas_uid=runas_uid,
        runas_gid=runas_gid,
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
