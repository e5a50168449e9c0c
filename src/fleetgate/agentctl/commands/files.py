"""`cp SRC DST` and `edit SERVER:/path`: file transfer as the session user.

`cp` copies one file (or a directory with `-r`) between this machine and a server; either
SRC or DST is `SERVER:/path`. It shows a progress bar (bytes, rate, ETA) on a terminal,
resumes by itself when the connection drops (and when run again after being killed), and
with `--output json` prints a summary. `edit` downloads a file, opens `$VISUAL`/`$EDITOR`
on a private copy and uploads it back only if it changed, and only if the file on the
server is still the one that was opened (the agent checks its SHA-256 just before the
atomic rename); otherwise it exits 1 and keeps the edited copy.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import EXIT_OK, CliError, UsageError
from fleetgate.agentctl.filedownload import download_file
from fleetgate.agentctl.filetransfer import Options, TransferFailed
from fleetgate.agentctl.fileupload import upload_file
from fleetgate.agentctl.transfers import Local, Progress, Remote, parse_location, summary


if TYPE_CHECKING:
    from fleetgate.agentctl.commands import SubParsers

__all__ = ["register", "run_cp", "run_edit"]


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `cp` and `edit`."""
    cp = subparsers.add_parser(
        "cp",
        parents=[common],
        help="copy files to or from a server",
        usage="agentctl cp [options] SRC DST",
        description="Copy SRC to DST; exactly one of them is SERVER:/absolute/path. The "
        "transfer runs on the server as the user (-u, default root), streamed, SHA-256 "
        "checked, written atomically; an existing directory DST receives SRC under its name.",
    )
    cp.add_argument("src", metavar="SRC")
    cp.add_argument("dst", metavar="DST")
    cp.add_argument("-r", "--recursive", action="store_true", help="copy a directory")
    _common_flags(cp)
    cp.add_argument("--overwrite", action="store_true", help="replace an existing destination file")
    cp.add_argument("--no-progress", action="store_true", help="no progress bar")
    cp.set_defaults(handler=run_cp)

    edit = subparsers.add_parser(
        "edit",
        parents=[common],
        help="edit a file on a server with $EDITOR",
        usage="agentctl edit [options] SERVER:/path",
        description="Open SERVER:/path in $VISUAL or $EDITOR (default vi) on a private copy; "
        "write it back only if you changed it and the file on the server did not change "
        "meanwhile.",
    )
    edit.add_argument("target", metavar="SERVER:/path")
    _common_flags(edit)
    edit.set_defaults(handler=run_edit)


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-u",
        "--user",
        help="user on the server (default: root, or your server account if you are gated)",
    )
    parser.add_argument("-g", "--group", help="group on the server (default: the user's)")
    parser.add_argument(
        "--work-session",
        metavar="ID",
        help="work session to attach to (default: $AGENTCTL_WORK_SESSION, then `work-session use`)",
    )


def _options(ctx: Context, args: argparse.Namespace, server: str) -> Options:
    ctx.server = server
    ctx.work_session = ctx.selected_work_session(args.work_session)
    return Options(
        server=server,
        user=args.user,
        group=args.group,
        overwrite=getattr(args, "overwrite", False),
        work_session=ctx.work_session,
    )


@contextmanager
def _progress_bar(ctx: Context, label: str, total: int | None, enabled: bool) -> Iterator[Any]:
    """A rich progress bar on stderr (bytes, rate, ETA) or a silent counter."""
    clock = Progress(total=total, start=time.monotonic())
    if not enabled or ctx.out.json or not ctx.out.stderr.isatty():
        yield lambda done: clock.update(done, time.monotonic()), clock
        return
    # Only a terminal gets a bar: rich (54 modules, 25-30 ms of a cold start) is imported
    # here, not by every `cp` a script or a pipeline runs.
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress as RichProgress, TextColumn

    bar = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[eta]}"),
        console=Console(file=ctx.out.stderr),
        transient=False,
    )
    with bar:
        task = bar.add_task(label, total=total, rate="", eta="")

        def report(done: int) -> None:
            now = time.monotonic()
            clock.update(done, now)
            eta = clock.eta()
            bar.update(
                task,
                completed=done,
                rate=f"{clock.rate() / 1e6:.1f} MB/s",
                eta="" if eta is None else f"ETA {int(eta) // 60}:{int(eta) % 60:02d}",
            )

        yield report, clock


def run_cp(ctx: Context, args: argparse.Namespace) -> int:
    """Copy one file or tree; print a summary with `--output json`."""
    ctx.operation = "cp"
    src, dst = parse_location(args.src), parse_location(args.dst)
    if isinstance(src, Remote) == isinstance(dst, Remote):
        raise UsageError("exactly one of SRC and DST must be SERVER:/absolute/path")
    if isinstance(src, Local):
        assert isinstance(dst, Remote)
        return _upload(ctx, args, Path(src.path), dst)
    assert isinstance(src, Remote)
    assert isinstance(dst, Local)
    return _download(ctx, args, src, Path(dst.path))


def _upload(ctx: Context, args: argparse.Namespace, local: Path, remote: Remote) -> int:
    opts = _options(ctx, args, remote.server)
    if not local.exists():
        raise CliError(f"{local}: no such file or directory")
    if local.is_dir() and not args.recursive:
        raise UsageError(f"{local} is a directory (use -r)")
    if not local.is_dir() and not local.is_file():
        raise CliError(f"{local} is not a regular file")
    name = local.resolve().name
    total = None if local.is_dir() else local.stat().st_size
    started = time.monotonic()
    with _progress_bar(ctx, name, total, not args.no_progress) as (report, _):
        if local.is_dir():
            # Here: tarfile and its compression modules (5 ms of every start) are for -r.
            from fleetgate.agentctl.filetrees import upload_tree

            coro = upload_tree(ctx, opts, local, remote.path, name=name, report=report)
        else:
            coro = upload_file(ctx, opts, local, remote.path, name=name, report=report)
        done = _run(coro)
    return _finish(ctx, "upload", remote, str(local), done, started, local.is_dir())


def _download(ctx: Context, args: argparse.Namespace, remote: Remote, local: Path) -> int:
    opts = _options(ctx, args, remote.server)
    target = local / remote.name if local.is_dir() else local
    if not remote.name:
        raise UsageError("cannot download / itself; name a file or directory")
    if not args.recursive and target.exists() and not args.overwrite:
        raise CliError(f"{target} exists (use --overwrite)")
    started = time.monotonic()
    with _progress_bar(ctx, remote.name, None, not args.no_progress) as (report, clock):
        if args.recursive:
            from fleetgate.agentctl.filetrees import download_tree

            coro = download_tree(ctx, opts, remote.path, target, report=report)
        else:

            def sized(ready: dict[str, Any]) -> None:
                clock.total = ready.get("size")

            coro = download_file(ctx, opts, remote.path, target, report=report, on_ready=sized)
        done = _run(coro)
    return _finish(ctx, "download", remote, str(target), done, started, args.recursive)


def _run(coro: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        return await coro

    return asyncio.run(main())


def _finish(
    ctx: Context, op: str, remote: Remote, local: str, done: dict[str, Any], started: float,
    recursive: bool,
) -> int:  # fmt: skip
    doc = summary(
        op=op,
        server=remote.server,
        remote=str(done.get("path") or remote.path),
        local=local,
        size=int(done["size"]),
        seconds=time.monotonic() - started,
        sha256=str(done["sha256"]),
        resumed_from=int(done.get("resumed_from") or 0),
        recursive=recursive,
    )
    if ctx.out.json:
        ctx.out.document(doc)
    else:
        rate = doc["bytes_per_second"]
        speed = f", {rate / 1e6:.1f} MB/s" if rate else ""
        resumed = f", resumed from byte {doc['resumed_from']}" if doc["resumed_from"] else ""
        ctx.out.info(
            f"{op}ed {doc['bytes']} bytes in {doc['seconds']:.2f}s{speed}{resumed} "
            f"({doc['remote_path']}, sha256 {doc['sha256'][:16]}...)"
        )
    return EXIT_OK


# -- edit ---------------------------------------------------------------------------------


def _editor(ctx: Context) -> list[str]:
    words = shlex.split(ctx.env.get("VISUAL") or ctx.env.get("EDITOR") or "vi")
    if not words:
        raise CliError("$EDITOR is empty")
    return words


def run_edit(ctx: Context, args: argparse.Namespace) -> int:
    """Download, edit, upload if changed and unchanged on the server."""
    ctx.operation = "edit"
    remote = parse_location(args.target)
    if not isinstance(remote, Remote) or not remote.name:
        raise UsageError("edit takes SERVER:/absolute/path/of/a/file")
    opts = _options(ctx, args, remote.server)
    workdir = Path(tempfile.mkdtemp(prefix="agentctl-edit-"))  # 0700
    copy = workdir / remote.name
    done = _run(download_file(ctx, opts, remote.path, copy, report=lambda _: None, retries=2))
    os.chmod(copy, 0o600)
    original = str(done["sha256"])
    status = subprocess.run([*_editor(ctx), str(copy)], check=False).returncode
    if status != 0:
        raise CliError(f"the editor exited with status {status}; nothing was written back")
    if _sha256(copy) == original:
        ctx.out.info(f"{remote.server}:{remote.path} unchanged; nothing to write back")
        _cleanup(workdir)
        return EXIT_OK
    opts.overwrite = True
    try:
        written = _run(
            upload_file(
                ctx, opts, copy, remote.path, name=remote.name, report=lambda _: None,
                expect_sha256=original, tid=os.urandom(16).hex(),
            )
        )  # fmt: skip
    except TransferFailed as exc:
        if exc.agent_code == "changed":
            raise CliError(
                f"{remote.server}:{remote.path} changed on the server since it was opened; "
                f"nothing was written. Your edited copy is kept at {copy}",
                code="files_changed",
            ) from None
        raise CliError(
            f"{exc.message}; your edited copy is kept at {copy}", code=exc.code
        ) from None
    _cleanup(workdir)
    if ctx.out.json:
        ctx.out.document({"ok": True, "path": written.get("path"), "sha256": written["sha256"]})
    else:
        ctx.out.info(f"wrote {remote.server}:{written.get('path') or remote.path}")
    return EXIT_OK


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _cleanup(workdir: Path) -> None:
    for child in workdir.iterdir():
        child.unlink()
    workdir.rmdir()
