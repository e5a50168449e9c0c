"""Structured fuzzing: hypothesis strategies built from the pydantic models' JSON schemas.

:func:`from_schema` draws (mostly) valid instances of a model from its JSON schema (the
one ``docs/protocol.schema.json`` is made of): objects with their properties, strings
within their length and pattern, numbers within bounds, UUIDs, timestamps, unions,
discriminated unions. :func:`frames` then mutates one field of such a message at a time
(wrong types, huge values, out-of-range numbers, deletions, unknown fields, an unknown
``type``, deep nesting) or the frame's text itself, and yields the frame's JSON text:
what a hostile or broken peer could send. Deep nesting is spliced into the text, since
the encoder itself would recurse.

:data:`CASES` counts the cases every fuzz test ran; the session prints the total.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st


__all__ = ["CASES", "DEEP", "count", "frames", "from_schema", "mutated"]

CASES: Counter[str] = Counter()
"""Fuzz cases run in this session, by test (printed in the terminal summary)."""

DEEP = "\x00deep\x00"
"""A placeholder a mutation puts in a message; :func:`render` replaces it with nesting."""

_MAX_TEXT = 40
_NUMBER_BOUND = 2**53


_REFS: dict[tuple[int, str], st.SearchStrategy[Any]] = {}


def count(name: str) -> None:
    """Count one case of the fuzz test ``name``."""
    CASES[name] += 1


def from_schema(
    schema: dict[str, Any], defs: dict[str, Any] | None = None
) -> st.SearchStrategy[Any]:
    """Values of a JSON schema (the subset pydantic emits)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        key = (id(defs), name)
        if key not in _REFS:  # built once: building strategies is what costs
            _REFS[key] = st.deferred(lambda: from_schema(defs[name], defs))
        return _REFS[key]
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for union in ("oneOf", "anyOf"):
        if union in schema:
            return st.one_of([from_schema(option, defs) for option in schema[union]])
    kind = schema.get("type")
    if kind == "object":
        return _object(schema, defs)
    if kind == "array":
        items = from_schema(schema.get("items", {}), defs)
        return st.lists(items, max_size=min(schema.get("maxItems", 4), 4))
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        low = schema.get("minimum", -_NUMBER_BOUND)
        high = schema.get("maximum", _NUMBER_BOUND)
        return st.integers(low, high)
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1e9))
        high = schema.get("maximum", 1e9)
        return st.floats(low, high, allow_nan=False, exclude_min="exclusiveMinimum" in schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return _json_values()


def _object(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties = schema.get("properties")
    if properties is None:  # a mapping (env), or any object
        extra = schema.get("additionalProperties", True)
        if extra is False:
            return st.just({})
        values = _json_values() if extra is True else from_schema(extra, defs)
        keys = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,12}\Z")
        return st.dictionaries(keys, values, max_size=3)
    required = set(schema.get("required", ()))
    fields = {name: from_schema(sub, defs) for name, sub in properties.items()}
    optional = [name for name in properties if name not in required]

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        present = draw(st.sets(st.sampled_from(optional))) if optional else set()
        return {
            name: draw(strategy)
            for name, strategy in fields.items()
            if name in required or name in present
        }

    return build()


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    fmt = schema.get("format")
    if fmt == "uuid":
        return st.uuids().map(str)
    if fmt == "date-time":
        return st.sampled_from(
            ["2026-12-02T10:00:00Z", "2026-12-02T10:00:00.123456+00:00", "1999-01-01T00:00:00Z"]
        )
    low = schema.get("minLength", 0)
    high = min(schema.get("maxLength", _MAX_TEXT), _MAX_TEXT)
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True).filter(
            lambda s: low <= len(s) <= max(high, low)
        )
    return st.text(min_size=low, max_size=max(high, low))


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=6,
    )


WRONG = st.sampled_from([None, True, 0, -1, 1.5, float(2**63), "", "x", [], {}, [1, "a"], {"a": 1}])
HUGE = st.sampled_from(
    [
        10**30,
        -(10**30),
        2**63,
        1e308,
        "x" * 100_000,
        "\x00" * 1000,
        "\ud7ff" * 5000,
        ["a"] * 10_000,
        {f"k{i}": "v" for i in range(2000)},
    ]
)
ODD_TEXT = st.sampled_from(
    ["../../etc/passwd", "-rf", "a b", "é€", "\u2028", "$(id)", "1e999", "null"]
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, child in value.items():
            out.append((*prefix, key))
            out.extend(_paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value[:3]):
            out.append((*prefix, index))
            out.extend(_paths(child, (*prefix, index)))
    return out


def _set(value: Any, path: tuple[Any, ...], new: Any, *, delete: bool = False) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    if not rest and delete:
        del copy[head]
        return copy
    copy[head] = _set(copy[head], rest, new, delete=delete)
    return copy


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> Any:
    """A value of ``base`` with at most one field (at any depth) changed."""
    return mutate(draw, draw(base))


def mutate(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with at most one field (at any depth) changed, the change drawn."""
    paths = _paths(value)
    action = draw(
        st.sampled_from(
            ["keep", "wrong", "huge", "odd", "delete", "extra", "deep", "type"]
            if paths
            else ["keep", "wrong", "huge", "deep"]
        )
    )
    if action == "keep":
        return value
    if action == "extra" and isinstance(value, dict):
        key = draw(st.text(max_size=8) | st.just("k" * 5000))  # a long name ends up in errors
        return {**value, key: draw(WRONG)}
    if action == "type" and isinstance(value, dict):
        return {**value, "type": draw(st.sampled_from(["", "nope", "command.runx", 7]))}
    new = {"wrong": WRONG, "huge": HUGE, "odd": ODD_TEXT, "deep": st.just(DEEP)}.get(action, WRONG)
    path = draw(st.sampled_from(paths)) if paths else ()
    if action == "delete" and paths:
        return _set(value, path, None, delete=True)
    return _set(value, path, draw(new))


def render(value: Any, depth: int) -> str:
    """The JSON text of ``value``, the :data:`DEEP` placeholder spliced as nesting."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace(json.dumps(DEEP), "[" * depth + "]" * depth)


TEXT_DAMAGE = st.sampled_from(["none", "truncate", "garbage", "bytes", "not an object"])


def frames(
    schema: dict[str, Any],
    per_message: int = 4,
    realistic: Callable[[Any], Any] | None = None,
) -> st.SearchStrategy[list[str | bytes]]:
    """Frames (JSON text, sometimes damaged) of one message of ``schema``, each mutated
    differently field by field: ``per_message`` fuzz cases for one drawn message.

    ``realistic``, applied to half of the drawn messages before mutating them, fills in
    what a schema cannot know (a server that exists), so fuzzing reaches deeper code.
    """
    return _frames(from_schema(schema), per_message, realistic)


@st.composite
def _frames(
    draw: st.DrawFn,
    messages: st.SearchStrategy[Any],
    per_message: int,
    realistic: Callable[[Any], Any] | None,
) -> list[str | bytes]:
    value = draw(messages)
    if realistic is not None and draw(st.booleans()):
        value = realistic(value)
    return [_damaged(draw, render(mutate(draw, value), draw(DEPTHS))) for _ in range(per_message)]


DEPTHS = st.sampled_from([40, 5000, 100_000])


def _damaged(draw: st.DrawFn, text: str) -> str | bytes:
    damage = draw(TEXT_DAMAGE)
    if damage == "truncate":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if damage == "garbage":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.text(max_size=5)) + text[at:]
    if damage == "bytes":
        return text.encode("utf-8", "surrogatepass") + draw(st.binary(max_size=4))
    if damage == "not an object":
        return "[" + text + "]"
    return text
