"""`agentctl exec -s web-01,web-02 -- CMD` and `exec -l role=web -- CMD`: one command on
many servers (a fan-out, `POST /api/events/fanouts/`), their outputs merged.

By default each output line is printed as it arrives, prefixed by its server's name;
`--grouped` prints each server's whole output under a header once it finished; with
`--output json` one JSON object per server (one line each). A summary goes to stderr.
The exit code is 0 when every server succeeded, otherwise the highest remote exit code.

`LinePrefixer`, `fanout_exit_code` and `summary` are pure (unit-tested).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleetgate.agentctl.client import Client
from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import EXIT_OK, CliError, UsageError
from fleetgate.agentctl.output import to_json
from fleetgate.agentctl.results import outcome, result_document


__all__ = ["FANOUTS", "LinePrefixer", "fanout_exit_code", "run_fanout", "summary"]

FANOUTS = "/api/events/fanouts/"
SUMMARY_NAMES = 10
"""Failed servers named in the summary; the rest are counted."""


class LinePrefixer:
    """Turns each server's output chunks into whole lines prefixed by `name: `.

    A chunk may end mid-line: the rest waits for the server's next chunk (or `flush`).
    """

    def __init__(self, width: int = 0) -> None:
        self.width = width
        self._partial: dict[str, str] = {}

    def _prefix(self, name: str) -> str:
        return f"{name.ljust(self.width)}: "

    def feed(self, name: str, content: str) -> str:
        """The complete lines `content` finishes, prefixed; keeps the unfinished tail."""
        text = self._partial.pop(name, "") + content
        *lines, tail = text.split("\n")
        if tail:
            self._partial[name] = tail
        return "".join(f"{self._prefix(name)}{line}\n" for line in lines)

    def flush(self, name: str) -> str:
        """The server's unfinished last line, if any (its command finished)."""
        tail = self._partial.pop(name, "")
        return f"{self._prefix(name)}{tail}\n" if tail else ""


def fanout_exit_code(commands: Sequence[Mapping[str, Any]]) -> int:
    """0 when every command succeeded, otherwise the highest remote exit code (a failed
    command without one counts as 1)."""
    codes = [outcome(c)[0] or 1 for c in commands if not c.get("success")]
    return max(codes, default=EXIT_OK)


def summary(commands: Sequence[Mapping[str, Any]], total: int) -> str:
    """`3 servers: 2 succeeded, 1 failed (web-02: exit 3)`."""
    failed = sorted(
        (c for c in commands if not c.get("success")), key=lambda c: str(c.get("server_name"))
    )
    ok = len(commands) - len(failed)
    text = f"{total} server{'s' if total != 1 else ''}: {ok} succeeded, {len(failed)} failed"
    missing = total - len(commands)
    if missing:
        text += f", {missing} without a result"
    if failed:
        named = []
        for c in failed[:SUMMARY_NAMES]:
            code = c.get("exit_code")
            what = f"exit {code}" if isinstance(code, int) else "no exit code"
            if c.get("error_phase"):
                what += f", {c.get('error_phase')}"
            named.append(f"{c.get('server_name')}: {what}")
        more = len(failed) - SUMMARY_NAMES
        text += f" ({', '.join(named)}{f' and {more} more' if more > 0 else ''})"
    return text


def _targets(servers: str | None, selector: str | None) -> dict[str, Any]:
    if servers is not None and selector is not None:
        raise UsageError("give either -s/--servers or -l/--selector, not both")
    if servers is not None:
        names = [name.strip() for name in servers.split(",")]
        if not names or any(not name for name in names):
            raise UsageError(f"-s: expected NAME[,NAME...], got {servers!r}")
        return {"servers": names}
    if selector is None or not selector.strip():
        raise UsageError("-l: expected a label selector such as role=web")
    return {"selector": selector}


def run_fanout(
    ctx: Context,
    client: Client,
    body: Mapping[str, Any],
    *,
    servers: str | None,
    selector: str | None,
    grouped: bool,
    detach: bool,
) -> int:
    """Create the fan-out, print every server's output and the summary; the exit code."""
    request = {k: v for k, v in body.items() if k not in ("server", "scheduled_at")}
    request.update(_targets(servers, selector))
    created = client.post(FANOUTS, request)
    if not isinstance(created, list) or not created or "fanout" not in created[0]:
        raise CliError("the control plane did not return the created fan-out")
    fanout_id = str(created[0]["fanout"])
    if detach:
        if ctx.out.json:
            ctx.out.document({"fanout": fanout_id, "commands": [c.get("id") for c in created]})
        else:
            ctx.out.data(fanout_id + "\n")
        return EXIT_OK
    width = max(len(str(c.get("server_name") or "")) for c in created)
    prefixer = LinePrefixer(width)
    outputs: dict[str, list[str]] = {}
    finished: list[Mapping[str, Any]] = []
    with client.stream_ndjson(f"{FANOUTS}{fanout_id}/stream/") as events:
        for event in events:
            name = str(event.get("server_name") or event.get("server") or "?")
            kind = event.get("event")
            if kind == "output":
                content = str(event.get("content") or "")
                if grouped or ctx.out.json:
                    outputs.setdefault(name, []).append(content)
                else:
                    ctx.out.data(prefixer.feed(name, content))
            elif kind == "finished":
                command = event.get("command")
                if not isinstance(command, Mapping):
                    raise CliError(f"bad finished line for {name}")
                finished.append({**command, "server_name": name})
                _print_finished(ctx, prefixer, name, command, outputs.pop(name, []), grouped)
            elif kind == "done":
                break
    ctx.out.info(f"agentctl: {summary(finished, len(created))}")
    if len(finished) < len(created):
        raise CliError(
            f"the output stream of fan-out {fanout_id} ended early; see "
            f"GET {FANOUTS}{fanout_id}/results/"
        )
    return fanout_exit_code(finished)


def _print_finished(
    ctx: Context,
    prefixer: LinePrefixer,
    name: str,
    command: Mapping[str, Any],
    output: list[str],
    grouped: bool,
) -> None:
    if ctx.out.json:
        document = {"server_name": name, **result_document(command, "".join(output))}
        ctx.out.data(to_json(document, compact=True) + "\n")
        return
    if grouped:
        text = "".join(output)
        newline = "" if not text or text.endswith("\n") else "\n"
        ctx.out.data(f"=== {name} ===\n{text}{newline}")
    else:
        ctx.out.data(prefixer.flush(name))
    _, problem = outcome(command)
    if problem:
        ctx.out.info(f"{name}: {problem}")
