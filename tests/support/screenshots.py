"""``make screenshots``: every page of the console, taken by the browser the tests use.

``python -m tests.support.screenshots docs/console`` starts a control plane and an agent in
a temporary directory, walks a request from the form to playback as a user and a
superuser, and saves one PNG per page.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.agent import running_agent
from tests.support.browser import browser, find, log_in, wait_for, wait_text
from tests.support.controlplane import ControlPlaneProcess, running_control_plane
from tests.support.users import temporary_user


PURPOSE = """Restart **nginx** on the web tier after the TLS certificate rotation.

- check `nginx -t` first
- runbook: [TLS rotation](https://wiki.example.org/tls)"""


def _user(cp: ControlPlaneProcess, name: str, superuser: bool = False) -> str:
    password = secrets.token_urlsafe(12)
    with cp.client() as admin:
        answer = admin.post(
            "/api/iam/users/",
            json={"username": name, "password": password, "is_superuser": superuser},
        )
        answer.raise_for_status()
    return password


def _more_requests(cp: ControlPlaneProcess, username: str, password: str) -> None:
    """Two more pending requests, so the queue and the list show more than one."""
    with cp.client() as admin:
        login = admin.post("/api/auth/login/", json={"username": username, "password": password})
        login.raise_for_status()
        token = login.json()["token"]
        for purpose, duration in (("Rotate the **backup** keys", "2h"), ("Check disk usage", "1h")):
            admin.post(
                "/api/work-sessions/sessions/",
                headers={"Authorization": f"Bearer {token}"},
                json={
                    "description": purpose,
                    "servers": ["web-01"],
                    "scopes": ["command"],
                    "duration": duration,
                },
            ).raise_for_status()


def _shot(driver: WebDriver, out: Path, name: str) -> None:
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, max(700, min(int(height) + 20, 2000)))
    driver.save_screenshot(str(out / f"{name}.png"))
    driver.set_window_size(1280, 900)
    print(f"wrote {out / name}.png")


def take(out: Path) -> None:
    """Write the screenshots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, temporary_user() as unix:
        work = Path(tmp)
        with (
            running_control_plane(work / "cp") as cp,
            running_agent(cp, work / "agent", name="web-01"),
        ):
            cp.register_server("db-01")  # registered, offline: not offered in the form
            password, boss_password = _user(cp, unix.name), _user(cp, "admin2", True)
            with browser() as user, browser() as boss:
                user.get(f"{cp.url}/console/login")
                _shot(user, out, "login")
                log_in(user, cp.url, unix.name, password)
                user.get(f"{cp.url}/console/servers")
                _shot(user, out, "servers")
                user.get(f"{cp.url}/console/sessions/new?server=web-01")
                find(user, "#purpose").send_keys(PURPOSE)
                find(user, "#preview-button").click()
                wait_text(user, "#purpose-preview", "nginx")
                _shot(user, out, "request-form")
                find(user, "#request-submit").click()
                find(user, "#session")
                wait_text(user, "#timeline", "created")
                _shot(user, out, "session-pending")
                session_url = user.current_url.split("?")[0]

                _more_requests(cp, unix.name, password)
                log_in(boss, cp.url, "admin2", boss_password)
                boss.get(f"{cp.url}/console/approvals")
                find(boss, "#pending")
                _shot(boss, out, "approvals")
                find(boss, f'tr[data-session="{session_url.rsplit("/", 1)[1]}"] .pick').click()
                find(boss, "#approve-selected").click()
                find(boss, "#flash")

                user.get(session_url)
                find(user, "[data-launch]").click()
                find(user, "#open-terminal").click()
                wait_text(user, "#terminal-state", "connected")
                find(user, ".xterm-helper-textarea").send_keys("id -un; pwd\n")
                wait_text(user, ".xterm-rows", unix.name)
                find(user, "#command-line").send_keys("ls -la ~")
                find(user, "#run-command").click()
                wait_text(user, "#command-result", "exit")
                _shot(user, out, "launch")
                find(user, "#close-terminal").click()
                wait_text(user, "#terminal-state", "ended")

                boss.get(f"{cp.url}/console/sessions")
                _shot(boss, out, "sessions")
                boss.get(session_url)

                def playable(d: WebDriver) -> bool:
                    if d.find_elements(By.CSS_SELECTOR, ".recording .play"):
                        return True
                    d.refresh()
                    return False

                wait_for(boss, playable)
                find(boss, ".recording .play").click()
                wait_text(boss, ".recording .player", unix.name)
                wait_text(boss, "#timeline", "websh")
                _shot(boss, out, "session-detail")
                boss.get(f"{cp.url}/api/docs")
                find(boss, ".swagger-ui .info")
                _shot(boss, out, "api-docs")


if __name__ == "__main__":
    take(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console"))
