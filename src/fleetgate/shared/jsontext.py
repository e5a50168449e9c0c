"""JSON from the network, parsed with bounded nesting.

``json.loads`` recurses in C once per nesting level: a frame of a few kilobytes of ``[``
raises :class:`RecursionError`, which no caller expects, and a reader that lets it escape
drops its connection. Every place that parses JSON a peer sent (backhaul frames, channel
control frames, HTTP bodies) uses :func:`loads` instead: the Rust parser of
``pydantic_core`` (iterative up to its own guard, so it never touches the Python stack),
then a check that the value nests no deeper than :data:`MAX_JSON_DEPTH`. Every refusal
is a :class:`ValueError`, which those callers already turn into ``malformed``.
"""

from __future__ import annotations

from typing import Any

import pydantic_core


__all__ = ["MAX_JSON_DEPTH", "JSONDepthError", "loads"]

MAX_JSON_DEPTH = 32
"""The deepest nesting (arrays and objects) accepted; real messages nest fewer than 8."""


class JSONDepthError(ValueError):
    """The JSON text nests deeper than allowed."""


def loads(data: str | bytes | bytearray, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The value of the JSON text ``data``, nesting at most ``max_depth`` levels.

    Raises:
        ValueError: not JSON (including text with a lone surrogate), or
            :class:`JSONDepthError` when nested too deeply.
    """
    try:
        value = pydantic_core.from_json(data)
    except ValueError as exc:
        text = str(exc)
        if "recursion limit" in text:
            raise JSONDepthError(f"JSON nested deeper than {max_depth} levels") from None
        raise ValueError(text) from None
    except (TypeError, UnicodeError) as exc:
        raise ValueError(f"not JSON text: {exc}") from None
    _check_depth(value, max_depth)
    return value


def _check_depth(value: Any, max_depth: int) -> None:
    # Iterative, so checking a hostile value cannot itself exhaust the stack.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise JSONDepthError(f"JSON nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
