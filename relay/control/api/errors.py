"""One error body for every failure the API answers: ``{code, message, request_id}``,
with the RLY code (relay/errors.py) that names what went wrong and the HTTP status that
goes with it."""

from __future__ import annotations

import logging
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from relay.errors import AuthError, RelayError

log = logging.getLogger("relay.control.api")

#: HTTP status by RLY code; an AuthError not listed is 401, anything else 500.
STATUS_BY_CODE = {
    "RLY_120": 403,  # Forbidden: the key lacks the scope, or the resource is another's
    "RLY_121": 429,  # RateLimited
    "RLY_401": 400,  # ConfigError: a value the API cannot take
    "RLY_601": 404,  # NotFound
    "RLY_602": 409,  # Conflict
    "RLY_504": 503,  # ControlUnavailable: the store did not answer in time
}
#: When a client may ask again after a 503: the store's readiness is checked this often.
RETRY_AFTER_UNAVAILABLE = 2


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str


#: What the routes document for their 4xx answers (OpenAPI).
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in (
        (400, "a value the API cannot take (RLY_401)"),
        (401, "no API key, or one that is unknown, revoked or expired (RLY_111..113)"),
        (403, "the key lacks the scope, or its account is not allowed this (RLY_120)"),
        (404, "no such object, or not one this key may see (RLY_601)"),
        (422, "a malformed request (RLY_401)"),
        (429, "too many failed authentications from this address (RLY_121)"),
        (503, "the store does not answer; retry after the Retry-After seconds (RLY_504)"),
    )
}


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = "req_" + secrets.token_hex(8)
    return str(rid)


def status_of(err: RelayError) -> int:
    if err.code in STATUS_BY_CODE:
        return STATUS_BY_CODE[err.code]
    return 401 if isinstance(err, AuthError) else 500


def error_response(request: Request, status: int, code: str, message: str) -> JSONResponse:
    headers = {"x-request-id": request_id(request)}
    if status == 401:
        headers["www-authenticate"] = 'Bearer realm="relay"'
    body = ErrorBody(code=code, message=message, request_id=request_id(request))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Every error, raised by a route or by FastAPI itself, leaves as an ErrorBody."""

    @app.exception_handler(RelayError)
    async def relay_error(request: Request, exc: RelayError) -> JSONResponse:
        status = status_of(exc)
        if status == 500:
            log.error("API %s %s: %s", request.method, request.url.path, exc.one_line())
        response = error_response(request, status, exc.code, exc.message)
        retry = getattr(exc, "retry_after", None)
        if status == 429 and retry:
            response.headers["retry-after"] = str(max(1, int(retry)))
        elif status == 503:
            response.headers["retry-after"] = str(RETRY_AFTER_UNAVAILABLE)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()[:5]
        )
        return error_response(request, 422, "RLY_401", f"invalid request: {problems}"[:1000])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "RLY_601" if exc.status_code == 404 else "RLY_401"
        return error_response(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API %s %s failed", request.method, request.url.path)
        return error_response(request, 500, "RLY_000", "internal error")
