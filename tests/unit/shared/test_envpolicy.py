"""The env denylist both ends share (``fleetgate.shared.envpolicy``). Pure."""

from __future__ import annotations

import pytest

from fleetgate.shared.envpolicy import denied_env_names, is_denied_env_name


@pytest.mark.parametrize(
    "name",
    [
        "PATH",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONWARNINGS",
        "PERL5LIB",
        "PERL5OPT",
        "RUBYLIB",
        "NODE_OPTIONS",
        "BASH_ENV",
        "ENV",
        "IFS",
        "GCONV_PATH",
        "BASH_FUNC_ls%%",
        "JAVA_TOOL_OPTIONS",
        "GLIBC_TUNABLES",
    ],
)
def test_loader_and_interpreter_variables_are_denied(name: str) -> None:
    assert is_denied_env_name(name)


@pytest.mark.parametrize("name", ["LANG", "TZ", "TERM", "HOME", "DEBIAN_FRONTEND", "path"])
def test_ordinary_variables_pass(name: str) -> None:
    assert not is_denied_env_name(name)


def test_denied_names_are_sorted_and_allowed_ones_pass() -> None:
    env = {"PATH": "x", "LD_PRELOAD": "y", "LANG": "C"}
    assert denied_env_names(env) == ["LD_PRELOAD", "PATH"]
    assert denied_env_names(env, allowed={"PATH"}) == ["LD_PRELOAD"]
    assert denied_env_names({}) == []
