"""The per-invocation context handed to every command handler."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fleetgate.agentctl.client import Client
from fleetgate.agentctl.config import ClientConfig
from fleetgate.agentctl.errors import AgentctlError, CliError, ErrorContext
from fleetgate.agentctl.output import Output, to_json
from fleetgate.agentctl.worksessions import (
    ENV_WORK_SESSION,
    load_active,
    resolve_session,
    save_active,
    source_label,
    state_key,
    state_path,
)


if TYPE_CHECKING:
    import httpx

LOGIN_TOKEN_PREFIX = "flt_"  # noqa: S105 - a prefix, not a secret
SERVICE_TOKEN_PREFIX = "fst_"  # noqa: S105 - a prefix, not a secret
"""Token prefixes (docs/api.md): login tokens are always gated, service tokens never."""
WHOAMI = "/api/auth/whoami/"


@dataclass
class Context:
    """Config, output and streams of one invocation; handlers record what they are doing
    (`operation`, `server`) so that an error can be diagnosed precisely."""

    out: Output
    config_path: Path
    config: ClientConfig
    env: Mapping[str, str]
    stdin: TextIO
    transport: httpx.BaseTransport | None = None  # an in-memory transport in unit tests
    operation: str = ""
    server: str | None = None
    work_session: str | None = None
    auth_method: str | None = None
    session: dict[str, Any] | None = None  # the selected session, fetched to explain a denial
    _clients: list[Client] = field(default_factory=list)
    _gated: bool | None = None

    def error_context(self) -> ErrorContext:
        """What to tell `diagnose` about this invocation."""
        return ErrorContext(
            operation=self.operation,
            server=self.server,
            url=self.config.url,
            auth_method=self.auth_method,
            work_session=self.work_session,
            session=self.session,
        )

    @property
    def token(self) -> str | None:
        """The configured token (file or environment), if any."""
        return None if self.config.token is None else self.config.token.get_secret_value()

    @property
    def state_key(self) -> str | None:
        """The key of this principal's stored selection (see `worksessions.state_key`)."""
        return state_key(self.config.url, self.token)

    def work_session_choice(self, flag: str | None = None) -> tuple[str | None, str]:
        """The selected session and where the choice came from (`flag`, `env`, `use`,
        `none`): `flag`, then `AGENTCTL_WORK_SESSION`, then `work-session use`."""
        path = state_path(self.config_path)
        # The stored choice is read only when it can matter (and exists).
        consult = not flag and not self.env.get(ENV_WORK_SESSION) and path.exists()
        return resolve_session(
            flag, self.env, load_active(path, self.state_key) if consult else None
        )

    @property
    def token_is_gated(self) -> bool:
        """Whether work sessions gate this token (`whoami`'s `gated`). Login tokens (`flt_`)
        always are and service tokens (`fst_`) never; an API token is gated when a
        non-superuser made it, which only the control plane knows: it is asked once per
        token and the answer kept beside the stored selection. Unknown: gated."""
        if self._gated is None:
            self._gated = self._token_gated()
        return self._gated

    def _token_gated(self) -> bool:
        token = self.token or ""
        if token.startswith(LOGIN_TOKEN_PREFIX):
            return True
        if token.startswith(SERVICE_TOKEN_PREFIX):
            return False
        path, key = state_path(self.config_path), self.state_key
        cache_key = None if key is None else f"{key} gated"
        known = load_active(path, cache_key) if path.exists() else None
        if known in ("yes", "no"):
            return known == "yes"
        try:
            me = self.client().get(WHOAMI)
        except AgentctlError:
            return True  # say nothing rather than something wrong
        gated = bool(me.get("gated", me.get("work_session_required", True)))
        if cache_key is not None:
            with contextlib.suppress(OSError, AgentctlError):
                save_active(path, cache_key, "yes" if gated else "no")
        return gated

    def selected_work_session(self, flag: str | None = None) -> str | None:
        """The session a gated command attaches to (see `work_session_choice`).

        With an API or service token a selected session would silently do nothing: say so
        on stderr (one line, or one JSON object with `--output json`) and attach none.
        """
        session_id, source = self.work_session_choice(flag)
        if session_id is not None and not self.token_is_gated:
            self.note_not_gated(session_id, source)
            return None
        return session_id

    def note_not_gated(self, session_id: str, source: str) -> None:
        """Tell the user that their token ignores work session `session_id`."""
        message = (
            f"this token is not gated by work sessions (a superuser's or a service's): "
            f"work session {session_id} (from {source_label(source)}) is not used, and "
            "nothing is recorded on its timeline"
        )
        if self.out.json:
            self.out.info(
                to_json(
                    {
                        "ok": True,
                        "warning": "token_not_gated",
                        "reason": message,
                        "context": {"work_session": session_id, "source": source},
                    },
                    compact=True,
                )
            )
        else:
            self.out.info(f"agentctl: note: {message}")

    def client(self, *, url: str | None = None, token: str | None = None) -> Client:
        """A client for the configured control plane (or an explicit url/token, for login).

        Set :attr:`work_session` first: the client names it on every request.
        """
        base = url or self.config.url
        if not base:
            raise CliError(
                f"no control plane configured (no url in {self.config_path}); "
                "run `agentctl login URL --token TOKEN`",
                code="NOT_CONFIGURED",
            )
        if url is None and token is None:
            if self.config.token is None:
                raise CliError(
                    f"not logged in to {base}; run `agentctl login {base} --token TOKEN`",
                    code="NOT_LOGGED_IN",
                )
            token = self.config.token.get_secret_value()
        client = Client(
            base,
            token,
            verify_tls=self.config.verify_tls,
            ca_file=self.config.ca_file,
            transport=self.transport,
            work_session=self.work_session,
        )
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Close every client this invocation opened."""
        for client in self._clients:
            client.close()
        self._clients.clear()


Handler = Callable[[Context, argparse.Namespace], int]
