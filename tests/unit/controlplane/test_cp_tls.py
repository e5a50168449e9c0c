"""The control plane's TLS settings: both files or neither, a private key, a matching pair."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.tls import TlsSetupError, check_tls_files
from tests.support.tls import make_ca


def test_settings_take_both_files_or_neither(tmp_path: Path) -> None:
    assert not ControlPlaneSettings().tls
    both = ControlPlaneSettings(tls_cert=tmp_path / "c", tls_key=tmp_path / "k")
    assert both.tls
    for half in ({"tls_cert": tmp_path / "c"}, {"tls_key": tmp_path / "k"}):
        with pytest.raises(ValidationError, match="tls_cert and tls_key go together"):
            ControlPlaneSettings(**half)  # type: ignore[arg-type]


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONTROLPLANE_TLS_CERT", str(tmp_path / "c"))
    monkeypatch.setenv("CONTROLPLANE_TLS_KEY", str(tmp_path / "k"))
    settings = ControlPlaneSettings()
    assert (settings.tls_cert, settings.tls_key) == (tmp_path / "c", tmp_path / "k")


def test_a_good_pair_passes(tmp_path: Path) -> None:
    cert, key = make_ca(tmp_path / "ca").issue(tmp_path / "pki", ip="127.0.0.1")
    check_tls_files(cert, key)


def test_each_problem_names_its_file(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    cert, key = ca.issue(tmp_path / "pki", ip="127.0.0.1")
    other_cert, other_key = ca.issue(tmp_path / "other", dns="other.test")

    with pytest.raises(TlsSetupError, match=rf"^TLS key {tmp_path / 'nope'}: cannot read: No such"):
        check_tls_files(cert, tmp_path / "nope")
    with pytest.raises(TlsSetupError, match=rf"^TLS certificate {tmp_path / 'nope'}: cannot read"):
        check_tls_files(tmp_path / "nope", key)

    key.chmod(0o640)
    with pytest.raises(TlsSetupError, match=r"readable by group or others \(mode 0640\)"):
        check_tls_files(cert, key)
    key.chmod(0o600)

    with pytest.raises(TlsSetupError, match="do not load together"):
        check_tls_files(cert, other_key)  # another certificate's key
    with pytest.raises(TlsSetupError, match="do not load together"):
        check_tls_files(key, key)  # not a certificate
    check_tls_files(other_cert, other_key)
