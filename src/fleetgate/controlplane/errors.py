"""API errors and the exception handlers that render them as ``{code, detail, source?}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


__all__ = [
    "APIError",
    "ChannelFailed",
    "authentication_failed",
    "command_not_found",
    "install_error_handlers",
    "invalid_request",
    "permission_denied",
    "server_not_found",
    "validation_detail",
]

log = structlog.get_logger("fleetgate.controlplane.errors")

COMMAND_CREATE_PATH = "/api/events/commands/"


class APIError(Exception):
    """An error with an HTTP status and a stable machine-readable ``code``."""

    def __init__(self, status: int, code: str, detail: str, source: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.source = source

    def body(self) -> dict[str, str]:
        """The JSON body of the error response."""
        out = {"code": self.code, "detail": self.detail}
        if self.source is not None:
            out["source"] = self.source
        return out


class ChannelFailed(Exception):
    """A channel could not be opened: the agent refused it, or could not be reached.

    ``code`` is machine-readable (a ``work_session_*`` code, the agent's own code,
    ``server_not_connected``, ``agent_timeout``); ``close_code`` is the websocket close
    code the client gets (see ``fleetgate.shared.protocol.channels``).
    """

    def __init__(self, code: str, detail: str, close_code: int) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.close_code = close_code


def authentication_failed(detail: str = "Authentication credentials were not valid.") -> APIError:
    """401 ``AUTHENTICATION_FAILED``."""
    return APIError(401, "AUTHENTICATION_FAILED", detail)


def permission_denied(detail: str = "This operation requires a superuser.") -> APIError:
    """403 ``PERMISSION_DENIED``."""
    return APIError(403, "PERMISSION_DENIED", detail)


def invalid_request(detail: str, source: str | None = None) -> APIError:
    """400 ``INVALID_REQUEST``."""
    return APIError(400, "INVALID_REQUEST", detail, source)


def command_not_found() -> APIError:
    """404 ``COMMAND_NOT_FOUND``."""
    return APIError(404, "COMMAND_NOT_FOUND", "No such command.")


def server_not_found(ref: str) -> APIError:
    """404 ``SERVER_NOT_FOUND``."""
    return APIError(404, "SERVER_NOT_FOUND", f"No server with id or name {ref[:100]!r}.", "server")


def validation_detail(errors: Sequence[Any]) -> tuple[str, str | None]:
    """Summarize pydantic/FastAPI validation errors as ``(detail, source)``.

    The source is the first offending field (without the ``body``/``query`` prefix).
    """
    parts: list[str] = []
    source: str | None = None
    for err in list(errors)[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        if source is None:
            source = field
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{field}: {msg}")
    return ("; ".join(parts) or "invalid request", source)


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers so that every error response has the documented body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=_auth_header(exc.status))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, source = validation_detail(exc.errors())
        is_create = request.method == "POST" and request.url.path == COMMAND_CREATE_PATH
        code = "INVALID_COMMAND" if is_create else "INVALID_REQUEST"
        body = APIError(400, code, detail, source).body()
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            401: "AUTHENTICATION_FAILED",
            403: "PERMISSION_DENIED",
            404: "NOT_FOUND",
            405: "METHOD_NOT_ALLOWED",
        }
        code = codes.get(exc.status_code, "INVALID_REQUEST" if exc.status_code < 500 else "ERROR")
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse(
            {"code": code, "detail": detail},
            status_code=exc.status_code,
            headers=_auth_header(exc.status_code),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("api.unhandled_error", path=request.url.path, exc_info=exc)
        return JSONResponse(
            {"code": "INTERNAL_ERROR", "detail": "internal server error"}, status_code=500
        )


def _auth_header(status: int) -> dict[str, str] | None:
    return {"WWW-Authenticate": "Token"} if status == 401 else None
