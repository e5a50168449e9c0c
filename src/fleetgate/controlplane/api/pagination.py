"""Page responses ``{count, next, previous, results}`` with absolute links."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request

from fleetgate.controlplane.api.params import Page


__all__ = ["page_links", "page_response", "request_base_url"]


def page_links(
    base_url: str, query: list[tuple[str, str]], page: Page, count: int
) -> tuple[str | None, str | None]:
    """``(next, previous)`` absolute URLs for ``page`` of ``count`` rows.

    ``query`` keeps the request's other parameters in order; ``page`` is replaced (and
    left out for page 1, as in the seed's example).
    """
    others = [(k, v) for k, v in query if k != "page"]

    def link(number: int) -> str:
        params = others if number == 1 else [*others, ("page", str(number))]
        return f"{base_url}?{urlencode(params)}" if params else base_url

    has_next = page.number * page.size < count
    next_url = link(page.number + 1) if has_next else None
    previous_url = None
    if page.number > 1:
        last = max(1, -(-count // page.size))
        previous_url = link(min(page.number - 1, last))
    return next_url, previous_url


def request_base_url(request: Request, public_url: str | None) -> str:
    """The absolute URL of the request's path, on ``public_url`` when configured."""
    if public_url:
        return public_url.rstrip("/") + request.url.path
    return str(request.url.replace(query="", fragment=""))


def page_response(
    request: Request,
    public_url: str | None,
    page: Page,
    count: int,
    results: list[Any],
) -> dict[str, Any]:
    """The JSON body of a page."""
    next_url, previous_url = page_links(
        request_base_url(request, public_url), list(request.query_params.multi_items()), page, count
    )
    return {"count": count, "next": next_url, "previous": previous_url, "results": results}
