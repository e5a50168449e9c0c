"""Ansible (ansible-core from the test extra) through the config ``agentctl ssh-config``
writes: an ad-hoc ``ping`` and a three-task playbook with ``forks=10`` (ten inventory
aliases of the server, so ten ``ssh-proxy`` connections run at once)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.ssh.conftest import SshStack


pytestmark = pytest.mark.root

ALIASES = 10
PLAYBOOK = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: who
      command: id -un
      register: who
    - name: write a file
      copy:
        dest: "{{ ansible_env.HOME | default('~') }}/ansible-{{ inventory_hostname }}.txt"
        content: "hello from {{ inventory_hostname }}\\n"
    - name: read it back
      command: cat ansible-{{ inventory_hostname }}.txt
      register: back
      failed_when: back.stdout != 'hello from ' ~ inventory_hostname
"""


def ansible_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTCTL_", "ANSIBLE_"))}
    env.update(
        {
            "ANSIBLE_CONFIG": str(root / "none.cfg"),
            "ANSIBLE_HOME": str(root / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(root / "ansible-tmp"),
            "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
            "ANSIBLE_FORKS": str(ALIASES),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_TIMEOUT": "30",
        }
    )
    return env


def inventory(path: Path, sstack: SshStack, config: Path) -> Path:
    lines = ["[fleet]"]
    lines += [f"h{i} ansible_host={sstack.server}" for i in range(ALIASES)]
    lines += [
        "[fleet:vars]",
        f"ansible_user={sstack.user.name}",
        f"ansible_ssh_common_args='-F {config}'",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ansible(tool: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name(tool)), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


@pytest.mark.timeout(120)
def test_ansible_ping_and_a_playbook_with_ten_forks(sstack: SshStack, tmp_path: Path) -> None:
    session = sstack.session()
    config = sstack.configure("ansible", session)
    env = ansible_env(tmp_path)
    hosts = inventory(tmp_path / "hosts", sstack, config)
    ping = ansible("ansible", "all", "-i", str(hosts), "-m", "ping", "--limit", "h0", env=env)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert '"ping": "pong"' in ping.stdout
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK, encoding="utf-8")
    played = ansible("ansible-playbook", "-i", str(hosts), str(playbook), env=env)
    assert played.returncode == 0, played.stdout + played.stderr
    assert played.stdout.count("ok=3") == ALIASES, played.stdout
    assert played.stdout.count("failed=0") == ALIASES
    for i in range(ALIASES):
        written = Path(sstack.user.home) / f"ansible-h{i}.txt"
        assert written.read_text(encoding="utf-8") == f"hello from h{i}\n"
        assert written.stat().st_uid == sstack.user.uid
