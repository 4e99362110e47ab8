"""HTTP errors: every failure becomes a JSON ``{"detail", "type"}`` with the SDK's own message.

Bad input is a 4xx: an unknown id 404, an unknown attribute or value 422 (with the
did-you-mean text), an undecodable image 422, a non-image upload 415, a body over the limit
413. A 500 means a fault on the server's side (damaged index, a bug), never bad input.
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BundleError, CatalogError, FashsdkError, ImageError, IndexFileError, QueryError
from .schemas import ErrorResponse

log = logging.getLogger("fashsdk.serve")


class ApiError(Exception):
    """An error with its HTTP status; ``detail`` is what the client reads."""

    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ApiError):
    status = 404


class UnsupportedImage(ApiError):
    status = 415


class Unprocessable(ApiError):
    status = 422


class NotReady(ApiError):
    status = 503


class RequestTimeout(ApiError):
    status = 504


SDK_STATUS: list[tuple[type[FashsdkError], int]] = [
    (QueryError, 422), (ImageError, 422), (CatalogError, 422),
    (IndexFileError, 500), (BundleError, 500),  # the server's files are at fault, not the request
]

# documented on every /v1 operation, so clients (and schemathesis) know what to expect
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in (
        (400, "the body could not be parsed (not UTF-8 JSON, broken multipart)"), (404, "unknown item id"),
        (413, "request body over the upload limit"), (415, "the upload is not an image"),
        (422, "bad arguments: unknown attribute or value, bad image, bad JSON"),
        (503, "the bundle and index are still loading"), (504, "the request ran past the server's time limit"))}


def status_of(exc: BaseException) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    for kind, status in SDK_STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_response(status: int, detail: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "type": kind}, status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    """pydantic's list of errors as one line: 'body.k: Input should be less than or equal to 1000'."""
    parts = []
    for err in exc.errors()[:8]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    """Route every exception through one JSON shape."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if isinstance(exc, NotReady) else None
        return error_response(exc.status, exc.detail, type(exc).__name__, headers)

    @app.exception_handler(FashsdkError)
    async def _sdk(request: Request, exc: FashsdkError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return error_response(status, str(exc), type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(exc), "RequestValidationError")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "HTTPException", getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details",
                              "InternalError")
