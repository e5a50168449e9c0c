"""`tunnel SERVER -l LOCAL_PORT -r REMOTE_PORT`: forward a local port to the server's loopback."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from fleetgate.agentctl.commands.exec_cmd import positive_int
from fleetgate.agentctl.commands.exec_history import explain_denial
from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import EXIT_OK, AgentctlError, ControlPlaneError, UsageError
from fleetgate.agentctl.forward import Forwarder, listen
from fleetgate.agentctl.output import to_json


if TYPE_CHECKING:
    from fleetgate.agentctl.commands import SubParsers

__all__ = ["register", "run_tunnel"]

TUNNELS = "/api/tunnels/"


def port(value: str) -> int:
    """argparse type: a TCP port, 1..65535."""
    number = positive_int(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {number}")
    return number


def register(subparsers: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `tunnel`."""
    parser = subparsers.add_parser(
        "tunnel",
        parents=[common],
        help="forward a local TCP port to a port on a server's loopback",
        description="Listen on 127.0.0.1:LOCAL_PORT; every connection is carried through "
        "the control plane to the agent, which connects to 127.0.0.1:REMOTE_PORT on SERVER. "
        "Runs until Ctrl-C, or until the work session ends. The server's agent must allow "
        "the port ([tunnel] in its configuration).",
    )
    parser.add_argument("server", metavar="SERVER", help="server name or id")
    parser.add_argument(
        "-l", "--local-port", type=port, required=True, metavar="LOCAL_PORT", help="local port"
    )
    parser.add_argument(
        "-r", "--remote-port", type=port, required=True, metavar="REMOTE_PORT", help="server port"
    )
    parser.add_argument(
        "--remote-host",
        default="127.0.0.1",
        metavar="HOST",
        help="loopback address on the server (default 127.0.0.1; only loopback is allowed)",
    )
    parser.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="local address to listen on (default 127.0.0.1)",
    )
    parser.add_argument(
        "--work-session",
        metavar="ID",
        help="work session to attach to (default: $AGENTCTL_WORK_SESSION, then `work-session use`)",
    )
    parser.set_defaults(handler=run_tunnel)


def run_tunnel(ctx: Context, args: argparse.Namespace) -> int:
    """Create the tunnel, forward until stopped, delete the tunnel."""
    ctx.operation, ctx.server = "tunnel", args.server
    ctx.work_session = ctx.selected_work_session(args.work_session)
    client = ctx.client()
    body: dict[str, Any] = {
        "server": args.server,
        "remote_port": args.remote_port,
        "remote_host": args.remote_host,
    }
    if ctx.work_session:
        body["work_session"] = ctx.work_session
    try:
        listener = listen(args.bind, args.local_port)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {args.bind}:{args.local_port}: {exc.strerror or exc}"
        ) from None
    with listener:
        try:
            tunnel = client.post(TUNNELS, body)
        except ControlPlaneError as exc:
            if exc.is_gate_denial:
                explain_denial(ctx, client)
            raise
        tunnel_id = str(tunnel["id"])
        forwarder = Forwarder(ctx, tunnel_id, listener)
        try:
            asyncio.run(_forward(ctx, forwarder, args, tunnel))
        finally:
            try:
                client.request("DELETE", f"{TUNNELS}{tunnel_id}/")
            except AgentctlError as exc:
                if forwarder.fatal is None:  # an ended session has closed it already
                    ctx.out.info(f"agentctl: could not close tunnel {tunnel_id}: {exc}")
    if forwarder.fatal is not None:
        raise forwarder.fatal
    return EXIT_OK


async def _forward(
    ctx: Context, forwarder: Forwarder, args: argparse.Namespace, tunnel: dict[str, Any]
) -> None:
    await forwarder.probe()
    host, port = forwarder.listener.getsockname()[:2]
    if ctx.out.json:  # one line: scripts read it to know the tunnel is ready
        ready = to_json(
            {
                "tunnel_id": tunnel["id"],
                "local": f"{host}:{port}",
                "server": args.server,
                "remote": f"{args.remote_host}:{args.remote_port}",
                "work_session": tunnel.get("work_session"),
            },
            compact=True,
        )
        ctx.out.data(ready + "\n")
    else:
        ctx.out.data(
            f"forwarding {host}:{port} -> {args.server}:{args.remote_host}:{args.remote_port}\n"
        )
        ctx.out.info("press Ctrl-C to stop")
    # Watch the session the control plane attached (a token's tunnel has none).
    session = tunnel.get("work_session") or ctx.work_session
    await forwarder.run(str(session) if session else None)
