"""Every error the API answers: JSON with a stable code, a sentence and, where one is to
blame, the field."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec

log = logging.getLogger("ficha.api")


class DeadLetterRef(msgspec.Struct):
    """The dead letter an awaited event became (``422 dead_lettered``): its sequence in
    FICHA_DLQ (for ``/dead-letters/{seq}``), its error code and the reason in words."""

    seq: int
    code: str
    detail: str


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    field: str | None  # the parameter or body field to blame, if one is
    # With dead_lettered only; absent (not null) from every other error.
    dead_letter: DeadLetterRef | msgspec.UnsetType = msgspec.UNSET


class ErrorResponse(msgspec.Struct):
    """Every error the API answers (docs/api.md, "Errors")."""

    error: ErrorBody


_MEANINGS = {
    400: "Refused: `invalid_request` (a parameter or a field of the body, which `field` "
    "names), `invalid_body`, `invalid_rule`, `invalid_property`, `invalid_file`, "
    "`invalid_mapping` or `confirmation_required`.",
    401: "`unauthorized`: no API key (send `Authorization: Bearer <key>`), or one that is "
    "malformed, unknown or revoked.",
    403: "`forbidden`: this route needs a key with the admin scope.",
    404: "`not_found`: nothing at this address for this key's tenant (another tenant's "
    "address is answered the same way).",
    409: "`already_exists` or `segment_conflict`: the change contradicts what exists.",
    413: "`too_large`: the body is larger than this route accepts.",
    422: "`dead_lettered`: the event `wait_for_event` names was dead-lettered, so it will "
    "never be stored; `dead_letter` says which dead letter and why.",
    500: "`internal_error`: the details are in the server's log only.",
    503: "`not_yet_ingested` or `not_yet_projected` (a wait timed out; `Retry-After`), "
    "`bus_unavailable` or `import_stopped`: retry.",
}
EVERY_ROUTE = (400, 401, 404, 500)


# What a route that takes min_position and wait_for_event (services.api.deps.consistency)
# can answer besides: a wait that timed out, an awaited event that was dead-lettered.
WAITING = (422, 503)


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The errors a route of a tenant can answer, for the OpenAPI document: those every
    such route can give (a bad parameter or a NUL in the address, no key, another
    tenant's address, a failure of ficha's) and ``statuses`` (``*WAITING`` for a route
    that waits as its caller asks); each with ficha's body."""
    return {status: ResponseSpec(ErrorResponse, description=_MEANINGS[status],
                                 generate_examples=False)
            for status in sorted({*EVERY_ROUTE, *statuses})}


class ApiError(Exception):
    """An expected failure of a request, with its HTTP status and stable code."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None,
                 dead_letter: DeadLetterRef | msgspec.UnsetType = msgspec.UNSET) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.dead_letter = dead_letter


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


_LONG_WORD = re.compile(r"\S{81,}")


def shortened(message: str) -> str:
    """A message whose echoes of what the caller sent (a reference, an id) are at most
    80 characters each: a 5,000-character reference is not sent back whole."""
    return _LONG_WORD.sub(lambda m: f"{m[0][:60]}…({len(m[0])} characters)", message)


def _respond(status: int, code: str, message: str, field: str | None = None,
             headers: dict[str, str] | None = None,
             dead_letter: DeadLetterRef | msgspec.UnsetType = msgspec.UNSET
             ) -> Response[ErrorResponse]:
    return Response(ErrorResponse(ErrorBody(code, shortened(message), field, dead_letter)),
                    status_code=status, headers=headers)


def on_api_error(_: Request[Any, Any, Any], error: ApiError) -> Response[ErrorResponse]:
    return _respond(error.status, error.code, error.message, error.field, error.headers,
                    error.dead_letter)


def on_validation(request: Request[Any, Any, Any], error: ValidationException
                  ) -> Response[ErrorResponse]:
    problems = error.extra if isinstance(error.extra, list) else []
    first = problems[0] if problems and isinstance(problems[0], dict) else {}
    field = first.get("key")
    message = first.get("message") or error.detail
    if field in UPLOADS and str(message).startswith("Unsupported type"):
        return _respond(400, "invalid_body", f"{field}: send one file as the form field "
                        f"`{field}`, e.g. curl -F {field}=@{UPLOADS[field]}", field)
    if field == "data" and first.get("source") == "body":
        if (named := _BODY_KEY.search(str(message))) is not None:
            return _respond(400, "invalid_request", _body_key(*named.groups()), named[2])
        return _respond(400, "invalid_body", _body_shape(str(message)))
    if field:
        message = f"{field}: {message}"
    return _respond(400, "invalid_request", str(message), field)


# The file fields of the upload routes, with an example file name for each.
UPLOADS = {"file": "people.csv", "mapping": "mapping.yaml"}

# How msgspec names a key of the body object that is missing or not taken.
_BODY_KEY = re.compile(r"^Object (missing required|contains unknown) field `([^`]+)`$")


def _body_key(problem: str, key: str) -> str:
    if problem == "missing required":
        return f"{key}: the body has no {key}, which this route needs (see /schema)"
    return f"{key}: this route takes no field {key} (see /schema)"


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
