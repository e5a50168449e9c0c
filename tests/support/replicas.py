"""Several control-plane replicas on one database, for the cluster tests.

The first replica bootstraps the PostgreSQL database (admin user and token) like
:func:`tests.support.controlplane.start_control_plane`; the others serve the same
database (``CONTROLPLANE_DATABASE_URL``, ``CONTROLPLANE_CLUSTER=true``) with the same
signing and SSH CA keys (the files beside the first one's ``db_path``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.support.controlplane import ControlPlaneProcess, TlsFiles, start_control_plane


__all__ = ["replica_env", "running_replicas", "start_replica"]


def replica_env(
    database_url: str, name: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of replica ``name`` of the cluster on ``database_url``."""
    return {
        "CONTROLPLANE_DATABASE_URL": database_url,
        "CONTROLPLANE_CLUSTER": "true",
        "CONTROLPLANE_REPLICA_ID": name,
        **(extra or {}),
    }


def start_replica(
    first: ControlPlaneProcess,
    workdir: Path,
    name: str,
    cluster_url: str,
    extra: Mapping[str, str] | None = None,
) -> ControlPlaneProcess:
    """Another replica of ``first``'s database, started on a free port."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**first._env, **replica_env(cluster_url, name, extra)}
    replica = ControlPlaneProcess(workdir, first.db_path, first.admin_token, env, tls=first.tls)
    replica.signing_public_key = first.signing_public_key
    replica.ssh_ca_public_key = first.ssh_ca_public_key
    replica.start(0)
    return replica


@contextmanager
def running_replicas(
    root: Path,
    cluster_url: str,
    count: int = 2,
    *,
    extra: Mapping[str, str] | None = None,
    tls: TlsFiles | None = None,
) -> Iterator[list[ControlPlaneProcess]]:
    """``count`` replicas named ``a``, ``b``...; all stopped at the end."""
    names = "abcdefgh"[:count]
    first = start_control_plane(
        root / names[0],
        env=replica_env(cluster_url, names[0], extra),
        tls=tls,
        database_url=cluster_url,
    )
    replicas = [first]
    try:
        for name in names[1:]:
            # One at a time: those started are stopped even if a later one fails.
            replicas.append(start_replica(first, root / name, name, cluster_url, extra))  # noqa: PERF401
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()
