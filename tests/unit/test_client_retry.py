"""The client tries a failed call again only where repeating it is safe (mesh.client.retry),
and counts a token's life from its own claims (mesh.client.session)."""

from __future__ import annotations

import base64
import json

import grpc
import pytest

from mesh.client.retry import RetryPolicy, is_safe, retry_delay
from mesh.client.session import token_lifetime_s
from mesh.errors import Reason, RpcError
from revo_engine_echo.v1 import echo_pb2  # noqa: F401  (its descriptors in the pool)

STATS = "/revo.echo.v1.EchoService/Stats"  # idempotency_level = NO_SIDE_EFFECTS
ECHO = "/revo.echo.v1.EchoService/Echo"  # not declared safe
POLICY = RetryPolicy(max_attempts=3, max_retry_after_s=5.0)


def _error(code: grpc.StatusCode, reason: str = "", retry_after_s: float | None = None
           ) -> RpcError:
    return RpcError(code, "failed", reason=reason or None, retry_after_s=retry_after_s)


def test_safety_is_read_from_the_methods_contract() -> None:
    assert is_safe(STATS)
    assert not is_safe(ECHO)
    assert not is_safe("/no.such.v1.Service/Method")


@pytest.mark.parametrize("reason", [Reason.NODE_LOST, Reason.STORE_UNAVAILABLE, ""])
def test_unavailable_is_tried_again_only_for_a_safe_method(reason: str) -> None:
    error = _error(grpc.StatusCode.UNAVAILABLE, reason)
    assert retry_delay(POLICY, STATS, error, 1) is not None
    assert retry_delay(POLICY, ECHO, error, 1) is None


@pytest.mark.parametrize("reason", [Reason.POOL_FULL, Reason.ENGINE_STOPPING,
                                    Reason.NO_LIVE_NODE])
def test_a_call_refused_before_it_ran_is_tried_again_for_any_method(reason: str) -> None:
    code = (grpc.StatusCode.RESOURCE_EXHAUSTED if reason == Reason.POOL_FULL
            else grpc.StatusCode.UNAVAILABLE)
    delay = retry_delay(POLICY, ECHO, _error(code, reason), 1)
    assert delay is not None
    assert delay == _error(code, reason).retry_after_s  # the wait the mesh names


def test_a_rate_limit_is_waited_out_only_when_its_wait_is_short() -> None:
    limited = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(POLICY, ECHO, _error(limited, Reason.RATE_LIMITED, 0.4), 1) == 0.4
    assert retry_delay(POLICY, ECHO, _error(limited, Reason.RATE_LIMITED, 30.0), 1) is None


@pytest.mark.parametrize("code", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_other_failures_are_the_callers_even_for_a_safe_method(code: grpc.StatusCode) -> None:
    assert retry_delay(POLICY, STATS, _error(code), 1) is None


def test_attempts_are_bounded_and_off_without_a_policy() -> None:
    error = _error(grpc.StatusCode.UNAVAILABLE, Reason.NO_LIVE_NODE)
    assert retry_delay(POLICY, STATS, error, 2) is not None
    assert retry_delay(POLICY, STATS, error, 3) is None  # 3 attempts made: no fourth
    assert retry_delay(None, STATS, error, 1) is None


def _jwt(claims: dict[str, object]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"e30.{body}.signature"


def test_a_tokens_lifetime_comes_from_its_claims_not_the_clock() -> None:
    assert token_lifetime_s(_jwt({"iat": 1000, "exp": 1900})) == 900
    assert token_lifetime_s("revo_abc_secret") is None  # an API key: no refresh
    assert token_lifetime_s(_jwt({"iat": 1000})) is None
