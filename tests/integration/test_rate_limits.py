"""Rate limits at the gateway: one limit shared by every gateway, per method, per user, and
the sign-in throttle (per user name and per client address)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

import grpc
import nats

from mesh.auth.limiter import SharedLimiter
from mesh.client import MeshClient
from mesh.config import Limit
from mesh.errors import RateLimited
from mesh.gateway import Gateway
from mesh.testing import wait_for
from mesh.v1 import auth_pb2, auth_pb2_grpc
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc

ONLY_ECHO = {"only": ["echo"]}
ECHO_SERVICE = "revo.echo.v1.EchoService"
ECHO = f"/{ECHO_SERVICE}/Echo"
PASSWORD = "correct horse battery"


def _name(prefix: str) -> str:
    """A user name no other test uses (counters live in the session's one NATS)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _user(mesh, role: str, prefix: str = "user") -> tuple[str, str]:
    """A new user of ``role`` and an access token for it."""
    name = _name(prefix)
    await mesh.gateway.guard.users.create(name, role, PASSWORD)
    async with MeshClient(mesh.target, timeout=5) as client:
        tokens = await client.login(name, PASSWORD)
    return name, tokens.access_token


async def _echo(channel: grpc.aio.Channel, token: str) -> grpc.aio.AioRpcError | None:
    """One Echo call; None when admitted, else the error."""
    try:
        await echo_pb2_grpc.EchoServiceStub(channel).Echo(
            echo_pb2.EchoRequest(payload=b"x"), metadata=_auth(token), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def test_a_lease_in_flight_when_the_window_turns_fails_no_call(nats_server):
    """A call still waiting for its counter when a later call starts the next window is
    admitted or refused, never failed by the other window's state."""
    limit = Limit(rate=1, burst=2)  # windows of 2 s
    # windows of their own, well after now; the race depends on the order of NATS's
    # replies, so it is run a few times
    first = (int(time.time() // limit.window_s) + 10) * limit.window_s
    nc = await nats.connect(nats_server.url)
    limiter = SharedLimiter(nc, longest_window_s=limit.window_s)
    outcomes: list[object] = []
    try:
        await limiter.start()
        for attempt in range(20):
            key = f"user.{_name('window')}"
            start = first + attempt * 2 * limit.window_s
            await limiter.acquire(key, limit, now=start + 0.5)  # learns the previous window
            outcomes += await asyncio.gather(
                limiter.acquire(key, limit, now=start + 0.6),  # asks NATS, and meanwhile
                limiter.acquire(key, limit, now=start + limit.window_s + 0.1),  # next window
                return_exceptions=True)
        raced = limiter.leases_past_their_window
    finally:
        await limiter.stop()
        await nc.close()
    failed = [o for o in outcomes if not (o is None or isinstance(o, RateLimited))]
    assert not failed, f"{len(failed)} of {len(outcomes)} calls failed: {failed[0]!r}"
    assert len(outcomes) == 40
    # the race ran: a lease came back after the next window's call had turned its bucket
    assert raced > 0, "no lease was in flight when the window turned"


async def test_a_herd_at_a_windows_start_shares_one_lease(nats_server):
    """64 calls at once at a window's start, under a limit they fit in, are all admitted:
    they wait for one lease at a time rather than each reserving a lease of the burst."""
    limit = Limit(rate=16, burst=160)  # windows of 10 s; leases grow to 10
    first = (int(time.time() // limit.window_s) + 10) * limit.window_s
    nc = await nats.connect(nats_server.url)
    limiter = SharedLimiter(nc, longest_window_s=limit.window_s)
    try:
        await limiter.start()
        for attempt in range(3):
            key = f"user.{_name('herd')}"
            start = first + attempt * 3 * limit.window_s
            for _ in range(30):  # the leases grow to their largest
                await limiter.acquire(key, limit, now=start + 1)
            outcomes = await asyncio.gather(
                *(limiter.acquire(key, limit, now=start + limit.window_s + 0.5)
                  for _ in range(64)), return_exceptions=True)
            refused = [o for o in outcomes if o is not None]
            assert not refused, f"{len(refused)} of 64 refused: {refused[0]!r}"
    finally:
        await limiter.stop()
        await nc.close()


def _retry_after(error: grpc.aio.AioRpcError) -> tuple[int, int]:
    """The ``retry-after`` (s) and ``retry-after-ms`` trailers of a refusal."""
    metadata: Any = error.trailing_metadata() or ()  # grpc.aio.Metadata: (key, value) pairs
    trailers = {str(key): str(value) for key, value in metadata}
    assert "retry-after" in trailers, f"no retry-after trailer in {trailers}"
    assert "retry-after-ms" in trailers, f"no retry-after-ms trailer in {trailers}"
    seconds, millis = int(trailers["retry-after"]), int(trailers["retry-after-ms"])
    assert seconds >= 1
    assert millis >= 1
    assert seconds == max(1, math.ceil(millis / 1000))  # the same wait, rounded up
    return seconds, millis


def _assert_rate_limited(error: grpc.aio.AioRpcError | None, window_s: float) -> None:
    assert error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert "rate limit" in str(error.details())
    seconds, _ = _retry_after(error)
    assert seconds <= 2 * window_s + 1  # never longer than the sliding window can need


async def test_two_gateways_admit_one_limit_between_them(mesh_harness):
    rate, burst = 0.5, 6
    mesh = await mesh_harness(plugins=ONLY_ECHO, auth={
        "enabled": True, "rate_limits": {"roles": {"developer": {"rate": rate, "burst": burst}}}})
    second = Gateway(mesh.config)
    await second.start()
    other = grpc.aio.insecure_channel(second.address)
    try:
        await wait_for(lambda: bool(second._view and second._view.snapshot.service_nodes.get(
            ECHO_SERVICE)), 10, "the second gateway to see the echo service")
        _, token = await _user(mesh, "developer")
        channels = [mesh.channel, other]
        admitted = [0, 0]
        refusals = []
        for i in range(14):
            error = await _echo(channels[i % 2], token)
            if error is None:
                admitted[i % 2] += 1
            else:
                refusals.append(error)
    finally:
        await other.close(None)
        await second.stop(grace=1.0)

    # A limiter per process would admit up to `burst` on each gateway (12 of 14); the shared
    # one admits at most `burst` in all (leased tokens may waste a little, never add).
    assert burst - 2 <= sum(admitted) <= burst, admitted
    assert all(admitted), f"both gateways admit calls: {admitted}"
    assert len(refusals) == 14 - sum(admitted)
    for error in refusals:
        _assert_rate_limited(error, burst / rate)


async def test_method_limit_applies_to_its_method_only(mesh_harness):
    rate, burst = 0.5, 3
    mesh = await mesh_harness(plugins=ONLY_ECHO, auth={
        "enabled": True, "rate_limits": {"methods": {ECHO: {"rate": rate, "burst": burst}}}})
    _, token = await _user(mesh, "developer")

    outcomes = [await _echo(mesh.channel, token) for _ in range(6)]
    admitted = outcomes.count(None)
    assert burst - 2 <= admitted <= burst
    for error in outcomes[admitted:]:
        _assert_rate_limited(error, burst / rate)
    assert outcomes[:admitted] == [None] * admitted  # refusals only once the limit is used

    stub = echo_pb2_grpc.EchoServiceStub(mesh.channel)
    for _ in range(6):  # Stats has no method limit; the role's limit is far away
        await stub.Stats(echo_pb2.StatsRequest(), metadata=_auth(token), timeout=5)


async def test_each_user_has_a_bucket_of_its_own(mesh_harness):
    rate, burst = 0.5, 3
    mesh = await mesh_harness(plugins=ONLY_ECHO, auth={
        "enabled": True, "rate_limits": {"roles": {"developer": {"rate": rate, "burst": burst}}}})
    _, alice = await _user(mesh, "developer", "alice")
    _, bob = await _user(mesh, "developer", "bob")

    outcomes = [await _echo(mesh.channel, alice) for _ in range(burst + 2)]
    assert burst - 2 <= outcomes.count(None) <= burst
    _assert_rate_limited(outcomes[-1], burst / rate)

    # alice used up her limit; bob's is untouched
    assert [await _echo(mesh.channel, bob) for _ in range(burst)] == [None] * burst
    _assert_rate_limited(await _echo(mesh.channel, alice), burst / rate)


async def _login(channel: grpc.aio.Channel, user: str, password: str) -> grpc.StatusCode:
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    try:
        await stub.Login(auth_pb2.LoginRequest(username=user, password=password), timeout=5)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            _retry_after(exc)
        return exc.code()
    return grpc.StatusCode.OK


# Each throttle test uses a window of its own: the counters are keyed by window length, and
# every test signs in from 127.0.0.1 to the session's one NATS.
async def test_failed_sign_ins_lock_that_user_name_only(mesh_harness):
    window_s = 317.0
    per_user = 3
    mesh = await mesh_harness(plugins=ONLY_ECHO, auth={
        "enabled": True,
        "login": {"per_user": per_user, "per_address": 1000, "window_s": window_s}})
    victim, other = _name("victim"), _name("other")
    await mesh.gateway.guard.users.create(victim, "developer", PASSWORD)
    await mesh.gateway.guard.users.create(other, "developer", PASSWORD)

    codes = [await _login(mesh.channel, victim, f"wrong password {i}") for i in range(per_user)]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * per_user
    # the right password no longer helps until the window has passed
    assert await _login(mesh.channel, victim, PASSWORD) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await _login(mesh.channel, other, PASSWORD) == grpc.StatusCode.OK


async def test_failed_sign_ins_under_many_names_lock_the_address(mesh_harness):
    window_s = 331.0
    per_address = 3
    mesh = await mesh_harness(plugins=ONLY_ECHO, auth={
        "enabled": True,
        "login": {"per_user": 1000, "per_address": per_address, "window_s": window_s}})
    real = _name("real")
    await mesh.gateway.guard.users.create(real, "developer", PASSWORD)

    codes = [await _login(mesh.channel, _name("guess"), PASSWORD) for _ in range(per_address)]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * per_address
    # a user who never failed, from the same address, is refused too
    assert await _login(mesh.channel, real, PASSWORD) == grpc.StatusCode.RESOURCE_EXHAUSTED
