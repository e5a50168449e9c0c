"""The per-invocation context handed to every command handler."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from fleetgate.agentctl.client import Client
from fleetgate.agentctl.config import ClientConfig
from fleetgate.agentctl.errors import CliError, ErrorContext
from fleetgate.agentctl.output import Output
from fleetgate.agentctl.worksessions import load_active, resolve_session, state_path


if TYPE_CHECKING:
    import httpx


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
    _clients: list[Client] = field(default_factory=list)

    def error_context(self) -> ErrorContext:
        """What to tell `diagnose` about this invocation."""
        return ErrorContext(
            operation=self.operation,
            server=self.server,
            url=self.config.url,
            auth_method=self.auth_method,
            work_session=self.work_session,
        )

    def selected_work_session(self, flag: str | None = None) -> str | None:
        """The session a gated command attaches to: `flag`, `AGENTCTL_WORK_SESSION`, then
        the one stored by `work-session use` for this control plane."""
        stored = load_active(state_path(self.config_path), self.config.url)
        session_id, _source = resolve_session(flag, self.env, stored)
        return session_id

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
