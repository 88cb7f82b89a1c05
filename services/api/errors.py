"""Every error the API answers: JSON with a stable code, a sentence and, where one is to
blame, the field."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotFoundException,
    SerializationException,
    ValidationException,
)

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
                 headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}  # more members of the error object, for a few codes


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def _respond(status: int, code: str, message: str, field: str | None = None,
             headers: dict[str, str] | None = None) -> Response[ErrorResponse]:
    return Response(ErrorResponse(ErrorBody(code, message, field)), status_code=status,
                    headers=headers)


def on_api_error(_: Request[Any, Any, Any], error: ApiError) -> Response[Any]:
    if error.extra:
        body = {"code": error.code, "message": error.message, "field": error.field,
                **error.extra}
        return Response({"error": body}, status_code=error.status, headers=error.headers)
    return _respond(error.status, error.code, error.message, error.field, error.headers)


def on_validation(request: Request[Any, Any, Any], error: ValidationException
                  ) -> Response[ErrorResponse]:
    problems = error.extra if isinstance(error.extra, list) else []
    first = problems[0] if problems and isinstance(problems[0], dict) else {}
    field = first.get("key")
    message = first.get("message") or error.detail
    if field == "data" and first.get("source") == "body":
        return _respond(400, "invalid_body", _body_shape(str(message)))
    if field:
        message = f"{field}: {message}"
    return _respond(400, "invalid_request", str(message), field)


def _body_shape(problem: str) -> str:
    """The body as a whole (Litestar calls it ``data``) is not what the route takes."""
    if problem == "'data'":  # Litestar's words for a missing body
        return "the request has no body, and this route needs one (see /schema)"
    return f"the body is not what this route takes: {problem} (see /schema)"


def _unreadable_body(error: HTTPException) -> str | None:
    """Why the body could not even be parsed (Litestar says it as a 400 with no code),
    or None if the 400 is about something else."""
    detail = str(error.detail)
    if isinstance(error.__cause__, SerializationException):
        return f"the body is not valid JSON ({detail}); this route takes a JSON object"
    if "multipart/form-data" in detail:
        return (f"the body is not a valid multipart/form-data upload ({detail}); send the "
                "CSV as the form field `file`, e.g. curl -F file=@people.csv")
    if detail == "Request Entity Too Large":  # the multipart parser's limits, as a 400
        return ("the multipart upload has too many parts, or a part header too long; send "
                "the form field `file` and, optionally, `mapping`")
    return None


_HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large"}


def _sentence(request: Request[Any, Any, Any], error: HTTPException) -> str:
    if error.status_code == 405:
        allowed = (error.headers or {}).get("allow", "")
        return f"this address does not take {request.method}; it takes {allowed}"
    if error.status_code == 413:
        return "the request body is larger than this route accepts"
    return str(error.detail)


def on_http(request: Request[Any, Any, Any], error: HTTPException) -> Response[ErrorResponse]:
    """Litestar's own HTTP errors, each with one of the documented codes: anything 5xx is
    an internal error; a 4xx without a code of its own is an ``invalid_request``."""
    if isinstance(error, NotFoundException):
        return _respond(404, "not_found", "there is nothing at this address")
    if error.status_code >= 500:
        return on_unexpected(request, error)
    if error.status_code == 400 and (problem := _unreadable_body(error)) is not None:
        return _respond(400, "invalid_body", problem)
    code = _HTTP_CODES.get(error.status_code, "invalid_request")
    return _respond(error.status_code, code, _sentence(request, error), headers=error.headers)


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
