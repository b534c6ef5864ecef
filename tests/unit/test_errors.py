"""The mesh's errors: each carries the gRPC status a caller will see, and details a program
can read that survive the trip through a google.rpc.Status and a NATS hop."""

from __future__ import annotations

import base64
import inspect
from typing import Any

import grpc
import pytest
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo, RetryInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

import mesh.errors
from mesh.errors import (
    AlreadyExists,
    BudgetExhausted,
    Cancelled,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MeshError,
    NotFound,
    PermissionDenied,
    RateLimited,
    Reason,
    ResourceExhausted,
    RpcError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    error_from_status,
    status_from_code,
)
from mesh.transport import headers as h
from mesh.transport.rpc import error_from, error_headers

SUBCLASS_CODES = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (Internal, grpc.StatusCode.INTERNAL),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
]


@pytest.mark.parametrize(("error_type", "code"), SUBCLASS_CODES)
def test_each_rpc_error_carries_its_code_and_message(error_type: type[Any],
                                                     code: grpc.StatusCode) -> None:
    error = error_type("what to fix")

    assert error.code is code
    assert error_type.code is code  # readable without an instance (for docs and mapping)
    assert error.message == "what to fix"
    assert str(error) == "what to fix"
    assert isinstance(error, RpcError)
    assert isinstance(error, MeshError)
    assert code.name in repr(error)


def test_every_rpc_error_subclass_is_covered() -> None:
    subclasses = {cls for name, cls in inspect.getmembers(mesh.errors, inspect.isclass)
                  if issubclass(cls, RpcError) and cls is not RpcError
                  and not name.startswith("_")}

    assert subclasses == ({error_type for error_type, _ in SUBCLASS_CODES}
                          | {RateLimited, BudgetExhausted})


def test_rpc_error_takes_any_code() -> None:
    error = RpcError(grpc.StatusCode.PERMISSION_DENIED, "role 'reader' may not write")

    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert error.message == "role 'reader' may not write"


def test_an_rpc_error_can_be_caught_by_code() -> None:
    with pytest.raises(RpcError) as caught:
        raise Unavailable("node is draining")

    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


def test_config_error_is_a_mesh_error_but_not_an_rpc_error() -> None:
    error = ConfigError("unknown key 'gateway.adress'")

    assert isinstance(error, MeshError)
    assert not isinstance(error, RpcError)


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda code: code.name)
def test_status_from_code_round_trips_every_status(code: grpc.StatusCode) -> None:
    number = code.value[0]

    assert status_from_code(number) is code


@pytest.mark.parametrize("number", [-1, 17, 99, 2**31])
def test_unknown_status_numbers_become_unknown(number: int) -> None:
    assert status_from_code(number) is grpc.StatusCode.UNKNOWN


def test_every_name_in_all_exists() -> None:
    missing = [name for name in mesh.errors.__all__ if not hasattr(mesh.errors, name)]

    assert missing == []


def test_every_public_class_and_function_is_in_all() -> None:
    public = {
        name for name, obj in vars(mesh.errors).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == mesh.errors.__name__
    }

    assert public == set(mesh.errors.__all__)


def test_tree_in_docstring_names_every_error() -> None:
    doc = mesh.errors.__doc__ or ""
    for name in mesh.errors.__all__:
        if inspect.isclass(getattr(mesh.errors, name)):
            assert name in doc, f"{name} is missing from the tree in mesh.errors' docstring"


def test_rate_limited_is_resource_exhausted_with_retry_after_trailers() -> None:
    error = RateLimited("over the limit", retry_after_s=0.2)
    assert isinstance(error, ResourceExhausted)
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.trailers())
    # the trailers sent before the details existed stay, beside grpc-status-details-bin
    assert (trailers["retry-after"], trailers["retry-after-ms"]) == ("1", "200")
    assert set(trailers) == {"retry-after", "retry-after-ms", "grpc-status-details-bin"}


# -- details: google.rpc.Status, the gRPC trailer, the NATS hop ------------------------


def _nats_hop(error: RpcError) -> RpcError:
    """What the caller's side of a NATS hop raises for ``error`` sent by a node."""
    received = error_from(error_headers(error))
    assert received is not None
    return received


def _grpc_hop(error: RpcError) -> RpcError:
    """What a client's :func:`mesh.client.rpc_error` rebuilds from the gateway's trailers."""
    trailers = dict(error.trailers())
    raw = trailers.get("grpc-status-details-bin")
    status = Status.FromString(raw) if isinstance(raw, bytes) else None
    return error_from_status(error.code, error.message, status)


HOPS = [pytest.param(_nats_hop, id="nats"), pytest.param(_grpc_hop, id="grpc")]


@pytest.mark.parametrize("hop", HOPS)
def test_rate_limited_keeps_its_class_reason_and_retry_delay(hop: Any) -> None:
    sent = RateLimited("over the limit of /revo.echo.v1.EchoService/Echo", retry_after_s=1.25,
                       metadata={"method": "/revo.echo.v1.EchoService/Echo"})

    received = hop(sent)

    assert type(received) is RateLimited
    assert received.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert received.message == sent.message
    assert received.reason == Reason.RATE_LIMITED == "RATE_LIMITED"
    assert received.retry_after_s == pytest.approx(1.25)
    assert received.metadata == {"method": "/revo.echo.v1.EchoService/Echo"}


@pytest.mark.parametrize("hop", HOPS)
def test_budget_exhausted_keeps_its_class_and_metadata(hop: Any) -> None:
    sent = BudgetExhausted("budget reached", metadata={"user": "ada", "period": "2026-12"})

    received = hop(sent)

    assert type(received) is BudgetExhausted
    assert isinstance(received, ResourceExhausted)
    assert received.reason == "BUDGET_EXHAUSTED"
    assert received.metadata == {"user": "ada", "period": "2026-12"}
    assert received.retry_after_s is None  # retrying will not help before the next period


@pytest.mark.parametrize("hop", HOPS)
def test_field_violations_travel_as_bad_request(hop: Any) -> None:
    sent = InvalidArgument(violations=[("delay_ms", "must be at most 60000, got 90000"),
                                       ("count", "must be between 1 and 100000, got 0")])

    received = hop(sent)

    assert type(received) is InvalidArgument
    assert received.message == ("delay_ms must be at most 60000, got 90000; "
                                "count must be between 1 and 100000, got 0")
    assert [(v.field, v.description) for v in received.violations] == [
        ("delay_ms", "must be at most 60000, got 90000"),
        ("count", "must be between 1 and 100000, got 0")]


@pytest.mark.parametrize("hop", HOPS)
@pytest.mark.parametrize(("error_type", "code"), SUBCLASS_CODES)
def test_every_code_comes_back_as_its_own_class(hop: Any, error_type: type[Any],
                                                code: grpc.StatusCode) -> None:
    received = hop(error_type("what to fix"))

    assert type(received) is error_type
    assert received.code is code
    assert received.message == "what to fix"
    assert received.reason == error_type.reason  # the class's default, or none


@pytest.mark.parametrize("hop", HOPS)
def test_a_reason_whose_class_has_another_code_gives_the_class_of_the_code(hop: Any) -> None:
    received = hop(Unavailable("odd", reason=Reason.RATE_LIMITED))

    assert type(received) is Unavailable
    assert received.reason == "RATE_LIMITED"


@pytest.mark.parametrize("hop", HOPS)
def test_a_reason_unknown_to_this_version_is_kept_as_text(hop: Any) -> None:
    received = hop(RpcError(grpc.StatusCode.ABORTED, "try again", reason="SOMETHING_NEW"))

    assert type(received) is RpcError
    assert received.code is grpc.StatusCode.ABORTED
    assert received.reason == "SOMETHING_NEW"


def test_the_status_is_the_standard_one_a_stock_client_reads() -> None:
    error = RateLimited("slow down", retry_after_s=0.5, metadata={"method": "/a.B/C"})
    status = error.status()
    assert status is not None

    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == "slow down"
    info, retry = ErrorInfo(), RetryInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "RATE_LIMITED", "revo.dev", {"method": "/a.B/C"})
    assert status.details[1].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 500
    # the trailer is exactly what grpcio-status would send for that Status
    assert dict(error.trailers())["grpc-status-details-bin"] == dict(
        rpc_status.to_status(status).trailing_metadata)["grpc-status-details-bin"]


def test_bad_request_lists_every_violation() -> None:
    status = InvalidArgument(violations=[("a", "is empty"), ("b", "is too long")]).status()
    assert status is not None
    bad = BadRequest()

    assert status.details[0].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("a", "is empty"), ("b", "is too long")]


def test_an_error_without_details_sends_no_details() -> None:
    error = NotFound("no such task")

    assert error.status() is None
    assert error.trailers() == ()
    assert h.STATUS_DETAILS not in error_headers(error)


@pytest.mark.parametrize(("reason", "seconds"), [(Reason.POOL_FULL, 0.1),
                                                 (Reason.ENGINE_STOPPING, 0.1),
                                                 (Reason.NO_LIVE_NODE, 1.0),
                                                 (Reason.STORE_UNAVAILABLE, 1.0)])
def test_reasons_worth_retrying_say_when(reason: Reason, seconds: float) -> None:
    error = Unavailable("retry", reason=reason)

    assert error.retry_after_s == seconds
    assert _nats_hop(error).retry_after_s == pytest.approx(seconds)


def test_details_too_large_for_a_header_keep_the_reason() -> None:
    error = InvalidArgument("many", reason="TOO_MANY", violations=[
        (f"items[{i}].text", "is empty " * 20) for i in range(100)])

    received = _nats_hop(error)

    assert len(error_headers(error)[h.STATUS_DETAILS]) <= 2048
    assert received.reason == "TOO_MANY"
    assert received.violations == ()


def test_broken_details_header_still_gives_the_error() -> None:
    headers = error_headers(RateLimited("slow down", 1.0))
    headers[h.STATUS_DETAILS] = "not base64!"

    received = error_from(headers)

    assert type(received) is ResourceExhausted
    assert received.message == "slow down"


def test_the_nats_details_are_a_base64_status_without_code_or_message() -> None:
    raw = error_headers(RateLimited("slow down", 1.0))[h.STATUS_DETAILS]

    status = Status.FromString(base64.b64decode(raw))

    assert (status.code, status.message) == (0, "")  # Revo-Status / Revo-Message carry them
    assert len(status.details) == 2


def test_every_reason_is_documented_in_its_docstring_and_for_clients() -> None:
    from pathlib import Path

    page = (Path(__file__).parents[2] / "docs" / "operators.md").read_text()
    for reason in Reason:
        assert f"``{reason.value}``" in (Reason.__doc__ or ""), reason
        assert f"`{reason.value}`" in page, f"{reason} is missing from docs/operators.md"
