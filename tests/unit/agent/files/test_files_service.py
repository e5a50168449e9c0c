"""The files service's early checks, its config section and the control plane's query parsing."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleetgate.agent.config import AgentConfig, parse
from fleetgate.agent.errors import ChannelRefused, ConfigError
from fleetgate.agent.files.service import FilesService
from fleetgate.controlplane.api.files import describe, spec_from_query
from fleetgate.shared.protocol import ChannelOpen, FilesSpec


def config(**files: object) -> AgentConfig:
    return parse(
        {
            "control_plane": {"url": "http://127.0.0.1:1"},
            "identity": {"server_id": str(uuid.uuid4()), "key_file": "/k"},
            "files": files,
        }
    )


def open_message(**fields: object) -> ChannelOpen:
    spec: dict[str, object] = {
        "username": "root",
        "op": "upload",
        "path": "/srv/x",
        "transfer_id": "a" * 32,
    }
    spec.update(fields)
    return ChannelOpen(channel_id=uuid.uuid4(), spec=FilesSpec.model_validate(spec))


def refusal(service: FilesService, **fields: object) -> str:
    with pytest.raises(ChannelRefused) as info:
        service.check(open_message(**fields))
    return info.value.code


def test_check_refuses_early() -> None:
    service = FilesService(config(allowed_roots=["/srv"], max_file_bytes=100))
    service.check(open_message())
    assert refusal(service, path="/etc/passwd") == "files_outside_roots"
    assert refusal(service, path="/srv/../etc/passwd") == "files_escape"
    assert refusal(service, path="/srv/a\0b") == "files_nul"
    assert refusal(service, path="srv/x") == "files_relative"
    assert refusal(service, size=101) == "files_too_large"
    assert refusal(FilesService(config(enabled=False))) == "files_disabled"


def test_worker_request_carries_the_limits() -> None:
    service = FilesService(config(allowed_roots=["/srv"], max_file_bytes=100, chunk_bytes=65536))
    spec = open_message().spec
    assert isinstance(spec, FilesSpec)
    request = service.request(spec)
    assert request["allowed_roots"] == ["/srv"]
    assert (request["max_file_bytes"], request["chunk_bytes"]) == (100, 65536)
    # A single file's descriptor comes back to the agent; a tree streams through the worker.
    assert request["handover"] is True
    tree = spec.model_copy(update={"recursive": True})
    assert service.request(tree)["handover"] is False


def test_config_names_the_bad_key() -> None:
    with pytest.raises(ConfigError, match=r"files\.allowed_roots"):
        config(allowed_roots=["relative/dir"])
    with pytest.raises(ConfigError, match=r"files\.chunk_bytes"):
        config(chunk_bytes=10)
    assert config().files.allowed_roots is None
    assert config(allowed_roots=["/srv"]).files.allowed_roots == (Path("/srv"),)


def test_spec_from_query() -> None:
    spec = spec_from_query(
        {"op": "upload", "path": "/srv/x", "user": "deploy", "overwrite": "true", "size": "10"}
    )
    assert (spec.username, spec.overwrite, spec.recursive, spec.size) == ("deploy", True, False, 10)
    assert len(spec.transfer_id) == 32
    assert describe(spec) == "upload /srv/x as deploy"
    for bad in ({"op": "delete", "path": "/x"}, {"op": "upload"}, {"op": "upload", "path": "/x",
                "transfer_id": "NOT-HEX"}, {"op": "upload", "path": "/x", "offset": "-1"}):  # fmt: skip
        with pytest.raises(ValidationError):
            spec_from_query(bad)
