"""Put the console into the control plane's application: pages, static files, the
OpenAPI page, and the console's error pages."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from fleetgate.controlplane.console import routes, session_routes
from fleetgate.controlplane.console.web import (
    PREFIX,
    STATIC,
    ConsoleError,
    LoginRequired,
    login_redirect_target,
    page,
)


__all__ = ["DOCS_PATH", "install"]

DOCS_PATH = "/api/docs"


def install(app: FastAPI) -> None:
    """Add the console's routes to ``app``."""
    app.include_router(routes.router)
    app.include_router(session_routes.router)
    # check_dir=False: a checkout without built assets still serves every page.
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC, check_dir=False), name="console")

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse(f"{PREFIX}/sessions", status_code=307)

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/api/openapi.json",
            title="fleetgate API",
            swagger_js_url=f"{PREFIX}/static/dist/swagger-ui-bundle.js",
            swagger_css_url=f"{PREFIX}/static/dist/swagger-ui.css",
            swagger_favicon_url=f"{PREFIX}/static/favicon.svg",
        )

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        wants_json = "application/json" in request.headers.get("accept", "")
        if request.method == "GET" and not wants_json:
            return RedirectResponse(login_redirect_target(request), status_code=303)
        return JSONResponse(
            {"code": "AUTHENTICATION_FAILED", "detail": "Log in again."}, status_code=401
        )

    @app.exception_handler(ConsoleError)
    async def console_error(request: Request, exc: ConsoleError) -> Response:
        context = {"status": exc.status, "message": exc.message}
        return page(request, "error.html", context, status=exc.status)
