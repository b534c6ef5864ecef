"""Errors of the OpenAI-compatible API in OpenAI's JSON shape, and the HTTP status of each.

Every refusal is ``{"error": {"message", "type", "param", "code"}}``. An :class:`ApiError`
is raised for what the HTTP layer refuses itself (a malformed body, a wrong field);
:func:`from_rpc` maps a call's :class:`~mesh.errors.RpcError` (from the guard, the router,
the engine) by its code and reason, so the same failure reads the same over gRPC and here:

========  ===========================  =================================================
status    type                         when
========  ===========================  =================================================
400       invalid_request_error        bad JSON, a wrong or unknown field (``param`` names
                                       it), INVALID_ARGUMENT, FAILED_PRECONDITION
401       authentication_error         UNAUTHENTICATED (no, bad, expired, revoked token)
403       permission_error             PERMISSION_DENIED
404       invalid_request_error        an unknown model (code ``model_not_found``) or URL
413       invalid_request_error        a body or message over the mesh's limits
429       rate_limit_error             RATE_LIMITED, POOL_FULL (``Retry-After``)
429       insufficient_quota           BUDGET_EXHAUSTED (``Retry-After`` when known)
503       service_unavailable_error    UNAVAILABLE, or no node serves ModelService
504       timeout_error                DEADLINE_EXCEEDED
500       server_error                 anything else
========  ===========================  =================================================
"""

from __future__ import annotations

import calendar
import json
import math
import time
from typing import Any

import grpc
from aiohttp import web

from mesh.errors import Reason, RpcError

__all__ = ["ApiError", "bad_request", "error_body", "error_response", "from_rpc",
           "retry_headers"]


class ApiError(Exception):
    """One refusal in OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s


def bad_request(message: str, param: str | None = None,
                code: str | None = "invalid_value") -> ApiError:
    """A 400 naming the field at fault (its JSON path, e.g. ``messages[2].content``)."""
    return ApiError(400, message, param=param, code=code)


_BY_CODE: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.ABORTED: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "invalid_request_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.UNIMPLEMENTED: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}
_BY_REASON: dict[str, tuple[int, str, str]] = {
    Reason.RATE_LIMITED: (429, "rate_limit_error", "rate_limit_exceeded"),
    Reason.POOL_FULL: (429, "rate_limit_error", "pool_full"),
    Reason.BUDGET_EXHAUSTED: (429, "insufficient_quota", "insufficient_quota"),
    Reason.MESSAGE_TOO_LARGE: (413, "invalid_request_error", "message_too_large"),
    Reason.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
}


def from_rpc(error: RpcError, param: str | None = None) -> ApiError:
    """``error`` (a failed call through the mesh) as the API's refusal."""
    status, kind = _BY_CODE.get(error.code, (500, "server_error"))
    code: str | None = error.reason.lower() or None
    if error.reason in _BY_REASON:
        status, kind, code = _BY_REASON[error.reason]
    elif error.reason == Reason.UNKNOWN_MODEL:  # as OpenAI answers an unknown model
        status, code, param = 404, "model_not_found", "model"
    elif error.code is grpc.StatusCode.UNIMPLEMENTED:
        code = "model_service_not_served"
    if error.violations and param is None:
        param = error.violations[0].field
    retry_after_s = error.retry_after_s
    if retry_after_s is None and error.reason == Reason.BUDGET_EXHAUSTED:
        retry_after_s = _until_next(error.metadata.get("period", ""))
    return ApiError(status, error.message, kind, param, code, retry_after_s)


def _until_next(period: str) -> float | None:
    """Seconds until the budget period after ``period`` (``2026-11`` or ``2026-11-24``,
    UTC) begins: when a spent budget is whole again."""
    for form, step_days in (("%Y-%m-%d", 1), ("%Y-%m", 0)):
        try:
            start = time.strptime(period, form)
        except ValueError:
            continue
        if step_days:
            end = calendar.timegm(start) + 86400
        else:
            year, month = divmod(start.tm_year * 12 + start.tm_mon, 12)  # the next month
            end = calendar.timegm((year, month + 1, 1, 0, 0, 0, 0, 0, 0))
        return max(1.0, end - time.time())
    return None


def error_body(error: ApiError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.kind, "param": error.param,
                      "code": error.code}}


def retry_headers(retry_after_s: float | None) -> dict[str, str]:
    """``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms`` (the openai SDK
    reads it first) for a refusal that says when to retry."""
    if retry_after_s is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(retry_after_s))),
            "retry-after-ms": str(max(1, math.ceil(retry_after_s * 1000)))}


def error_response(error: ApiError) -> web.Response:
    return web.Response(text=json.dumps(error_body(error)), status=error.status,
                        content_type="application/json",
                        headers=retry_headers(error.retry_after_s))
