"""Server labels (``key=value``) and label selectors (``role=web,env!=prod,gpu``).

Labels are set by the agent's configuration (sent in ``hello``) and by superusers through
the API; a fan-out names its servers by a selector. Pure functions, no I/O.

Selector grammar: comma-separated terms, all of which must hold:

* ``key=value`` (or ``key==value``): the label is present with this value;
* ``key!=value``: the label is absent or has another value;
* ``key``: the label is present (any value); ``!key``: it is absent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal


__all__ = [
    "LABEL_KEY_PATTERN",
    "LABEL_VALUE_PATTERN",
    "MAX_LABELS",
    "LabelError",
    "Selector",
    "Term",
    "check_labels",
    "parse_selector",
]

LABEL_KEY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$"
MAX_LABELS = 64
MAX_SELECTOR_TERMS = 16

_KEY = re.compile(LABEL_KEY_PATTERN)
_VALUE = re.compile(LABEL_VALUE_PATTERN)


class LabelError(ValueError):
    """A label set or a selector is malformed; the message says which part and why."""


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Validate a label set; return it as a plain dict.

    Raises:
        LabelError: too many labels, or a key or value outside the allowed alphabet.
    """
    if len(labels) > MAX_LABELS:
        raise LabelError(f"at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise LabelError(
                f"label key {str(key)[:80]!r}: 1-63 letters, digits, '.', '_', '-', '/', "
                "starting and ending with a letter or digit"
            )
        if not isinstance(value, str) or not _VALUE.match(value):
            raise LabelError(
                f"label {key}: value {str(value)[:80]!r}: at most 63 letters, digits, '.', "
                "'_', '-', starting and ending with a letter or digit"
            )
    return dict(labels)


@dataclass(frozen=True)
class Term:
    """One condition of a selector."""

    key: str
    op: Literal["=", "!=", "exists", "absent"]
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this term."""
        if self.op == "=":
            return labels.get(self.key) == self.value
        if self.op == "!=":
            return labels.get(self.key) != self.value
        if self.op == "exists":
            return self.key in labels
        return self.key not in labels

    def __str__(self) -> str:
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.value}"
        return self.key if self.op == "exists" else f"!{self.key}"


@dataclass(frozen=True)
class Selector:
    """A parsed selector: every term must hold."""

    terms: tuple[Term, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a server with ``labels`` is selected."""
        return all(term.matches(labels) for term in self.terms)

    def __str__(self) -> str:
        return ",".join(str(term) for term in self.terms)


def _key(text: str, term: str) -> str:
    key = text.strip()
    if not _KEY.match(key):
        raise LabelError(f"selector term {term!r}: invalid label key {key[:80]!r}")
    return key


def _value(text: str, term: str) -> str:
    value = text.strip()
    if not _VALUE.match(value):
        raise LabelError(f"selector term {term!r}: invalid label value {value[:80]!r}")
    return value


def parse_selector(text: str) -> Selector:
    """Parse ``role=web,env!=prod,gpu,!legacy``.

    Raises:
        LabelError: empty selector, too many terms, or a malformed term (named).
    """
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise LabelError(f"selector {text[:200]!r}: empty term (expected key=value,...)")
    if len(parts) > MAX_SELECTOR_TERMS:
        raise LabelError(f"selector: at most {MAX_SELECTOR_TERMS} terms, got {len(parts)}")
    terms: list[Term] = []
    for part in parts:
        if "!=" in part:
            key, value = part.split("!=", 1)
            terms.append(Term(_key(key, part), "!=", _value(value, part)))
        elif "=" in part:
            key, value = part.split("=", 1)
            value = value.removeprefix("=")
            terms.append(Term(_key(key, part), "=", _value(value, part)))
        elif part.startswith("!"):
            terms.append(Term(_key(part[1:], part), "absent"))
        else:
            terms.append(Term(_key(part, part), "exists"))
    return Selector(tuple(terms))
