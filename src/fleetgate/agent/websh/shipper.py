"""Shipping finished recordings to the control plane; the local copy goes only after the
control plane confirmed it stored the same bytes.

Upload: the agent dials ``/ws/agent/recordings/<terminal_id>/`` with its credentials, sends
the file as binary frames, then ``{"type": "end", "size", "sha256"}``; the control plane
answers ``{"type": "stored", "size", "sha256"}``. Files whose upload fails stay in the spool
and are tried again (backoff), and at the next start of the agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import UUID

import structlog

from fleetgate.agent.backhaul import ChannelLink, dial_path
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.errors import ChannelClosed, ConnectionLost
from fleetgate.agent.websh.quota import SpoolQuota
from fleetgate.shared.backoff import backoff_delays
from fleetgate.shared.jsontext import loads as json_loads


__all__ = ["CHUNK", "RecordingShipper", "UploadFailed"]

log = structlog.get_logger(__name__)

CHUNK = 256 * 1024
RETRY_MIN, RETRY_MAX = 1.0, 60.0
_PERMANENT = {4400, 4403, 4404}

Dialer = Callable[[AgentConfig, str, str, UUID], Awaitable[ChannelLink]]


class UploadFailed(Exception):
    """The control plane did not confirm the recording (``permanent``: do not retry now)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class RecordingShipper:
    """Uploads recordings handed to :meth:`submit` and those left over in the spool."""

    def __init__(
        self,
        config: AgentConfig,
        key: str,
        quota: SpoolQuota,
        *,
        busy: Callable[[UUID], bool],
        dial: Dialer = dial_path,
    ) -> None:
        self._config = config
        self._key = key
        self._quota = quota
        self._busy = busy
        self._dial = dial
        self._todo: dict[UUID, Path] = {}
        self._wake = asyncio.Event()
        self.shipped = 0

    def submit(self, terminal_id: UUID, path: Path) -> None:
        """Queue a finished recording (the file is the durable queue)."""
        self._todo[terminal_id] = path
        self._wake.set()

    def leftovers(self) -> None:
        """Queue the recordings found in the spool that no running terminal writes."""
        for path in sorted(self._config.recordings_dir.glob("*.cast")):
            try:
                terminal_id = UUID(path.stem)
            except ValueError:
                continue
            if not self._busy(terminal_id):
                self.submit(terminal_id, path)

    async def run(self) -> None:
        """Ship forever (cancelled at shutdown; an interrupted upload is redone later)."""
        self.leftovers()
        delays = backoff_delays(RETRY_MIN, RETRY_MAX)
        while True:
            await self._wake.wait()
            self._wake.clear()
            failed = False
            for terminal_id, path in list(self._todo.items()):
                try:
                    await self.ship(terminal_id, path)
                except UploadFailed as exc:
                    log.warning(
                        "websh.recording_upload_failed",
                        terminal_id=str(terminal_id),
                        reason=str(exc),
                        retry=not exc.permanent,
                    )
                    if exc.permanent:
                        self._todo.pop(terminal_id, None)
                    else:
                        failed = True
                    continue
                self._todo.pop(terminal_id, None)
            if failed:
                await asyncio.sleep(next(delays))  # the control plane is unreachable
                self._wake.set()
            else:
                delays = backoff_delays(RETRY_MIN, RETRY_MAX)

    async def ship(self, terminal_id: UUID, path: Path) -> None:
        """Upload one file, then delete it and give its bytes back to the quota.

        Raises:
            UploadFailed: not confirmed; the file is kept.
        """
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            return
        url_path = f"/ws/agent/recordings/{terminal_id}/"
        try:
            link = await self._dial(self._config, self._key, url_path, terminal_id)
        except ConnectionLost as exc:
            raise UploadFailed(str(exc)) from exc
        try:
            digest = await _send_file(link, path)
            answer = await asyncio.wait_for(link.recv(), 60)
        except ChannelClosed as exc:
            raise UploadFailed(
                f"closed ({exc.code}): {exc.reason}", permanent=exc.code in _PERMANENT
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise UploadFailed(f"upload interrupted: {exc}") from exc
        finally:
            await _close(link)
        stored = _parse(answer)
        if stored.get("type") != "stored" or stored.get("sha256") != digest:
            raise UploadFailed(f"the control plane did not confirm the upload: {answer!r:.200}")
        await asyncio.to_thread(path.unlink, missing_ok=True)
        self._quota.give_back(size)
        self.shipped += 1
        log.info("websh.recording_shipped", terminal_id=str(terminal_id), size=size)


async def _send_file(link: ChannelLink, path: Path) -> str:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := await asyncio.to_thread(file.read, CHUNK):
            digest.update(chunk)
            size += len(chunk)
            await link.send(chunk)
    hexdigest = digest.hexdigest()
    await link.send(json.dumps({"type": "end", "size": size, "sha256": hexdigest}))
    return hexdigest


def _parse(answer: bytes | str) -> dict[str, object]:
    try:
        value = json_loads(answer)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _close(link: ChannelLink) -> None:
    try:
        async with asyncio.timeout(5):
            await link.close(1000, "")
    except (TimeoutError, OSError):
        link.abort()
