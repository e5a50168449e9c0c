"""The per-invocation context handed to every command handler."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fleetgate.agentctl.client import Client
from fleetgate.agentctl.config import ClientConfig
from fleetgate.agentctl.errors import CliError, ErrorContext
from fleetgate.agentctl.output import Output, to_json
from fleetgate.agentctl.worksessions import (
    ENV_WORK_SESSION,
    load_active,
    resolve_session,
    source_label,
    state_key,
    state_path,
)


if TYPE_CHECKING:
    import httpx

UNGATED_TOKEN_PREFIXES = ("fat_", "fst_")
"""Prefixes of API and service tokens (docs/api.md); login tokens start with `flt_`."""


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
        """False for API and service tokens (`fat_`, `fst_`: docs/api.md), which work
        sessions do not gate; True for login tokens and anything unknown."""
        return not (self.token or "").startswith(UNGATED_TOKEN_PREFIXES)

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
            f"API and service tokens are not gated by work sessions: work session "
            f"{session_id} (from {source_label(source)}) is not used, and nothing is "
            "recorded on its timeline"
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
