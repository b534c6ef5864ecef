"""Errors that cross the mesh, and the gRPC status each one carries.

The tree::

    MeshError                      anything the mesh raises on purpose
    ├── RpcError(code, message)    an expected failure of one call; travels to the caller
    │   ├── InvalidArgument        INVALID_ARGUMENT: the request is wrong; do not retry as is
    │   ├── NotFound               NOT_FOUND
    │   ├── Unimplemented          UNIMPLEMENTED: no such service or method
    │   ├── Unavailable            UNAVAILABLE: nobody can serve it now; safe to retry
    │   ├── DeadlineExceeded       DEADLINE_EXCEEDED
    │   ├── ResourceExhausted      RESOURCE_EXHAUSTED: too big, or too many
    │   │   └── RateLimited        ... over a rate limit; carries retry_after_s
    │   ├── Unauthenticated        UNAUTHENTICATED: no valid token; sign in (again)
    │   ├── PermissionDenied       PERMISSION_DENIED: the role lacks the permission named
    │   ├── AlreadyExists          ALREADY_EXISTS
    │   ├── FailedPrecondition     FAILED_PRECONDITION: the system is not in a state to serve it
    │   ├── Cancelled              CANCELLED: the caller went away
    │   └── Internal               INTERNAL: a bug in an engine or in the mesh
    └── ConfigError                configuration that cannot be used; names the key to fix

Engines raise :class:`RpcError` (or a subclass) for failures the caller should see with
their own status. Any other exception from an engine is a bug: the caller gets
``INTERNAL`` with the exception's type and message, and the actor that raised it is
restarted.
"""

from __future__ import annotations

import math

from grpc import StatusCode

__all__ = [
    "AlreadyExists",
    "Cancelled",
    "ConfigError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "MeshError",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "ResourceExhausted",
    "RpcError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "status_from_code",
]

_BY_NUMBER: dict[int, StatusCode] = {code.value[0]: code for code in StatusCode}


def status_from_code(number: int) -> StatusCode:
    """The :class:`grpc.StatusCode` for a wire number; unknown numbers become ``UNKNOWN``."""
    return _BY_NUMBER.get(number, StatusCode.UNKNOWN)


class MeshError(Exception):
    """Base class of every error the mesh raises on purpose."""


class ConfigError(MeshError):
    """Configuration that cannot be used. The message names the key and how to fix it."""


class RpcError(MeshError):
    """A failed call with the gRPC status the caller will see."""

    code: StatusCode = StatusCode.UNKNOWN

    def __init__(self, code: StatusCode, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


class InvalidArgument(RpcError):
    """``INVALID_ARGUMENT``: The request is wrong; retrying it unchanged will fail again."""

    code = StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.INVALID_ARGUMENT, message)


class NotFound(RpcError):
    """``NOT_FOUND``: The thing the request names does not exist."""

    code = StatusCode.NOT_FOUND

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.NOT_FOUND, message)


class Unimplemented(RpcError):
    """``UNIMPLEMENTED``: No such service or method is served."""

    code = StatusCode.UNIMPLEMENTED

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.UNIMPLEMENTED, message)


class Unavailable(RpcError):
    """``UNAVAILABLE``: Nobody can serve the call now; it is safe to retry."""

    code = StatusCode.UNAVAILABLE

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.UNAVAILABLE, message)


class DeadlineExceeded(RpcError):
    """``DEADLINE_EXCEEDED``: The call's deadline passed before it finished."""

    code = StatusCode.DEADLINE_EXCEEDED

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.DEADLINE_EXCEEDED, message)


class ResourceExhausted(RpcError):
    """``RESOURCE_EXHAUSTED``: A message is too large, or a queue or quota is full."""

    code = StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.RESOURCE_EXHAUSTED, message)


class Cancelled(RpcError):
    """``CANCELLED``: The caller went away."""

    code = StatusCode.CANCELLED

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.CANCELLED, message)


class Internal(RpcError):
    """``INTERNAL``: A bug in an engine or in the mesh."""

    code = StatusCode.INTERNAL

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.INTERNAL, message)


class RateLimited(ResourceExhausted):
    """``RESOURCE_EXHAUSTED``: Over a rate limit; try again after ``retry_after_s`` seconds.

    The gateway sends the wait as ``retry-after`` (whole seconds, rounded up) and
    ``retry-after-ms`` trailing metadata.
    """

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def trailers(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after", str(max(1, math.ceil(self.retry_after_s)))),
                ("retry-after-ms", str(max(1, math.ceil(self.retry_after_s * 1000)))))


class Unauthenticated(RpcError):
    """``UNAUTHENTICATED``: No valid credentials; sign in (again) and send the token."""

    code = StatusCode.UNAUTHENTICATED

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.UNAUTHENTICATED, message)


class PermissionDenied(RpcError):
    """``PERMISSION_DENIED``: The caller's role does not grant what the method needs."""

    code = StatusCode.PERMISSION_DENIED

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.PERMISSION_DENIED, message)


class AlreadyExists(RpcError):
    """``ALREADY_EXISTS``: The thing the request would create is already there."""

    code = StatusCode.ALREADY_EXISTS

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.ALREADY_EXISTS, message)


class FailedPrecondition(RpcError):
    """``FAILED_PRECONDITION``: The request is valid but cannot be served as things stand
    (e.g. no model fits its cost limit); the message says what would have to change."""

    code = StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str = "") -> None:
        super().__init__(StatusCode.FAILED_PRECONDITION, message)
