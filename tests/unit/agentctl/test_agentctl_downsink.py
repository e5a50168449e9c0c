"""A download received straight into its write buffers: every byte lands in order, the
control frames still reach websockets, and a cut or malformed stream leaves a prefix.

The far end is a real websocket server on loopback, written by hand so that it can send
any frame shape (fragments, pings, a masked frame no library server would send) in
pieces of any size, headers cut anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from fleetgate.agentctl import downsink
from fleetgate.agentctl.channel import _Connection
from fleetgate.agentctl.downsink import DownloadSink
from fleetgate.shared.files.bulkwrites import frame_header
from fleetgate.shared.files.frameheads import BINARY, CONT, TEXT, parse_head
from tests.support.waiting import eventually


GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PING, PONG, CLOSE = 0x9, 0xA, 0x8

Script = Callable[[asyncio.StreamWriter], Awaitable[bool]]
"""Sends what the server sends; False: it hung up (no closing handshake)."""


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return frame_header(opcode, fin, len(payload), mask) + payload


async def send_in_pieces(writer: asyncio.StreamWriter, data: bytes, seed: int) -> None:
    """``data`` in writes of random sizes (1 byte to 300 KB): headers get cut anywhere."""
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        size = rng.choice([1, 2, 7, 100, 5000, 70_000, 300_000])
        writer.write(data[position : position + size])
        await writer.drain()
        position += size


class Peer:
    """A websocket server on loopback that runs ``script`` once the client took the
    connection over (as the agent's ``ready`` comes well after the handshake) and keeps
    the client's frames (unmasked) until the client leaves."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[tuple[int, bytes]] = []
        self.server: asyncio.Server | None = None
        self.attached = asyncio.Event()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws/files/"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await writer.drain()
        await self.attached.wait()
        if not await self.script(writer):
            writer.close()  # hung up without a closing handshake
            return
        try:
            while True:
                opcode, payload = await read_frame(reader)
                self.received.append((opcode, payload))
                if opcode == CLOSE:
                    writer.write(frame(CLOSE, payload))
                    await writer.drain()
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The client's next frame, unmasked."""
    raw = await reader.readexactly(2)
    while (head := parse_head(raw)) is None:
        raw += await reader.readexactly(1)
    payload = await reader.readexactly(head.length)
    if head.masked:
        mask = raw[head.size - 4 : head.size]
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head.opcode, payload


async def download(
    peer: Peer, url: str, path: Path, prefix: bytes = b""
) -> tuple[list[str | bytes], DownloadSink, list[int], hashlib._Hash]:
    """Receive through a DownloadSink into ``path`` (holding ``prefix``) until ``done``
    or the end of the connection; the messages websockets delivered, the sink, the
    progress reports and the hash."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, prefix)
    hasher = hashlib.sha256(prefix)
    reports: list[int] = []
    messages: list[str | bytes] = []
    try:
        async with asyncio.timeout(30):
            async with connect(url, create_connection=_Connection, compression=None) as ws:
                sink = DownloadSink.attach(ws, fd, len(prefix), hasher, reports.append)
                assert sink is not None, "taken over right after the handshake"
                peer.attached.set()
                try:
                    while (message := await ws.recv()) != "done":
                        messages.append(message)
                finally:
                    await sink.aclose()
                messages.append(message)
    finally:
        os.close(fd)
    return messages, sink, reports, hasher


SIZES = [0, 1, 13, 125, 126, 65535, 65536, (2 << 20) + 3, 9 << 20]


def data_frames(rng: random.Random) -> tuple[bytes, bytes]:
    """Binary frames of every size class, a ping and a fragmented message among them:
    the bytes on the wire and the file they carry."""
    wire, payload = bytearray(), bytearray()
    for number, size in enumerate(SIZES):
        data = rng.randbytes(size)
        wire += frame(BINARY, data)
        payload += data
        if number == 4:
            wire += frame(PING, b"are you there")
    parts = [rng.randbytes(n) for n in (70_000, 3, 1 << 20)]
    wire += frame(BINARY, parts[0], fin=False)
    wire += frame(PING, b"between fragments")
    wire += frame(CONT, parts[1], fin=False)
    wire += frame(CONT, parts[2])
    payload += b"".join(parts)
    return bytes(wire), bytes(payload)


@pytest.mark.parametrize("ring", ["default", "tiny"])
@pytest.mark.parametrize("prefix", [0, 1000, 4096])
async def test_every_byte_lands_in_order_and_control_frames_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ring: str, prefix: int
) -> None:
    if ring == "tiny":  # two buffers of two blocks: reading stalls and resumes all along
        monkeypatch.setattr(downsink, "BLOCK", 8192)
        monkeypatch.setattr(downsink, "BUFFERS", 2)
    rng = random.Random(prefix)
    wire, payload = data_frames(rng)
    head = rng.randbytes(prefix)

    async def script(writer: asyncio.StreamWriter) -> bool:
        ready = frame(TEXT, b"ready", fin=False) + frame(CONT, b"!")  # fragmented text too
        await send_in_pieces(writer, ready + wire + frame(TEXT, b"done"), seed=prefix)
        return True

    peer = Peer(script)
    async with peer as url:
        messages, sink, reports, hasher = await download(peer, url, tmp_path / "out", head)
    assert messages == ["ready!", "done"]
    assert (tmp_path / "out").read_bytes() == head + payload
    assert sink.position == prefix + len(payload)
    assert sink.error is None
    assert hasher.hexdigest() == hashlib.sha256(head + payload).hexdigest()
    assert reports == sorted(reports)
    assert reports[-1] == sink.position
    pongs = [data for opcode, data in peer.received if opcode == PONG]
    assert pongs == [b"are you there", b"between fragments"]  # websockets answered both
    assert peer.received[-1][0] == CLOSE  # and ran the closing handshake


async def test_a_cut_connection_leaves_exactly_what_arrived(tmp_path: Path) -> None:
    rng = random.Random(7)
    first, second = rng.randbytes(3 << 20), rng.randbytes(5 << 20)
    cut = frame(BINARY, second)[:2_000_000]

    async def script(writer: asyncio.StreamWriter) -> bool:
        await send_in_pieces(writer, frame(TEXT, b"ready") + frame(BINARY, first) + cut, 1)
        return False

    peer = Peer(script)
    async with peer as url:
        with pytest.raises(ConnectionClosedError):
            await download(peer, url, tmp_path / "out")
    received = first + cut[10:]  # the 5 MiB frame's header is 10 bytes
    assert (tmp_path / "out").read_bytes() == received  # a prefix, for the resume


async def test_a_masked_frame_from_the_server_fails_the_connection(tmp_path: Path) -> None:
    async def script(writer: asyncio.StreamWriter) -> bool:
        masked = frame(BINARY, b"x" * 100_000, mask=b"abcd")
        await send_in_pieces(writer, frame(TEXT, b"ready") + masked + frame(TEXT, b"done"), 2)
        return True

    peer = Peer(script)
    async with peer as url:
        with pytest.raises(ConnectionClosedError) as caught:
            await download(peer, url, tmp_path / "out")
    assert caught.value.sent is not None
    assert caught.value.sent.code == 1002  # protocol error
    assert (tmp_path / "out").read_bytes() == b""


async def test_the_sink_takes_over_only_between_frames(tmp_path: Path) -> None:
    """Once websockets has part of a frame, the connection is left to it."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def script(writer: asyncio.StreamWriter) -> bool:
        writer.write(frame(TEXT, b"ready")[:1])  # one byte of a header
        await writer.drain()
        started.set()
        await release.wait()
        writer.write(frame(TEXT, b"ready")[1:])
        return True

    peer = Peer(script)
    peer.attached.set()
    async with peer as url:
        async with asyncio.timeout(30):
            async with connect(url, create_connection=_Connection, compression=None) as ws:
                await started.wait()
                reader = ws.protocol.reader
                await eventually(lambda: bool(reader.buffer), 10, "the byte reached websockets")
                fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    assert DownloadSink.attach(ws, fd, 0, hashlib.sha256(), print) is None
                finally:
                    os.close(fd)
                release.set()
                assert await ws.recv() == "ready"
