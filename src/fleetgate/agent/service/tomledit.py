"""Edit a few keys of a TOML file in place, keeping its comments and layout.

``fleetgate-agent register`` writes the server id into a configuration that an operator (or the
package's commented default) may have written; rewriting the whole file would lose their
comments. Only ``key = value`` lines of plain ``[section]`` tables are handled; the caller
re-parses the result and refuses if it does not read back as intended.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping


__all__ = ["render", "set_keys"]

_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")


def render(value: str | bool | float) -> str:
    """A TOML literal for a simple value (a JSON string is a valid TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def set_keys(text: str, section: str, values: Mapping[str, str | None]) -> str:
    """Set (or, with ``None``, remove) ``values`` in ``[section]`` of ``text``.

    Values are TOML literals (see :func:`render`). A missing section is appended; a
    missing key is added right after the section header.
    """
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if (m := _HEADER.match(line)) and m[1] == section),
        None,
    )
    if start is None:
        additions = [f"{key} = {value}" for key, value in values.items() if value is not None]
        if not additions:
            return text
        if lines and lines[-1].strip():
            lines.append("")
        lines += [f"[{section}]", *additions]
        return "\n".join(lines) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if _ANY_HEADER.match(lines[i])), len(lines))
    body = lines[start + 1 : end]
    for key, value in values.items():
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        index = next((i for i, line in enumerate(body) if pattern.match(line)), None)
        if index is None:
            if value is not None:
                body.insert(0, f"{key} = {value}")
        elif value is None:
            del body[index]
        else:
            body[index] = f"{key} = {value}"
    return "\n".join([*lines[: start + 1], *body, *lines[end:]]) + "\n"
