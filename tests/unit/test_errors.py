"""The mesh's errors: each carries the gRPC status a caller will see."""

from __future__ import annotations

import inspect
from typing import Any

import grpc
import pytest

import mesh.errors
from mesh.errors import (
    AlreadyExists,
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
    ResourceExhausted,
    RpcError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    status_from_code,
)

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
    subclasses = {cls for _, cls in inspect.getmembers(mesh.errors, inspect.isclass)
                  if issubclass(cls, RpcError) and cls is not RpcError}

    assert subclasses == {error_type for error_type, _ in SUBCLASS_CODES} | {RateLimited}


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
    assert dict(error.trailers()) == {"retry-after": "1", "retry-after-ms": "200"}
