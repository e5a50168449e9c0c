"""`ssh-config`, `ssh SERVER [CMD]` (and `ssh-proxy`, served by ``fleetgate.agentctl.sshproxy``).

`ssh-config` makes (once) an Ed25519 key in ``<config dir>/ssh/`` (0600), fetches a
short-lived certificate for it per server of the current work session, writes the agents'
host keys to a known-hosts file of its own (host keys are pinned, no CA needed), and
prints one OpenSSH ``Host`` block per server whose ``ProxyCommand`` is ``agentctl
ssh-proxy``. `ssh` does the same for one server into ``<config dir>/ssh/config`` and runs
the system ``ssh`` with it.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import EXIT_OK, CliError
from fleetgate.agentctl.sshproxy import main as proxy_main
from fleetgate.shared.atomic import atomic_write


if TYPE_CHECKING:
    from fleetgate.agentctl.commands import SubParsers

__all__ = ["register", "run_ssh", "run_ssh_config", "run_ssh_proxy", "ssh_config_text"]

HOSTS = "/api/ssh/hosts/"
CERTIFICATES = "/api/ssh/certificates/"


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `ssh-config`, `ssh` and (for --help only) `ssh-proxy`."""
    config = subparsers.add_parser(
        "ssh-config",
        parents=[common],
        help="print an OpenSSH config for the servers of the current work session",
        description="Fetch a short-lived SSH certificate per server of the work session and "
        "print a Host block for each (ProxyCommand `agentctl ssh-proxy`, pinned host keys). "
        "Use it with `ssh -F FILE`, or Ansible's `ansible_ssh_common_args=-F FILE`.",
    )
    _session_flags(config)
    config.add_argument("--server", action="append", metavar="SERVER", help="only this server")
    config.add_argument("-o", "--file", metavar="PATH", help="write the config here, not stdout")
    config.set_defaults(handler=run_ssh_config)

    ssh = subparsers.add_parser(
        "ssh",
        parents=[common],
        help="run the system ssh to a server through the work session",
        description="Fetch a certificate and run `ssh` to SERVER (a shell, or CMD).",
    )
    _session_flags(ssh)
    ssh.add_argument("server", metavar="SERVER", help="server name or id")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, metavar="CMD", help="remote command")
    ssh.set_defaults(handler=run_ssh)

    proxy = subparsers.add_parser(
        "ssh-proxy",
        parents=[common],
        help="ProxyCommand for OpenSSH: relay stdin/stdout to SERVER's agent",
    )
    proxy.add_argument("server", metavar="SERVER")
    proxy.add_argument("--user", metavar="USER")
    proxy.add_argument("--work-session", metavar="ID")
    proxy.set_defaults(handler=run_ssh_proxy)


def run_ssh_proxy(ctx: Context, args: argparse.Namespace) -> int:
    """`ssh-proxy` reached through the full CLI (global flags before it): the same relay."""
    argv = ["--config", str(ctx.config_path), args.server]
    if args.user:
        argv += ["--user", args.user]
    if args.work_session:
        argv += ["--work-session", args.work_session]
    return proxy_main(argv)


def _session_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-session",
        metavar="ID",
        help="work session to use (default: $AGENTCTL_WORK_SESSION, then `work-session use`)",
    )
    parser.add_argument(
        "--user", metavar="USER", help="login (superusers and tokens; default: yourself)"
    )


def _key(directory: Path) -> tuple[Path, str]:
    """The client key (made once, 0600) and its public line."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / "id_ed25519"
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        with contextlib.suppress(FileExistsError):  # another agentctl made it meanwhile
            atomic_write(path, data, 0o600, exclusive=True)
    loaded = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    public = (
        loaded.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    return path, public


def _write(path: Path, text: str) -> None:
    atomic_write(path, text, 0o600)


def ssh_config_text(
    servers: list[dict[str, Any]],
    *,
    proxy: list[str],
    key: Path,
    certificates: dict[str, Path],
    known_hosts: Path,
) -> str:
    """OpenSSH ``Host`` blocks, one per server (``name``, ``id``, ``principal``)."""
    blocks = []
    for server in servers:
        name = str(server["name"])
        command = " ".join(shlex.quote(p) for p in [*proxy, "--user", "%r", str(server["id"])])
        blocks.append(
            "\n".join(
                [
                    f"Host {name}",
                    f"    HostName {name}",
                    f"    User {server['principal']}",
                    f"    ProxyCommand {command}",
                    f"    IdentityFile {key}",
                    f"    CertificateFile {certificates[name]}",
                    "    IdentitiesOnly yes",
                    f"    UserKnownHostsFile {known_hosts}",
                    "    StrictHostKeyChecking yes",
                    f"    HostKeyAlias fleetgate-{server['id']}",
                    "    PasswordAuthentication no",
                    "    KbdInteractiveAuthentication no",
                ]
            )
        )
    return "\n\n".join(blocks) + "\n"


def _prepare(
    ctx: Context, work_session: str | None, user: str | None, only: list[str] | None
) -> str:
    """Fetch certificates and host keys; the config text."""
    ctx.operation = "ssh"
    ctx.work_session = ctx.selected_work_session(work_session)
    client = ctx.client()
    params = {"work_session": ctx.work_session} if ctx.work_session else None
    listing = client.get(HOSTS, params)
    servers = list(listing.get("results", []))
    if only:
        wanted = set(only)
        servers = [s for s in servers if s["name"] in wanted or s["id"] in wanted]
        missing = wanted - {s["name"] for s in servers} - {s["id"] for s in servers}
        if missing:
            raise CliError(f"not in the work session: {', '.join(sorted(missing))}")
    if not servers:
        raise CliError("no server to reach over SSH in this work session")
    directory = ctx.config_path.parent / "ssh"
    key, public = _key(directory)
    certificates: dict[str, Path] = {}
    known: list[str] = []
    for server in servers:
        body: dict[str, Any] = {"server": server["id"], "public_key": public}
        if user:
            body["username"] = user
        if ctx.work_session:
            body["work_session"] = ctx.work_session
        issued = client.post(CERTIFICATES, body)
        cert_path = directory / f"{server['name']}-cert.pub"
        _write(cert_path, issued["certificate"] + "\n")
        certificates[server["name"]] = cert_path
        server["principal"] = issued["principal"]
        host_key = issued.get("host_key") or server.get("host_key")
        if host_key:
            known.append(f"fleetgate-{server['id']} {host_key}")
    known_hosts = directory / "known_hosts"
    _write(known_hosts, "\n".join(known) + "\n")
    proxy = [sys.executable, "-m", "fleetgate.agentctl", "ssh-proxy"]
    proxy += ["--config", str(ctx.config_path)]
    if ctx.work_session:
        proxy += ["--work-session", ctx.work_session]
    return ssh_config_text(
        servers, proxy=proxy, key=key, certificates=certificates, known_hosts=known_hosts
    )


def run_ssh_config(ctx: Context, args: argparse.Namespace) -> int:
    """Print (or write) the OpenSSH config of the work session's servers."""
    text = _prepare(ctx, args.work_session, args.user, args.server)
    if args.file:
        _write(Path(args.file), text)
    else:
        ctx.out.data(text)
    return EXIT_OK


def run_ssh(ctx: Context, args: argparse.Namespace) -> int:
    """Run the system ssh to one server with a fresh certificate."""
    text = _prepare(ctx, args.work_session, args.user, [args.server])
    path = ctx.config_path.parent / "ssh" / "config"
    _write(path, text)
    ssh = shutil.which("ssh")
    if ssh is None:
        raise CliError("the OpenSSH client (ssh) is not installed")
    host = text.split("\n", 1)[0].removeprefix("Host ").strip()
    remote = [a for a in args.remote if a != "--"]
    ctx.close()
    # ssh owns the terminal until it exits; its status is ours (the remote command's).
    return subprocess.run([ssh, "-F", str(path), host, *remote], check=False).returncode
