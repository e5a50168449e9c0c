"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by
selenium, and the console steps the browser tests and the screenshots share.

Each :func:`browser` is its own browser profile: two of them are two people with their
own cookies. Every wait is an explicit wait on the page (no fixed sleeps).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar, cast

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait


__all__ = [
    "CHROMEDRIVER",
    "WAIT",
    "browser",
    "find",
    "log_in",
    "require_browser",
    "text_of",
    "wait_for",
    "wait_text",
]

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT = 30.0
"""Upper bound of one wait; a loaded 2-core machine answers well within it."""
DIST = (
    Path(__file__).resolve().parents[2]
    / "src/fleetgate/controlplane/console/static/dist/console.js"
)

_T = TypeVar("_T")


def require_browser() -> None:
    """Fail (under CI) or skip when Chromium, its driver or the built front-end is missing."""
    missing = [p for p in (CHROMEDRIVER, CHROMIUM) if not os.path.exists(p)]
    if not DIST.is_file():
        missing.append(f"{DIST} (run `make console`)")
    if missing:
        message = "needs " + ", ".join(missing) + " (`make debs console`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def browser(width: int = 1280, height: int = 900) -> Iterator[WebDriver]:
    """A fresh headless Chromium; quit (and its processes reaped) on exit."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


_NAVIGATION_RACES = (
    "does not belong to the document",
    "execution context was destroyed",
    "cannot find context with specified id",
)
"""What Chromium's driver says (as a bare ``WebDriverException``) when an element or script
of the page being left is used while the next page loads: the condition is simply not true
yet."""


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], _T], timeout: float = WAIT) -> _T:
    """Wait until ``condition(driver)`` is truthy and return it; a page that is changing
    under the condition (a form just submitted) counts as "not yet"."""

    def settled(d: WebDriver) -> _T | bool:
        try:
            return condition(d)
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        except WebDriverException as exc:
            if any(race in str(exc.msg).lower() for race in _NAVIGATION_RACES):
                return False
            raise

    # until() returns only a truthy value, so never the False of "not yet".
    return cast(_T, WebDriverWait(driver, timeout, poll_frequency=0.1).until(settled))


def find(driver: WebDriver, css: str, timeout: float = WAIT) -> WebElement:
    """The first element matching ``css``, once it is there."""
    return wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, css), timeout)


def text_of(driver: WebDriver, css: str) -> str:
    """The visible text of every element matching ``css``, joined."""
    return "\n".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))


def wait_text(driver: WebDriver, css: str, needle: str, timeout: float = WAIT) -> str:
    """Wait until the text of ``css`` contains ``needle``; return that text."""

    def seen(d: WebDriver) -> str | None:
        text = d.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".map(e => e.textContent).join('\\n')",
            css,
        )
        return str(text) if needle in str(text) else None

    found = wait_for(driver, seen, timeout)
    assert found is not None
    return found


def log_in(driver: WebDriver, base: str, username: str, password: str) -> None:
    """Log in through the console's form and land on the sessions page."""
    driver.get(f"{base}/console/login")
    find(driver, "#username").send_keys(username)
    find(driver, "#password").send_keys(password)
    find(driver, "#login-submit").click()
    find(driver, "#sessions")
