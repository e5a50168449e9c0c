"""The agent's TLS context: one per configuration, verifying, and a clear configuration error."""

from __future__ import annotations

import ssl
from pathlib import Path
from uuid import uuid4

import pytest

from fleetgate.agent import cli
from fleetgate.agent.backhaul import ssl_context
from fleetgate.agent.config.link import ControlPlaneConfig
from fleetgate.agent.errors import ConfigError
from tests.support.tls import make_ca


def test_https_verifies_against_the_ca_file_and_is_built_once(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    cp = ControlPlaneConfig.model_validate({"url": "https://cp.test", "ca_file": ca.cert_path})
    ctx = ssl_context(cp)
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "fleetgate test CA"),),)]
    assert ssl_context(cp) is ctx  # every channel reuses it
    assert ssl_context(ControlPlaneConfig.model_validate({"url": "http://127.0.0.1:1"})) is None


def test_an_unusable_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / f"missing-{uuid4().hex}.pem"
    cp = ControlPlaneConfig.model_validate({"url": "https://cp.test", "ca_file": missing})
    with pytest.raises(ConfigError, match=rf"^control_plane.ca_file: cannot load {missing}: "):
        ssl_context(cp)
    garbage = tmp_path / f"garbage-{uuid4().hex}.pem"
    garbage.write_text("not a certificate\n")
    cp = ControlPlaneConfig.model_validate({"url": "https://cp.test", "ca_file": garbage})
    with pytest.raises(ConfigError, match=rf"cannot load {garbage}"):
        ssl_context(cp)


def test_check_config_refuses_an_unusable_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check-config`` (and so ``run``, before dialling) names the file; exit 78."""
    key = tmp_path / "server.key"
    key.write_text("k\n")
    key.chmod(0o600)
    missing = tmp_path / f"missing-{uuid4().hex}.pem"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[control_plane]\nurl = "https://cp.test"\nca_file = "{missing}"\n'
        f'[identity]\nserver_id = "{uuid4()}"\nkey_file = "{key}"\n'
    )
    assert cli.main(["check-config", "--config", str(config)]) == cli.EXIT_CONFIG
    assert capsys.readouterr().err == (
        f"agent: control_plane.ca_file: cannot load {missing}: No such file or directory\n"
    )
    ca = make_ca(tmp_path / "ca")
    config.write_text(config.read_text().replace(str(missing), str(ca.cert_path)))
    assert cli.main(["check-config", "--config", str(config)]) == 0
