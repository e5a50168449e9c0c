"""Session-wide hooks: the number of structured fuzz cases run (``tests.support.fuzz``)."""

from __future__ import annotations

import pytest

from tests.support.fuzz import CASES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how many fuzz cases ran, in total and per target."""
    if not CASES:
        return
    total = sum(CASES.values())
    terminalreporter.write_sep("-", f"structured fuzz: {total} cases")
    for name, number in sorted(CASES.items()):
        terminalreporter.write_line(f"{number:>7}  {name}")
