"""Output helpers: aligned tables, JSON documents, cell formatting, diagnostics.

Data goes to stdout, everything else (errors, hints) to stderr. Tables are plain aligned
columns: stable for tests and `grep`, and no terminal assumptions.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, TextIO

from fleetgate.agentctl.errors import Diagnostic


# Control characters (C0, DEL, C1) would corrupt a table row or move the cursor; drop them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_cell(value: object) -> str:
    """Render one table cell: None as '', newlines as spaces, control characters removed."""
    if value is None:
        return ""
    text = str(value).replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return _CONTROL.sub("", text)


def truncate(text: str, width: int) -> str:
    """Cut `text` to `width` characters, marking the cut with an ellipsis."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned with two spaces between them; no trailing spaces; ends with a newline."""
    cells = [[clean_cell(h) for h in headers]] + [[clean_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


def yes_no(value: object) -> str:
    """'yes' / 'no' for booleans, '' for unknown."""
    return "" if value is None else ("yes" if value else "no")


def format_timestamp(value: object, tz: tzinfo | None = None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS' in local time (or `tz`); '' when absent."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(tz)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def format_seconds(value: object) -> str:
    """A duration in seconds, human-sized: '0.4ms', '0.023s', '12.5s', '3m05s', '2h01m'."""
    if value is None:
        return ""
    try:
        seconds = float(str(value))
    except ValueError:
        return str(value)
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def to_json(value: Any, *, compact: bool = False) -> str:
    """JSON text: 2-space indented for documents, one line for diagnostics."""
    if compact:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(value, ensure_ascii=False, indent=2)


@dataclass
class Output:
    """Where and how one invocation prints: the `--output` mode and the two streams."""

    mode: str = "table"
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def json(self) -> bool:
        """True with `--output json`."""
        return self.mode == "json"

    def data(self, text: str) -> None:
        """Write data to stdout and flush (output may be streamed)."""
        self.stdout.write(text)
        self.stdout.flush()

    def document(self, value: Any) -> None:
        """Print one JSON document on stdout."""
        self.data(to_json(value) + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Print an aligned table on stdout."""
        self.data(render_table(headers, rows))

    def info(self, message: str) -> None:
        """A human message on stderr (never data)."""
        self.stderr.write(message + "\n")
        self.stderr.flush()

    def diagnostic(self, diag: Diagnostic) -> None:
        """Report an error: text lines, or one compact JSON object with `--output json`."""
        if self.json:
            self.info(to_json(diag.payload, compact=True))
        else:
            for line in diag.lines:
                self.info(line)
