"""Errors that cross the mesh, the gRPC status each one carries, and the details a program
can read from it.

The tree::

    MeshError                      anything the mesh raises on purpose
    ├── RpcError(code, message)    an expected failure of one call; travels to the caller
    │   ├── InvalidArgument        INVALID_ARGUMENT: the request is wrong; do not retry as is
    │   ├── NotFound               NOT_FOUND
    │   ├── Unimplemented          UNIMPLEMENTED: no such service or method
    │   ├── Unavailable            UNAVAILABLE: nobody can serve it now; safe to retry
    │   ├── DeadlineExceeded       DEADLINE_EXCEEDED
    │   ├── ResourceExhausted      RESOURCE_EXHAUSTED: too big, or too many
    │   │   ├── RateLimited        ... over a rate limit; carries retry_after_s
    │   │   └── BudgetExhausted    ... the caller's budget for paid models is spent
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

Details a program can read. An :class:`RpcError` may carry, besides its code and message:

* a :attr:`~RpcError.reason`, one of :class:`Reason` (with :attr:`~RpcError.metadata`),
  sent as ``google.rpc.ErrorInfo`` in the domain ``revo.dev`` (:attr:`RpcError.domain`);
* :attr:`~RpcError.retry_after_s`, sent as ``google.rpc.RetryInfo``;
* :attr:`~RpcError.violations` of request fields (each a :class:`FieldViolation`), sent
  as ``google.rpc.BadRequest``.

They travel as one ``google.rpc.Status`` (:meth:`RpcError.status`): to gRPC clients in
the standard ``grpc-status-details-bin`` trailer, across a NATS hop in the
``Revo-Status-Details`` header, and :func:`error_from_status` rebuilds the same subclass
with the same details on the far side. Nothing is built for a call that succeeds.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from typing import ClassVar, NamedTuple

from google.protobuf.message import Message
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo, RetryInfo
from google.rpc.status_pb2 import Status
from grpc import StatusCode
from grpc_status import rpc_status

__all__ = [
    "AlreadyExists",
    "BudgetExhausted",
    "Cancelled",
    "ConfigError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "MeshError",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "Reason",
    "ResourceExhausted",
    "RpcError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "error_from_status",
    "status_from_code",
]

_BY_NUMBER: dict[int, StatusCode] = {code.value[0]: code for code in StatusCode}


def status_from_code(number: int) -> StatusCode:
    """The :class:`grpc.StatusCode` for a wire number; unknown numbers become ``UNKNOWN``."""
    return _BY_NUMBER.get(number, StatusCode.UNKNOWN)


class Reason(enum.StrEnum):
    """Every ``ErrorInfo.reason`` the mesh sends (domain ``revo.dev``), one per cause a
    program may act on differently. The code each comes with is in brackets.

    ``RATE_LIMITED`` [RESOURCE_EXHAUSTED]
        Over a rate limit (a method's, a user's, or the sign-in throttle). RetryInfo says
        when to retry; metadata ``method`` when a method's limit refused it.
    ``BUDGET_EXHAUSTED`` [RESOURCE_EXHAUSTED]
        The caller's budget for paid models is spent for this period. Metadata ``user``,
        ``period``, ``limit_usd``. Local models stay available.
    ``POOL_FULL`` [RESOURCE_EXHAUSTED]
        The engine on the node that got the call is at capacity. RetryInfo (0.1 s): retry
        soon (another node may take it), or add nodes. Metadata ``engine``.
    ``MESSAGE_TOO_LARGE`` [RESOURCE_EXHAUSTED]
        A request, response or stream message is over the mesh's message limit. Metadata
        ``size``, ``limit`` (bytes).
    ``UNKNOWN_METHOD`` [UNIMPLEMENTED]
        No such service or method is served by the mesh. Metadata ``method``.
    ``UNKNOWN_MODEL`` [INVALID_ARGUMENT]
        The request names a model the mesh's catalog does not have (ListModels lists
        them). Metadata ``model``.
    ``NO_LIVE_NODE`` [UNAVAILABLE]
        No live node serves the method right now. RetryInfo (1 s): retry once a node is
        up. Metadata ``method`` where known.
    ``NODE_LOST`` [UNAVAILABLE]
        The node serving the call stopped or did not take it; it may have run. Retry only
        calls that are safe to repeat.
    ``ENGINE_STOPPING`` [UNAVAILABLE]
        The engine on that node is stopping. RetryInfo (0.1 s): another node can take it.
    ``STORE_UNAVAILABLE`` [UNAVAILABLE]
        The engine could not reach NATS (JetStream) while serving the call: the server is
        restarting, or the node is reconnecting. The call may have had part of its effect;
        RetryInfo (1 s): retry calls safe to repeat (with an idempotency key). Metadata
        ``engine``.
    ``DEADLINE_EXCEEDED`` [DEADLINE_EXCEEDED]
        The call's deadline passed before it finished.
    ``PERMISSION_DENIED`` [PERMISSION_DENIED]
        The caller's role lacks what the method needs. Metadata ``permission`` where known.
    ``UNAUTHENTICATED`` [UNAUTHENTICATED]
        The token is not valid (malformed, wrong signature, not for this mesh); sign in.
    ``TOKEN_MISSING`` [UNAUTHENTICATED]
        The method needs a signed-in caller and the call carried no token.
    ``TOKEN_EXPIRED`` [UNAUTHENTICATED]
        The token expired: refresh it (an access token) or sign in again. For an API key:
        the key expired; create a new one.
    ``TOKEN_REVOKED`` [UNAUTHENTICATED]
        The token was revoked (signed out, or the user's role or password changed). For an
        API key: the key was revoked, or its owner disabled or deleted.
    """

    RATE_LIMITED = "RATE_LIMITED"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    POOL_FULL = "POOL_FULL"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    UNKNOWN_METHOD = "UNKNOWN_METHOD"
    UNKNOWN_MODEL = "UNKNOWN_MODEL"
    NO_LIVE_NODE = "NO_LIVE_NODE"
    NODE_LOST = "NODE_LOST"
    ENGINE_STOPPING = "ENGINE_STOPPING"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_REVOKED = "TOKEN_REVOKED"


_RETRY_AFTER_S: dict[str, float] = {
    Reason.POOL_FULL: 0.1,  # a moment: the call may land on another node, or a free actor
    Reason.ENGINE_STOPPING: 0.1,  # another node's engine can take it at once
    Reason.NO_LIVE_NODE: 1.0,  # a starting node announces itself within a heartbeat or so
    Reason.STORE_UNAVAILABLE: 1.0,  # nats-py reconnects within a few of its 2 s waits
}
"""The retry delay sent for a reason when the error names none."""


class FieldViolation(NamedTuple):
    """One wrong field of a request (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    """The field's path in the request message, e.g. ``delay_ms`` or ``items[2].text``."""
    description: str
    """What is wrong with it and what would be right, read after the field's name
    (``must be at most 60000, got 90000``)."""


class MeshError(Exception):
    """Base class of every error the mesh raises on purpose."""


class ConfigError(MeshError):
    """Configuration that cannot be used. The message names the key and how to fix it."""


class RpcError(MeshError):
    """A failed call with the gRPC status the caller will see, and optional details.

    ``reason`` (a :class:`Reason`; a subclass may have a default), ``metadata``,
    ``retry_after_s`` and ``violations`` are what a program reads; see the module's
    docstring for how they travel."""

    code: StatusCode = StatusCode.UNKNOWN
    domain: ClassVar[str] = "revo.dev"
    """The ``ErrorInfo.domain`` of every reason the mesh sends."""
    reason: str = ""
    """The ``ErrorInfo.reason`` (a :class:`Reason`), '' for none."""

    def __init__(self, code: StatusCode, message: str = "", *, reason: str | None = None,
                 metadata: Mapping[str, str] | None = None, retry_after_s: float | None = None,
                 violations: Iterable[tuple[str, str]] = ()) -> None:
        self.violations = tuple(FieldViolation(*v) for v in violations)
        if not message and self.violations:
            message = "; ".join(f"{v.field} {v.description}" for v in self.violations)
        super().__init__(message)
        self.code = code
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata) if metadata else {}
        self.retry_after_s = (retry_after_s if retry_after_s is not None
                              else _RETRY_AFTER_S.get(self.reason))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before trying again, when the error says (``retry_after_s``)."""
        return self.retry_after_s

    def status(self) -> Status | None:
        """The error as a ``google.rpc.Status`` with its details; None when it has none."""
        if not (self.reason or self.retry_after_s is not None or self.violations):
            return None
        details: list[Message] = []
        if self.reason:
            details.append(ErrorInfo(reason=self.reason, domain=self.domain,
                                                       metadata=self.metadata))
        if self.retry_after_s is not None:
            retry = RetryInfo()
            retry.retry_delay.FromNanoseconds(max(0, round(self.retry_after_s * 1e9)))
            details.append(retry)
        if self.violations:
            details.append(BadRequest(field_violations=[
                BadRequest.FieldViolation(field=v.field,
                                                            description=v.description)
                for v in self.violations]))
        status = Status(code=self.code.value[0], message=self.message)
        for detail in details:
            status.details.add().Pack(detail)
        return status

    def trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        """Trailing metadata for a gRPC reply: ``grpc-status-details-bin`` when the error has
        details, and ``retry-after`` (whole seconds, rounded up) / ``retry-after-ms`` when
        it says when to retry (the mesh sent those before the details; they stay)."""
        status = self.status()
        if status is None:
            return ()
        out: list[tuple[str, str | bytes]] = []
        if self.retry_after_s is not None:
            out += [("retry-after", str(max(1, math.ceil(self.retry_after_s)))),
                    ("retry-after-ms", str(max(1, math.ceil(self.retry_after_s * 1000))))]
        out += rpc_status.to_status(status).trailing_metadata
        return tuple(out)


class _FixedCode(RpcError):
    """An :class:`RpcError` whose class fixes the code."""

    def __init__(self, message: str = "", *, reason: str | None = None,
                 metadata: Mapping[str, str] | None = None, retry_after_s: float | None = None,
                 violations: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(type(self).code, message, reason=reason, metadata=metadata,
                         retry_after_s=retry_after_s, violations=violations)


class InvalidArgument(_FixedCode):
    """``INVALID_ARGUMENT``: The request is wrong; retrying it unchanged will fail again.

    Name the wrong fields with ``violations=[(field, what is wrong), ...]`` (sent as
    ``google.rpc.BadRequest``); without a message, the message is made of them
    (``delay_ms must be at most 60000, got 90000``)."""

    code = StatusCode.INVALID_ARGUMENT


class NotFound(_FixedCode):
    """``NOT_FOUND``: The thing the request names does not exist."""

    code = StatusCode.NOT_FOUND


class Unimplemented(_FixedCode):
    """``UNIMPLEMENTED``: No such service or method is served."""

    code = StatusCode.UNIMPLEMENTED


class Unavailable(_FixedCode):
    """``UNAVAILABLE``: Nobody can serve the call now; it is safe to retry."""

    code = StatusCode.UNAVAILABLE


class DeadlineExceeded(_FixedCode):
    """``DEADLINE_EXCEEDED``: The call's deadline passed before it finished."""

    code = StatusCode.DEADLINE_EXCEEDED
    reason = Reason.DEADLINE_EXCEEDED


class ResourceExhausted(_FixedCode):
    """``RESOURCE_EXHAUSTED``: A message is too large, or a queue or quota is full."""

    code = StatusCode.RESOURCE_EXHAUSTED


class Cancelled(_FixedCode):
    """``CANCELLED``: The caller went away."""

    code = StatusCode.CANCELLED


class Internal(_FixedCode):
    """``INTERNAL``: A bug in an engine or in the mesh."""

    code = StatusCode.INTERNAL


class RateLimited(ResourceExhausted):
    """``RESOURCE_EXHAUSTED``, reason ``RATE_LIMITED``: Over a rate limit; try again after
    ``retry_after_s`` seconds.

    The gateway sends the wait as RetryInfo, and as ``retry-after`` (whole seconds, rounded
    up) and ``retry-after-ms`` trailing metadata.
    """

    reason = Reason.RATE_LIMITED
    retry_after_s: float

    def __init__(self, message: str, retry_after_s: float, *,
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, metadata=metadata, retry_after_s=retry_after_s)


class BudgetExhausted(ResourceExhausted):
    """``RESOURCE_EXHAUSTED``, reason ``BUDGET_EXHAUSTED``: The caller's budget for paid
    models is spent for this period; local models stay available."""

    reason = Reason.BUDGET_EXHAUSTED


class Unauthenticated(_FixedCode):
    """``UNAUTHENTICATED``: No valid credentials; sign in (again) and send the token.

    The reason says which: ``TOKEN_MISSING``, ``TOKEN_EXPIRED``, ``TOKEN_REVOKED``, or
    ``UNAUTHENTICATED`` for any other invalid token."""

    code = StatusCode.UNAUTHENTICATED
    reason = Reason.UNAUTHENTICATED


class PermissionDenied(_FixedCode):
    """``PERMISSION_DENIED``: The caller's role does not grant what the method needs."""

    code = StatusCode.PERMISSION_DENIED
    reason = Reason.PERMISSION_DENIED


class AlreadyExists(_FixedCode):
    """``ALREADY_EXISTS``: The thing the request would create is already there."""

    code = StatusCode.ALREADY_EXISTS


class FailedPrecondition(_FixedCode):
    """``FAILED_PRECONDITION``: The request is valid but cannot be served as things stand
    (e.g. no model fits its cost limit); the message says what would have to change."""

    code = StatusCode.FAILED_PRECONDITION


_BY_CODE: dict[StatusCode, type[RpcError]] = {cls.code: cls for cls in (
    InvalidArgument, NotFound, Unimplemented, Unavailable, DeadlineExceeded, ResourceExhausted,
    Cancelled, Internal, Unauthenticated, PermissionDenied, AlreadyExists, FailedPrecondition)}
_BY_REASON: dict[str, type[RpcError]] = {cls.reason: cls for cls in (
    RateLimited, BudgetExhausted)}


_ERROR_INFO = ErrorInfo.DESCRIPTOR.full_name
_RETRY_INFO = RetryInfo.DESCRIPTOR.full_name
_BAD_REQUEST = BadRequest.DESCRIPTOR.full_name


def error_from_status(code: StatusCode, message: str,
                      status: Status | None = None) -> RpcError:
    """The error that ``code``, ``message`` and the details in ``status`` describe, as its
    own class: the class of its reason (:class:`RateLimited`, :class:`BudgetExhausted`)
    when the code agrees, else the class of its code, else :class:`RpcError`. Details of
    kinds the mesh does not send are ignored."""
    reason, metadata, retry_after_s = "", {}, None
    violations: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        kind = detail.TypeName()
        if kind == _ERROR_INFO:
            info = ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif kind == _RETRY_INFO:
            retry = RetryInfo()
            detail.Unpack(retry)
            retry_after_s = retry.retry_delay.ToNanoseconds() / 1e9
        elif kind == _BAD_REQUEST:
            bad = BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
    cls = _BY_REASON.get(reason)
    if cls is None or cls.code is not code:
        cls = _BY_CODE.get(code, RpcError)
    # built past the subclass's own __init__, whose arguments differ from class to class
    error = cls.__new__(cls)
    RpcError.__init__(error, code, message, reason=reason or None, metadata=metadata,
                      retry_after_s=retry_after_s, violations=violations)
    return error
