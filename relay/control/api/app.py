"""The REST API's application: routers under ``/api/v1``, one error body, a request id
on every answer, and the OpenAPI document at ``/api/v1/openapi.json``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response

from relay import __version__
from relay.control.api import errors
from relay.control.api.plane import ControlPlane
from relay.control.api.routes_accounts import router as accounts
from relay.control.api.routes_audit import router as audit
from relay.control.api.routes_credentials import api_keys, credentials
from relay.control.api.routes_edge import router as edge
from relay.control.api.routes_live import certificates, endpoints, reload, sessions
from relay.control.api.routes_reserved import addrs as reserved_addrs
from relay.control.api.routes_reserved import domains as reserved_domains

PREFIX = "/api/v1"
OPENAPI_PATH = f"{PREFIX}/openapi.json"


def create_app(plane: ControlPlane) -> FastAPI:
    app = FastAPI(
        title="relay control plane",
        version=__version__,
        description="Accounts, credentials, API keys, audit events and the edge's live "
        "sessions. Every route takes a bearer API key and names the scope it needs.",
        openapi_url=OPENAPI_PATH,
        docs_url=None,  # the interactive pages load scripts from a CDN; the JSON suffices
        redoc_url=None,
        responses=errors.ERROR_RESPONSES,
    )
    app.state.plane = plane
    for router in (
        accounts,
        credentials,
        api_keys,
        audit,
        sessions,
        endpoints,
        certificates,
        reload,
        edge,
        reserved_domains,
        reserved_addrs,
    ):
        app.include_router(router, prefix=PREFIX)
    errors.install(app)

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["x-request-id"] = errors.request_id(request)
        return response

    _document_errors_as_they_are(app)
    return app


def _document_errors_as_they_are(app: FastAPI) -> None:
    """FastAPI documents its own 422 body; relay answers every error with ErrorBody, and
    the document must say so (schemathesis checks answers against it)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for status, answer in operation.get("responses", {}).items():
                    if status.startswith(("4", "5")):
                        answer["content"] = {"application/json": {"schema": ref}}
        for unused in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
