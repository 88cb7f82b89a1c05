"""Every error the API answers: JSON with a stable code, a sentence and, where one is to
blame, the field."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

log = logging.getLogger("ficha.api")


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(msgspec.Struct):
    error: ErrorBody


class ApiError(Exception):
    """An expected failure of a request, with its HTTP status and stable code."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def _respond(status: int, code: str, message: str, field: str | None = None,
             headers: dict[str, str] | None = None) -> Response[ErrorResponse]:
    return Response(ErrorResponse(ErrorBody(code, message, field)), status_code=status,
                    headers=headers)


def on_api_error(_: Request[Any, Any, Any], error: ApiError) -> Response[ErrorResponse]:
    return _respond(error.status, error.code, error.message, error.field, error.headers)


def on_validation(_: Request[Any, Any, Any], error: ValidationException
                  ) -> Response[ErrorResponse]:
    problems = error.extra if isinstance(error.extra, list) else []
    first = problems[0] if problems and isinstance(problems[0], dict) else {}
    field = first.get("key")
    message = first.get("message") or error.detail
    if field:
        message = f"{field}: {message}"
    return _respond(400, "invalid_request", str(message), field)


_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 429: "too_many_requests"}


def on_http(_: Request[Any, Any, Any], error: HTTPException) -> Response[ErrorResponse]:
    if isinstance(error, NotFoundException):
        return _respond(404, "not_found", "there is nothing at this address")
    code = _HTTP_CODES.get(error.status_code, "error")
    return _respond(error.status_code, code, str(error.detail), headers=error.headers)


def on_unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[ErrorResponse]:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _respond(500, "internal_error",
                    "ficha failed to answer this request; the server log has the details")


HANDLERS: dict[Any, Any] = {
    ApiError: on_api_error,
    ValidationException: on_validation,
    HTTPException: on_http,
    Exception: on_unexpected,
}
