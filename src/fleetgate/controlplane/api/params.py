"""Pure parsing of query parameters: filters, ordering, pages. Errors are 400s."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from fleetgate.controlplane.errors import invalid_request
from fleetgate.controlplane.store.queries import DEFAULT_ORDERING, ORDERING_FIELDS, CommandFilter


__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Page",
    "parse_bool",
    "parse_command_filter",
    "parse_int",
    "parse_page",
]

DEFAULT_PAGE_SIZE = 15
MAX_PAGE_SIZE = 100
MAX_SEARCH = 256


@dataclass(frozen=True)
class Page:
    """A 1-based page number and its size."""

    number: int = 1
    size: int = DEFAULT_PAGE_SIZE

    @property
    def offset(self) -> int:
        """Rows before this page."""
        return (self.number - 1) * self.size


def _get(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    return None if value is None or value == "" else value


def parse_bool(params: Mapping[str, str], name: str) -> bool | None:
    """``true``/``false`` (also ``1``/``0``, any case); ``None`` when absent."""
    value = _get(params, name)
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise invalid_request(f"{name}: expected true or false, got {value[:40]!r}", name)


def parse_int(
    params: Mapping[str, str], name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    """A decimal integer within bounds; ``None`` when absent."""
    value = _get(params, name)
    if value is None:
        return None
    if not value.lstrip("-").isdigit() or len(value) > 18:
        raise invalid_request(f"{name}: expected an integer, got {value[:40]!r}", name)
    number = int(value)
    if minimum is not None and number < minimum:
        raise invalid_request(f"{name}: must be at least {minimum}", name)
    if maximum is not None and number > maximum:
        raise invalid_request(f"{name}: must be at most {maximum}", name)
    return number


def parse_page(params: Mapping[str, str]) -> Page:
    """``page`` (from 1) and ``page_size`` (1..100, default 15); above 100 is a 400."""
    number = parse_int(params, "page", minimum=1)
    size = parse_int(params, "page_size", minimum=1, maximum=MAX_PAGE_SIZE)
    return Page(number or 1, size or DEFAULT_PAGE_SIZE)


def parse_command_filter(params: Mapping[str, str]) -> CommandFilter:
    """The filters of the command list (see docs/api.md).

    Raises:
        APIError: 400 ``INVALID_REQUEST`` naming the parameter.
    """
    server = _get(params, "server")
    if server is not None:
        try:
            server = str(uuid.UUID(server))
        except ValueError:
            raise invalid_request(f"server: not a UUID: {server[:40]!r}", "server") from None
    ordering = _get(params, "ordering") or DEFAULT_ORDERING
    if ordering.removeprefix("-") not in ORDERING_FIELDS:
        raise invalid_request(
            f"ordering: must be one of {', '.join(ORDERING_FIELDS)}, optionally prefixed by -",
            "ordering",
        )
    search = _get(params, "search")
    if search is not None and len(search) > MAX_SEARCH:
        raise invalid_request(f"search: longer than {MAX_SEARCH} characters", "search")
    shell = _get(params, "shell")
    return CommandFilter(
        server=server,
        shell=shell,
        requested_by=parse_int(params, "requested_by", minimum=0),
        requested_by_isnull=parse_bool(params, "requested_by_isnull"),
        is_scheduled=parse_bool(params, "is_scheduled"),
        search=search,
        ordering=ordering,
    )
