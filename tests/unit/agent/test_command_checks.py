"""The agent's own checks of a command, pure: environment, grant, elevation, the final report
of a refusal; and the stop switches of work sessions' commands."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetgate.agent.exec.stopping import SessionStops
from fleetgate.agent.policy import GrantPolicy, GrantRefused, load_public_key
from fleetgate.agent.policy.command_checks import (
    DENIED_EXIT_CODE,
    CheckedCommand,
    check_command,
    denied_report,
)
from fleetgate.controlplane.grants import GrantSigner
from fleetgate.shared.protocol import CommandRun, GrantClaims, content_digest


SIGNER = GrantSigner(Ed25519PrivateKey.generate())
SERVER = uuid.UUID("11111111-1111-4111-8111-111111111111")
NOW = 1_800_000_000.0
POLICY = GrantPolicy(server_id=SERVER, key=load_public_key(SIGNER.public_key_b64))


def command(**fields: object) -> CommandRun:
    values: dict[str, object] = {"command_id": uuid.uuid4(), "line": "uptime"}
    values.update(fields)
    return CommandRun.model_validate(values)


def signed(message: CommandRun, *, scopes: tuple[str, ...] = ("command",)) -> CommandRun:
    """``message`` with a work-session grant for exactly its content."""
    claims = GrantClaims(
        command_id=message.command_id,
        server_id=SERVER,
        auth="work_session",
        work_session="ws-granted",
        scopes=list(scopes),
        servers=[SERVER],
        not_before=int(NOW) - 60,
        expires_at=int(NOW) + 60,
        content=content_digest(message),
    )
    return message.model_copy(update={"grant": SIGNER.sign(claims)})


class Elevations:
    """An elevation policy that records what it was asked and answers as told."""

    def __init__(self, line: str | None = "/usr/bin/uptime") -> None:
        self.line = line
        self.asked: list[tuple[CommandRun, GrantClaims | None]] = []

    def __call__(self, message: CommandRun, claims: GrantClaims | None) -> str:
        self.asked.append((message, claims))
        if self.line is None:
            raise GrantRefused("sudo_pattern_not_allowed", "no pattern matches")
        return self.line


def check(message: CommandRun, elevate: Elevations | None = None, **kw: object) -> CheckedCommand:
    return check_command(
        message,
        grants=POLICY,
        elevate=elevate or Elevations(),
        allowed_env=kw.pop("allowed_env", frozenset()),  # type: ignore[arg-type]
        now=NOW,
    )


def test_a_granted_command_runs_under_the_grants_work_session() -> None:
    message = signed(command(work_session="ws-claimed-by-the-message"))
    checked = check(message)
    assert checked.refused is None
    assert checked.claims is not None
    assert checked.claims.work_session == "ws-granted"
    assert checked.message.work_session == "ws-granted"
    assert checked.message.line == "uptime"


def test_no_grant_or_a_grant_for_other_content_is_refused() -> None:
    assert (refused := check(command()).refused) is not None
    assert refused.code == "work_session_required"
    other = signed(command(line="uptime")).model_copy(update={"line": "rm -rf /"})
    checked = check(other)
    assert checked.refused is not None
    assert checked.claims is None
    assert checked.message.line == "rm -rf /"  # refused as it came, nothing rewritten


def test_an_environment_that_chooses_the_program_is_refused_before_the_grant() -> None:
    message = signed(command(env={"LD_PRELOAD": "/tmp/evil.so"}))
    refused = check(message).refused
    assert refused is not None
    assert refused.code == "env_not_allowed"
    assert "LD_PRELOAD" in refused.detail
    assert check(message, allowed_env=frozenset({"LD_PRELOAD"})).refused is None


def test_an_elevated_command_runs_the_checked_line() -> None:
    elevations = Elevations("/usr/bin/systemctl restart nginx")
    message = signed(command(line="systemctl restart nginx", sudo=True), scopes=("sudo",))
    checked = check(message, elevations)
    assert checked.refused is None
    assert checked.message.line == "/usr/bin/systemctl restart nginx"
    # The elevation saw the grant's work session, and the digest was of the line as sent.
    ((asked, claims),) = elevations.asked
    assert asked.work_session == "ws-granted"
    assert claims is not None


def test_an_elevation_refused_keeps_the_line_and_gives_no_claims() -> None:
    message = signed(command(line="bash", sudo=True), scopes=("sudo",))
    checked = check(message, Elevations(None))
    assert checked.refused is not None
    assert checked.refused.code == "sudo_pattern_not_allowed"
    assert checked.claims is None
    assert checked.message.line == "bash"


def test_an_elevation_is_not_asked_for_without_a_valid_grant() -> None:
    elevations = Elevations()
    checked = check(command(line="uptime", sudo=True), elevations)
    assert checked.refused is not None
    assert elevations.asked == []


def test_the_report_of_a_refusal_says_it_never_started() -> None:
    at = datetime(2026, 12, 3, tzinfo=UTC)
    command_id = uuid.uuid4()
    report = denied_report(7, command_id, GrantRefused("env_not_allowed", "env: PATH"), at)
    assert (report.rid, report.command_id, report.handled_at) == (7, command_id, at)
    assert report.exit_code == DENIED_EXIT_CODE
    assert not report.success
    assert (report.error_phase, report.code, report.elapsed_time) == (
        "denied",
        "env_not_allowed",
        0.0,
    )


def test_a_session_end_stops_its_commands_and_those_still_on_their_way() -> None:
    stops = SessionStops(kept=2)
    first, second, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    running = [stops.register("ws-1", first), stops.register("ws-1", second)]
    untouched = stops.register("ws-2", other)
    stops.forget("ws-1", second)
    assert stops.end("ws-1", "ended (revoked)") == [first]
    assert running[0].stopped
    assert running[0].reason == "ended (revoked)"
    assert not running[1].stopped
    assert not untouched.stopped
    # A command of the ended session that arrives later is stopped before it starts.
    late = stops.register("ws-1", uuid.uuid4())
    assert late.stopped
    assert late.reason == "ended (revoked)"
    # Only the last `kept` ended sessions are remembered.
    stops.end("ws-3", "ended")
    stops.end("ws-4", "ended")
    assert not stops.register("ws-1", uuid.uuid4()).stopped
    assert stops.register("ws-4", uuid.uuid4()).stopped
