"""The ``files`` channel service: one transfer per channel, performed by a worker as the user.

``check`` refuses early what needs no file system (transfers disabled, a path that is not
absolute or escapes, outside the allowed roots, a file announced larger than the limit);
``serve`` resolves the user, starts the worker (:mod:`fleetgate.agent.files.workerproc`)
and relays until the worker is done (:mod:`fleetgate.agent.files.relay`). Everything
else is decided by the worker, as the user.
"""

from __future__ import annotations

import asyncio

import structlog

from fleetgate.agent.backhaul import ChannelLink
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.errors import ChannelRefused, CommandError, UnknownGroup, UnknownUser
from fleetgate.agent.exec.identity import resolve_identity
from fleetgate.agent.files.relay import relay_worker
from fleetgate.agent.files.workerproc import start_worker
from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.paths import normalise, within_roots
from fleetgate.shared.heap import keep_large_buffers, trim_heap
from fleetgate.shared.protocol import ChannelOpen, FilesSpec, GrantClaims


__all__ = ["FilesService"]

log = structlog.get_logger(__name__)


class FilesService:
    """Serves ``files`` channels (scope ``webftp``)."""

    kind = "files"
    scope = "webftp"

    def __init__(self, config: AgentConfig) -> None:
        self._files = config.files
        self._roots = tuple(str(r) for r in config.files.allowed_roots or ())
        self._chunk = min(config.files.chunk_bytes, config.limits.max_frame_bytes)

    def check(self, message: ChannelOpen) -> None:
        """Refuse without I/O what can be refused from the request alone."""
        spec = self._spec(message)
        if not self._files.enabled:
            raise ChannelRefused("files_disabled", "file transfer is disabled on this server")
        try:
            path = normalise(spec.path)
        except TransferError as exc:
            raise ChannelRefused(f"files_{exc.code}", exc.message) from None
        if not within_roots(path, self._roots):
            raise ChannelRefused("files_outside_roots", f"{path} is outside the allowed roots")
        if spec.size is not None and spec.size > self._files.max_file_bytes:
            raise ChannelRefused(
                "files_too_large",
                f"{spec.size} bytes exceed the limit of {self._files.max_file_bytes}",
            )

    @staticmethod
    def _spec(message: ChannelOpen) -> FilesSpec:
        spec = message.spec
        if not isinstance(spec, FilesSpec):
            raise ChannelRefused("unsupported", "not a files channel")
        return spec

    def request(self, spec: FilesSpec) -> dict[str, object]:
        """The worker's request: the spec plus this agent's limits."""
        return {
            "type": "request",
            "op": spec.op,
            "path": spec.path,
            "name": spec.name,
            "recursive": spec.recursive,
            "overwrite": spec.overwrite,
            "transfer_id": spec.transfer_id,
            "offset": spec.offset,
            "size": spec.size,
            "expect_sha256": spec.expect_sha256,
            "max_file_bytes": self._files.max_file_bytes,
            "allowed_roots": list(self._roots),
            "chunk_bytes": self._chunk,
            # A single file's descriptor comes back to the agent, which moves the bytes.
            "handover": not spec.recursive,
        }

    async def serve(
        self, message: ChannelOpen, link: ChannelLink, claims: GrantClaims | None
    ) -> None:
        """Run the transfer in a worker as the user and relay it."""
        spec = self._spec(message)
        try:
            identity = await asyncio.to_thread(resolve_identity, spec.username, spec.groupname)
        except UnknownUser as exc:
            raise ChannelRefused("unknown_user", str(exc)) from None
        except UnknownGroup as exc:
            raise ChannelRefused("unknown_group", str(exc)) from None
        except CommandError as exc:
            raise ChannelRefused("privilege", str(exc)) from None
        with structlog.contextvars.bound_contextvars(user=spec.username):
            log.info("files.started", op=spec.op, path=spec.path, recursive=spec.recursive)
            keep_large_buffers()  # frames from the heap, not one mmap each
            proc, stdout = await start_worker(identity)
            try:
                outcome = await relay_worker(link, proc, stdout, self.request(spec))
            finally:
                # The megabytes the frames left in the heap go back to the system; without
                # this the agent's RSS would creep up over a few large transfers.
                trim_heap()
            final = outcome.final or {}
            log.info(
                "files.ended",
                op=spec.op,
                path=final.get("path", spec.path),
                result=final.get("type", "interrupted"),
                code=final.get("code"),
                size=final.get("size"),
                sha256=final.get("sha256"),
            )
