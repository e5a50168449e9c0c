"""The web console in a real headless Chromium against the real control plane and agent:
the request form and each rule of the guide, approval from the queue in a second browser,
a terminal, an upload read back by a command, playback; XSS, CSRF and another user's page.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.agent import AgentProcess, running_agent
from tests.support.browser import (
    WAIT,
    browser,
    find,
    log_in,
    require_browser,
    text_of,
    wait_for,
    wait_text,
)
from tests.support.controlplane import ControlPlaneProcess, running_control_plane
from tests.support.users import CreatedUser, temporary_user


pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]


@dataclass(frozen=True)
class Stack:
    cp: ControlPlaneProcess
    agent: AgentProcess
    offline: str
    """A registered server whose agent is not connected."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_browser()
    workdir: Path = tmp_path_factory.mktemp("console")
    with (
        running_control_plane(workdir / "cp") as cp,
        running_agent(cp, workdir / "agent", sections={"websh": {"hangup_grace": 1.0}}) as agent,
    ):
        offline = f"offline-{uuid.uuid4().hex[:6]}"
        cp.register_server(offline)
        yield Stack(cp, agent, offline)


@pytest.fixture
def unix_user(stack: Stack) -> Iterator[CreatedUser]:
    with temporary_user() as created:
        try:
            yield created
        finally:
            end_terminals(stack.cp, created)


def end_terminals(cp: ControlPlaneProcess, user: CreatedUser) -> None:
    """Close the user's terminals (a failed test leaves them detached) and wait until the
    user's processes are gone, so the account can be removed."""
    with cp.client() as admin:
        listing = admin.get("/api/websh/terminals/", params={"page_size": 100}).json()
        for terminal in listing["results"]:
            if terminal["username"] == user.name and terminal["status"] != "closed":
                admin.delete(f"/api/websh/terminals/{terminal['id']}/")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        alive = subprocess.run(["pgrep", "-u", str(user.uid)], capture_output=True, check=False)
        if alive.returncode != 0:
            return
        time.sleep(0.1)  # polling the process table: there is no event to await


def make_user(cp: ControlPlaneProcess, username: str, *, superuser: bool = False) -> str:
    """A console user (password login, mapped to the server account of the same name);
    returns the password."""
    password = secrets.token_urlsafe(12)
    with cp.client() as admin:
        answer = admin.post(
            "/api/iam/users/",
            json={
                "username": username,
                "password": password,
                "is_superuser": superuser,
                # A user acts on servers as their mapped account: here, the same name.
                "server_username": None if superuser else username,
            },
        )
    assert answer.status_code == 201, answer.text
    return password


def session_id_of(driver: WebDriver) -> str:
    match = re.search(r"/console/sessions/([0-9a-f-]{36})", driver.current_url)
    assert match, driver.current_url
    return match.group(1)


def api_session(cp: ControlPlaneProcess, session_id: str) -> dict[str, Any]:
    with cp.client() as admin:
        answer = admin.get(f"/api/work-sessions/sessions/{session_id}/")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def set_value(driver: WebDriver, css: str, value: str) -> None:
    """Set an input's value as typing would end (input and change events fire)."""
    driver.execute_script(
        "const e = document.querySelector(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input', {bubbles: true}));"
        "e.dispatchEvent(new Event('change', {bubbles: true}));",
        css,
        value,
    )


def submit_expecting_error(driver: WebDriver, field: str) -> str:
    find(driver, "#request-submit").click()
    error = wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#form-error[data-field="{field}"]'),
    )[0]
    return str(error.text)


def status_on_page(driver: WebDriver) -> str:
    return str(find(driver, "#session").get_attribute("data-status"))


def test_request_approve_terminal_upload_and_playback(
    stack: Stack, unix_user: CreatedUser, tmp_path: Path
) -> None:
    cp, server = stack.cp, stack.agent.name
    password = make_user(cp, unix_user.name)
    boss = f"boss{uuid.uuid4().hex[:6]}"
    boss_password = make_user(cp, boss, superuser=True)
    with browser() as user, browser() as admin:
        log_in(user, cp.url, unix_user.name, password)

        # The form, from New session: only connected servers, the guide's defaults.
        find(user, "#new-session").click()
        find(user, "#request-form")
        assert user.find_elements(By.CSS_SELECTOR, f'.server-option[data-name="{server}"]')
        assert not user.find_elements(
            By.CSS_SELECTOR, f'.server-option[data-name="{stack.offline}"]'
        )
        assert not user.find_elements(By.CSS_SELECTOR, "#assignee")  # superusers only
        for scope in ("websh", "webftp", "command", "sudo"):
            assert find(user, f"#scope-{scope}").is_selected(), scope
        for scope in ("tunnel", "editor"):
            assert not find(user, f"#scope-{scope}").is_selected(), scope
            assert user.find_elements(By.CSS_SELECTOR, f'[data-owner-enabled="{scope}"]')
        assert "4 h" in find(user, "#max-duration").text
        assert find(user, "#end-preview").text.startswith("Ends ")
        find(user, "#server-search").send_keys("no-such-name")
        option = find(user, f'.server-option[data-name="{server}"]')
        wait_for(user, lambda d: not option.is_displayed())
        set_value(user, "#server-search", "")

        # No server: refused.
        find(user, "#purpose").send_keys("check the logs")
        assert "at least one server" in submit_expecting_error(user, "servers")

        # 2,049 characters: the count turns red, and the request is refused.
        find(user, f'input[data-server-name="{server}"]').click()
        set_value(user, "#purpose", "a" * 2049)
        count = find(user, "#purpose-count")
        assert "2,049 / 2,048" in count.text
        assert "over" in str(count.get_attribute("class"))
        assert "2,048" in submit_expecting_error(user, "purpose")

        # 5 hours: over the workspace maximum, shown and refused.
        set_value(user, "#purpose", "long job")
        find(user, "#mode-custom").click()
        set_value(user, "#hours", "5")
        wait_for(user, lambda d: d.find_element(By.CSS_SELECTOR, "#duration-error").is_displayed())
        assert "maximum" in submit_expecting_error(user, "hours")

        # Port forwarding: this server's owner has not enabled it, so it is refused.
        find(user, "#mode-preset").click()
        find(user, "#scope-tunnel").click()
        note = find(user, '[data-not-offered="tunnel"]')
        wait_for(user, lambda d: note.is_displayed())
        assert server in note.text
        assert "not enabled on server" in submit_expecting_error(user, "scopes")
        find(user, "#scope-tunnel").click()

        # Scheduled start: pending now, Approved (not Active) once approved.
        set_value(user, "#purpose", "scheduled maintenance")
        find(user, "#mode-custom").click()
        find(user, "#start-scheduled").click()
        later = user.execute_script(
            "const d = new Date(Date.now() + 2 * 3600 * 1000);"
            "return new Date(d - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);"
        )
        set_value(user, "#starts-at-local", str(later))
        set_value(user, "#hours", "1")
        find(user, "#request-submit").click()
        find(user, "#session")
        scheduled = session_id_of(user)
        assert status_on_page(user) == "pending"

        # The real request: Connect on the server's card pre-selects it.
        user.get(f"{cp.url}/console/sessions")
        find(user, f'[data-connect="{server}"]').click()
        assert find(user, f'input[data-server-name="{server}"]').is_selected()
        find(user, "#purpose").send_keys("Fix **nginx** on the web tier")
        find(user, "#preview-button").click()
        wait_text(user, "#purpose-preview strong", "nginx")
        find(user, "#preset-1h").click()
        find(user, "#request-submit").click()
        find(user, "#session")
        now_id = session_id_of(user)
        assert status_on_page(user) == "pending"
        assert find(user, "#purpose-rendered strong").text == "nginx"
        assert {
            e.get_attribute("data-scope")
            for e in user.find_elements(By.CSS_SELECTOR, "#features li")
        } == {"websh", "webftp", "command", "sudo"}
        assert user.find_elements(By.CSS_SELECTOR, "#action-cancel")

        # The list: status filter and search.
        user.get(f"{cp.url}/console/sessions?status=pending&q=scheduled")
        rows = user.find_elements(By.CSS_SELECTOR, "#sessions tr[data-session]")
        assert [r.get_attribute("data-session") for r in rows] == [scheduled]
        user.get(f"{cp.url}/console/sessions?status=active")
        assert find(user, "#no-sessions")

        # The superuser approves the request from the queue, in a second browser...
        log_in(admin, cp.url, boss, boss_password)
        find(admin, "#nav-approvals").click()
        find(admin, f'tr[data-session="{now_id}"] .pick').click()
        find(admin, "#approve-selected").click()
        assert "Approved 1" in find(admin, "#flash").text
        assert not admin.find_elements(By.CSS_SELECTOR, f'tr[data-session="{now_id}"]')
        # ... and the scheduled one from its page, without privilege elevation.
        find(admin, f'tr[data-session="{scheduled}"] a').click()
        find(admin, "#approve-form summary").click()
        find(admin, "#adjust-flag").click()
        find(admin, '#approve-form input[name="scopes"][value="sudo"]').click()
        find(admin, "#action-approve").click()
        wait_for(admin, lambda d: status_on_page(d) == "approved")
        features = admin.find_elements(By.CSS_SELECTOR, "#features li")
        assert {f.get_attribute("data-scope") for f in features} == {"websh", "webftp", "command"}

        # Scheduled: Approved until it begins; Activate, Extend, Complete by the user.
        user.get(f"{cp.url}/console/sessions/{scheduled}")
        assert status_on_page(user) == "approved"
        assert find(user, "#approver").text == boss
        find(user, "#action-activate").click()
        wait_for(user, lambda d: status_on_page(d) == "active")
        ends = find(user, "#expires").text
        Select(find(user, "#extend-duration")).select_by_visible_text("+2h")
        find(user, "#action-extend").click()
        # Approved means frozen: a user's extension goes back to the approver...
        wait_for(user, lambda d: status_on_page(d) == "pending")
        admin.get(f"{cp.url}/console/sessions/{scheduled}")
        find(admin, "#action-approve").click()
        wait_for(admin, lambda d: status_on_page(d) == "approved")
        # ... and, approved again (its scheduled start is still ahead), it is activated
        # once more and runs to its new end.
        user.get(f"{cp.url}/console/sessions/{scheduled}")
        assert find(user, "#expires").text != ends
        find(user, "#action-activate").click()
        wait_for(user, lambda d: status_on_page(d) == "active")
        find(user, "#action-complete").click()
        wait_for(user, lambda d: status_on_page(d) == "completed")
        wait_text(user, "#timeline", "extend")
        user.get(f"{cp.url}/console/sessions/{now_id}")
        assert status_on_page(user) == "active"
        wait_text(user, "#timeline", "approved")

        # The terminal opens as the session's user (read from the API).
        account = api_session(cp, now_id)["assigned_user"]["name"]
        find(user, f'[data-launch="{server}"]').click()
        find(user, "#open-terminal").click()
        wait_text(user, "#terminal-state", "connected")
        wait_text(user, ".xterm-rows", "$")  # the prompt: typed keys echo after it
        find(user, ".xterm-helper-textarea").send_keys("id -un\n")

        def answered(d: WebDriver) -> bool:
            lines = text_of(d, ".xterm-rows > div").splitlines()
            return any(line.strip() == account for line in lines)

        wait_for(user, answered)

        # Resize reaches the PTY; a reload reattaches to the same shell (detach grace).
        def pty_size(d: WebDriver) -> str | None:
            found = re.findall(r"^(\d+ \d+)\s*$", text_of(d, ".xterm-rows > div"), re.MULTILINE)
            return found[-1] if found else None

        find(user, ".xterm-helper-textarea").send_keys("stty size\n")
        before = wait_for(user, pty_size)
        user.set_window_size(900, 700)
        find(user, ".xterm-helper-textarea").send_keys("clear; stty size\n")
        wait_for(user, lambda d: (pty_size(d) or before) != before)
        user.set_window_size(1280, 900)
        terminal_id = find(user, "#launch").get_attribute("data-terminal")
        user.refresh()
        wait_text(user, "#terminal-state", "reattached")
        assert find(user, "#launch").get_attribute("data-terminal") == terminal_id
        find(user, ".xterm-helper-textarea").send_keys("echo still-$((6*7))\n")
        wait_text(user, ".xterm-rows", "still-42")

        # Upload a file with progress, read it back with a command.
        token = secrets.token_hex(8)
        local = tmp_path / "console-upload.txt"
        local.write_text(f"uploaded {token}\n")
        find(user, "#upload-file").send_keys(str(local))
        set_value(user, "#upload-dir", unix_user.home + "/")
        find(user, "#upload").click()
        wait_text(user, "#transfer-state", "uploaded")
        progress = find(user, "#transfer-progress")
        assert progress.get_attribute("value") == progress.get_attribute("max")
        set_value(user, "#command-line", f"cat {unix_user.home}/console-upload.txt")
        find(user, "#run-command").click()
        wait_text(user, "#command-output", f"uploaded {token}")
        wait_text(user, "#command-result", "exit 0")
        set_value(user, "#download-path", f"{unix_user.home}/console-upload.txt")
        find(user, "#download").click()
        wait_text(user, "#transfer-state", f"downloaded {local.stat().st_size} bytes")

        # End the terminal; the superuser plays its recording.
        find(user, "#close-terminal").click()
        wait_text(user, "#terminal-state", "ended")
        admin.get(f"{cp.url}/console/sessions/{now_id}")

        def playable(d: WebDriver) -> list[Any]:
            buttons = d.find_elements(By.CSS_SELECTOR, ".recording .play")
            if not buttons:
                d.refresh()
            return buttons

        WebDriverWait(admin, WAIT, poll_frequency=0.5).until(playable)
        row = find(admin, ".recording")
        Select(row.find_element(By.CSS_SELECTOR, ".speed")).select_by_visible_text("4")
        row.find_element(By.CSS_SELECTOR, ".play").click()
        # The player plays the session in the page (its screen shows the shell's prompt;
        # a given line may scroll past between two looks, so the content is read below).
        wait_for(admin, lambda d: d.find_elements(By.CSS_SELECTOR, ".recording .player .ap-player"))
        wait_text(admin, ".recording .player", "$")
        # What it plays is this session: the recording holds the answer to `id -un`.
        with cp.client() as api:
            terminals = api.get("/api/websh/terminals/").json()["results"]
            [played] = [t for t in terminals if t["username"] == account]
            cast = api.get(f"/api/websh/terminals/{played['id']}/recording/")
        assert cast.status_code == 200, cast.text
        assert account in cast.text
        wait_text(admin, "#timeline", "websh")
        wait_text(admin, "#timeline", "upload")


XSS_PURPOSE = (
    "<script>window.pwned = 1</script> [click me](javascript:window.pwned=2) "
    '<img src=x onerror="window.pwned=3"> [ok](https://example.org/)'
)


def test_xss_inert_csrf_refused_and_other_users_session_404(stack: Stack) -> None:
    cp, server = stack.cp, stack.agent.name
    alice, bob = f"alice{uuid.uuid4().hex[:6]}", f"bob{uuid.uuid4().hex[:6]}"
    alice_password, bob_password = make_user(cp, alice), make_user(cp, bob)
    with browser() as driver:
        log_in(driver, cp.url, alice, alice_password)
        cookie = driver.get_cookie("fleetgate_login")
        assert cookie is not None
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert "fleetgate_login" not in driver.execute_script("return document.cookie")
        websocket_origin_checked(cp, cookie["value"])

        driver.get(f"{cp.url}/console/sessions/new?server={server}")
        set_value(driver, "#purpose", XSS_PURPOSE)
        find(driver, "#preview-button").click()
        wait_text(driver, "#purpose-preview", "click me")
        find(driver, "#request-submit").click()
        find(driver, "#session")
        session_id = session_id_of(driver)

        # Inert: the tags are text, the javascript: link is no link, nothing ran.
        for box in ("#purpose-rendered",):
            rendered = find(driver, box)
            assert "<script>window.pwned = 1</script>" in rendered.text
            assert not rendered.find_elements(By.CSS_SELECTOR, "script, img")
            hrefs = [a.get_attribute("href") for a in rendered.find_elements(By.TAG_NAME, "a")]
            assert hrefs == ["https://example.org/"]
        driver.get(f"{cp.url}/console/sessions/new?server={server}")
        set_value(driver, "#purpose", XSS_PURPOSE)
        find(driver, "#preview-button").click()
        preview = find(driver, "#purpose-preview")
        wait_text(driver, "#purpose-preview", "click me")
        assert not preview.find_elements(By.CSS_SELECTOR, "script, img")
        assert driver.execute_script("return window.pwned === undefined")

        # A state change without the CSRF token is refused, and changes nothing.
        refused = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {method: 'POST', credentials: 'same-origin',"
            " body: new URLSearchParams({action: 'cancel'})}).then(r => done(r.status));",
            f"{cp.url}/console/sessions/{session_id}/act",
        )
        assert refused == 403
        wrong = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {method: 'POST', credentials: 'same-origin',"
            " headers: {'X-CSRF-Token': 'not-the-token-of-this-browser'},"
            " body: new URLSearchParams({action: 'cancel'})}).then(r => done(r.status));",
            f"{cp.url}/console/sessions/{session_id}/act",
        )
        assert wrong == 403
        assert api_session(cp, session_id)["status"] == "pending"

        # Without a cookie at all (another site's form cannot send it: SameSite=Strict).
        with httpx.Client(base_url=cp.url) as stranger:
            answer = stranger.post(
                f"/console/sessions/{session_id}/act", data={"action": "cancel", "csrf": "x"}
            )
        assert answer.status_code in (303, 401, 403)
        assert api_session(cp, session_id)["status"] == "pending"

        # With the token, the same request works.
        driver.get(f"{cp.url}/console/sessions/{session_id}")
        find(driver, "#action-cancel").click()
        wait_for(driver, lambda d: status_on_page(d) == "cancelled")

        # Bob cannot open Alice's session: 404, and it is not in his list.
        find(driver, "#logout").click()
        find(driver, "#login-form")
        log_in(driver, cp.url, bob, bob_password)
        assert not driver.find_elements(By.CSS_SELECTOR, f'tr[data-session="{session_id}"]')
        driver.get(f"{cp.url}/console/sessions/{session_id}")
        assert find(driver, "#error-page h1").text == "404"
        driver.get(f"{cp.url}/console/sessions/{session_id}/timeline")
        assert find(driver, "#error-page h1").text == "404"
        with httpx.Client(base_url=cp.url, cookies=driver_cookies(driver)) as bob_http:
            assert bob_http.get(f"/console/sessions/{session_id}").status_code == 404
        assert not driver.find_elements(By.CSS_SELECTOR, "#nav-approvals")
        driver.get(f"{cp.url}/console/approvals")
        assert find(driver, "#error-page h1").text == "403"


def driver_cookies(driver: WebDriver) -> dict[str, str]:
    return {str(c["name"]): str(c["value"]) for c in driver.get_cookies()}


def websocket_origin_checked(cp: ControlPlaneProcess, key: str) -> None:
    """The login cookie opens a channel only from a page of the console's own origin."""
    url = cp.url.replace("http://", "ws://") + "/ws/files/?server=nowhere&op=download&path=/x"
    # Same origin: the cookie authenticates (the gate then wants a work session).
    for origin, status in (("http://evil.example", 401), (cp.url, 403)):
        with pytest.raises(InvalidStatus) as refused:
            connect(
                url,
                additional_headers={"Cookie": f"fleetgate_login={key}", "Origin": origin},
                open_timeout=WAIT,
            )
        assert refused.value.response.status_code == status, origin
