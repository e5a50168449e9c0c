"""Edit a few keys of a TOML file in place, keeping its comments and layout (tomlkit).

``fleetgate-agent register`` writes the server id into a configuration that an operator (or
the package's commented default) may have written; rewriting the whole file would lose
their comments. The caller re-parses the result and refuses if it does not read back as
intended.
"""

from __future__ import annotations

from collections.abc import Mapping

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table

from fleetgate.agent.errors import ConfigError


__all__ = ["set_keys"]

Value = str | bool | int | float


def set_keys(text: str, section: str, values: Mapping[str, Value | None]) -> str:
    """Set (or, with ``None``, remove) ``values`` in ``[section]`` of ``text``.

    A missing section is appended. Values are encoded by tomlkit, so any string (quotes,
    control characters, text outside the Basic Multilingual Plane) reads back unchanged.

    Raises:
        ConfigError: ``text`` is not valid TOML, or ``section`` is not a table.
    """
    try:
        document = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(f"not valid TOML ({exc}); edit it by hand") from None
    table = document.get(section)
    if table is None:
        if all(value is None for value in values.values()):
            return text
        table = tomlkit.table()
        document.append(section, table)
    if not isinstance(table, Table):
        raise ConfigError(f"[{section}] is not a table; edit it by hand")
    for key, value in values.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return tomlkit.dumps(document)
