"""Random calls at a ``revo gateway`` process with auth, rate limits and audit on: random
metadata (tokens good, bad and forged; request ids; trace contexts; deadlines), random bytes
and random method paths. Every call ends with a status from a known set (INTERNAL only
where the engine was asked to crash, never UNKNOWN), the gateway keeps answering, its
memory stays bounded over thousands of calls, and clients that cancel streams cannot bring
it down.

The gateway under test runs as a child process (a crash there fails a test instead of
ending the session); the node, the users and the tokens come from the test's own harness.
Hypothesis runs in a worker thread with blocking gRPC calls, so the harness keeps running
on the test's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import string
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.auth.tokens import ACCESS, REFRESH, TokenService
from mesh.embedded.nats_server import NatsServer, free_port
from mesh.testing import spawn_node, stop_node, wait_for
from mesh.v1 import auth_pb2
from revo_engine_echo.v1 import echo_pb2
from tests.plugins import crashy

ECHO = "/revo.echo.v1.EchoService/Echo"
COUNT = "/revo.echo.v1.EchoService/Count"
STATS = "/revo.echo.v1.EchoService/Stats"
LOGIN = "/revo.auth.v1.AuthService/Login"
REFRESH_PATH = "/revo.auth.v1.AuthService/Refresh"
LOGOUT = "/revo.auth.v1.AuthService/Logout"
WHOAMI = "/revo.auth.v1.AuthService/WhoAmI"
USERS = "/revo.auth.v1.UserService/"
KNOWN_PATHS = [
    ECHO, COUNT, STATS, LOGIN, REFRESH_PATH, LOGOUT, WHOAMI,
    *(USERS + name for name in ("CreateUser", "ListUsers", "SetRole", "ResetPassword",
                                "DisableUser", "DeleteUser")),
    "/revo.mesh.v1.MeshService/ListNodes", "/revo.mesh.v1.MeshService/ListServices",
]
UNKNOWN_PATHS = ["/revo.echo.v1.EchoService/Nope", "/acme.nope.v1.Nope/Do", "/", "//",
                 "/revo.auth.v1.AuthService/", "/grpc.health.v1.Health/Nope"]
# Calls that hash a password (about 0.1 s each): fuzzed, but left out of the memory batch.
SLOW_PATHS = {LOGIN, USERS + "CreateUser", USERS + "ResetPassword"}

ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ALREADY_EXISTS,
}
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
KEY_CHARS = string.ascii_lowercase + string.digits + "-_."
RESERVED_KEYS = {"te", "content-type", "user-agent", "host", "connection", "upgrade",
                 "transfer-encoding", "keep-alive", "proxy-connection", "authorization",
                 "x-request-id", "traceparent"}
REPOSITORY = Path(__file__).resolve().parents[2]  # where tests.plugins.crashy imports from
STREAM_READ_LIMIT = 20
# Memory: warm up with WARM_UP_CALLS (the gateway's caches, pools and allocator arenas fill:
# measured here, RSS grows about 0.25 KiB a call over the first 10,000 calls), then measure
# MEASURED_CALLS more. Measured on this machine, a healthy gateway then grows 0.5-0.6 MiB
# (about 0.13 KiB a call); with a 1 KiB-a-call leak put in the gateway, 4.2 MiB (1,076 B a
# call). The limit, 512 B a call (4,000 x 512 B = 2 MiB), sits between: about 3.5 times the
# healthy growth, and half of what a 1 KiB leak adds (1 KiB x 4,000 = 4 MiB).
WARM_UP_CALLS = 10_000
MEASURED_CALLS = 4_000
RSS_GROWTH_LIMIT = MEASURED_CALLS * 512


@dataclass(frozen=True)
class Call:
    path: str
    payload: bytes
    authorization: str | None
    """``token:<scheme>:<kind>`` for a token from ``Tokens.fixed``, else the literal value"""
    request_id: str | None
    traceparent: str | None
    extra: tuple[tuple[str, str | bytes], ...]
    timeout: float

    @property
    def crash(self) -> bool:
        """Whether the engine is asked to crash (the one call that may end INTERNAL)."""
        if self.path != ECHO:
            return False
        try:
            return echo_pb2.EchoRequest.FromString(self.payload).payload == crashy.CRASH
        except Exception:
            return False


class Tokens:
    """Tokens of every kind the fuzzer sends, issued with the gateway's own key."""

    def __init__(self, mesh, admin: str, viewer: str, checker: str) -> None:
        service: TokenService | None = mesh.gateway.guard.tokens
        assert service is not None
        self._service = service
        self._users = {"admin": admin, "viewer": viewer}
        self.fixed = {
            "admin": self._issue("admin"),
            "viewer": self._issue("viewer"),
            "checker": self._service.issue(checker, "viewer")[0],
            "refresh": self._issue("admin", kind=REFRESH),
            "expired": self._issue("admin", now=time.time() - 10_000, ttl_s=60),
            "unknown-user": self._service.issue("nobody-at-all", "admin")[0],
            "unknown-role": self._service.issue(admin, "overlord")[0],
            "alg-none": jwt.encode({"sub": admin, "role": "admin", "typ": ACCESS},
                                   "", algorithm="none"),
            "foreign": jwt.encode({"sub": admin, "role": "admin", "typ": ACCESS, "exp":
                                   int(time.time()) + 600}, "x" * 32, algorithm="HS256",
                                  headers={"kid": "foreign"}),
        }
        token = self.fixed["admin"]
        middle = len(token) // 2
        self.fixed["tampered"] = (token[:middle] + ("A" if token[middle] != "A" else "B")
                                  + token[middle + 1:])

    def _issue(self, role: str, kind: str = ACCESS, **kwargs) -> str:
        return self._service.issue(self._users[role], role, kind, **kwargs)[0]

    def value(self, call: Call) -> str | None:
        text = call.authorization
        if text is None or not text.startswith("token:"):
            return text
        scheme, kind = text[len("token:"):].split(":", 1)
        if call.path == LOGOUT and kind in ("admin", "viewer"):
            token = self._issue(kind)  # signing out revokes it: never a token others use
        else:
            token = self.fixed[kind]
        return f"{scheme} {token}"


def _paths() -> st.SearchStrategy[str]:
    known = st.sampled_from([*KNOWN_PATHS, *UNKNOWN_PATHS])
    made_up = st.builds(lambda a, b: f"/{a}/{b}", st.text(KEY_CHARS + "ABCXYZ", max_size=30),
                        st.text(KEY_CHARS + "ABCXYZ", max_size=20))
    return st.integers(0, 4).flatmap(lambda i: known if i < 4 else made_up)


_names = st.one_of(st.sampled_from(["", "admin", "nobody", "x" * 65, "a b", "ünï"]),
                   st.text(max_size=20))
_valid_forms = {
    ECHO: st.builds(echo_pb2.EchoRequest,
                    payload=st.one_of(st.binary(max_size=64), st.just(crashy.CRASH),
                                      st.just(crashy.INVALID)),
                    delay_ms=st.one_of(st.just(0), st.integers(0, 20), st.just(10**6))),
    COUNT: st.builds(echo_pb2.CountRequest, count=st.integers(0, 30),
                     interval_ms=st.integers(0, 3)),
    LOGIN: st.builds(auth_pb2.LoginRequest, username=_names, password=st.text(max_size=20)),
    USERS + "CreateUser": st.builds(auth_pb2.CreateUserRequest, username=_names,
                                    role=st.sampled_from([auth_pb2.ROLE_VIEWER, auth_pb2.ROLE_ADMIN,
                                                          auth_pb2.ROLE_UNSPECIFIED, 42]),
                                    password=st.text(max_size=12)),
    USERS + "SetRole": st.builds(auth_pb2.SetRoleRequest, username=_names,
                                 role=st.sampled_from([auth_pb2.ROLE_VIEWER,
                                                       auth_pb2.ROLE_UNSPECIFIED, 42])),
    USERS + "DisableUser": st.builds(auth_pb2.DisableUserRequest, username=_names,
                                     disabled=st.booleans()),
    USERS + "DeleteUser": st.builds(auth_pb2.DeleteUserRequest, username=_names),
}


@st.composite
def _payloads(draw, path: str) -> bytes:
    form = _valid_forms.get(path)
    if form is not None and draw(st.integers(0, 2)):  # mostly well-formed
        return bytes(draw(form).SerializeToString())
    return bytes(draw(st.one_of(st.just(b""), st.binary(max_size=256))))


_good_tokens = st.builds(lambda kind: f"token:Bearer:{kind}",
                         st.sampled_from(["admin", "admin", "viewer"]))
_bad_authorizations = st.one_of(
    st.none(),
    st.builds(lambda scheme, kind: f"token:{scheme}:{kind}",
              st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Bearer "]),
              st.sampled_from(["admin", "viewer", "refresh", "expired", "unknown-user",
                               "unknown-role", "alg-none", "foreign", "tampered"])),
    st.text(PRINTABLE, max_size=80),
    st.builds(lambda text: "Bearer " + text, st.text(PRINTABLE, max_size=300)),
)
# most calls get past the guard, to reach the services behind it
_authorizations = st.integers(0, 9).flatmap(
    lambda i: _good_tokens if i < 6 else _bad_authorizations)
_traceparents = st.one_of(
    st.none(),
    st.text(PRINTABLE, max_size=80),
    st.builds(lambda t, s: f"00-{t:032x}-{s:016x}-01", st.integers(0, 2**128 - 1),
              st.integers(0, 2**64 - 1)),
)
_extra_metadata = st.lists(st.one_of(
    st.tuples(st.text(KEY_CHARS, min_size=1, max_size=20).filter(
        lambda k: not k.startswith("grpc-") and not k.endswith("-bin")
        and k not in RESERVED_KEYS), st.text(PRINTABLE, max_size=60)),
    st.tuples(st.text(KEY_CHARS, min_size=1, max_size=16).filter(
        lambda k: not k.startswith("grpc-")).map(lambda k: k + "-bin"), st.binary(max_size=40)),
), max_size=4)


@st.composite
def calls(draw) -> Call:
    path = draw(_paths())
    return Call(
        path=path,
        payload=draw(_payloads(path)),
        authorization=draw(_authorizations),
        request_id=draw(st.one_of(st.none(), st.text(PRINTABLE, max_size=200))),
        traceparent=draw(_traceparents),
        extra=tuple(draw(_extra_metadata)),
        timeout=draw(st.sampled_from([2.0, 2.0, 2.0, 0.5, 0.05, 0.001])),
    )


def send(channel: grpc.Channel, tokens: Tokens, call: Call) -> tuple[grpc.StatusCode, str]:
    """Make ``call``; its status (OK for a stream read in part and then cancelled) and the
    status message."""
    named = (("authorization", tokens.value(call)), ("x-request-id", call.request_id),
             ("traceparent", call.traceparent))
    metadata = (*call.extra, *((key, value) for key, value in named if value is not None))
    try:
        if call.path == COUNT:
            stream = channel.unary_stream(call.path, None, None)(
                call.payload, metadata=metadata, timeout=call.timeout)
            for index, _ in enumerate(stream):
                if index + 1 >= STREAM_READ_LIMIT:
                    stream.cancel()  # type: ignore[no-untyped-call]
                    return grpc.StatusCode.OK, ""
            return grpc.StatusCode.OK, ""
        channel.unary_unary(call.path, None, None)(call.payload, metadata=metadata,
                                                   timeout=call.timeout)
    except grpc.RpcError as exc:
        code, details = exc.code(), str(exc.details())  # type: ignore[attr-defined]
        if code == grpc.StatusCode.CANCELLED and call.path == COUNT:
            return grpc.StatusCode.OK, ""  # we cancelled it
        return code, details
    return grpc.StatusCode.OK, ""


def check(call: Call, outcome: tuple[grpc.StatusCode, str]) -> grpc.StatusCode:
    """The call's status, once it is one the call may end with."""
    code, details = outcome
    allowed = ALLOWED | ({grpc.StatusCode.INTERNAL} if call.crash else set())
    assert code in allowed, f"{call} ended {code.name}: {details}"
    return code


@pytest.fixture
async def nats_private(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


AUTH = {"enabled": True, "audit": {"enabled": True},
        "login": {"per_user": 3, "per_address": 3, "window_s": 600},
        # the admin rarely hits its limit (calls go on to the services); the viewer often
        "rate_limits": {"roles": {"admin": {"rate": 5000, "burst": 10000},
                                  "viewer": {"rate": 20, "burst": 40}}}}


def _environment(section: dict[str, Any], prefix: str = "REVO_AUTH") -> dict[str, str]:
    """``AUTH`` as the ``REVO_*`` variables a child process reads."""
    out: dict[str, str] = {}
    for key, value in section.items():
        name = f"{prefix}__{key.upper()}"
        if isinstance(value, dict):
            out.update(_environment(value, name))
        else:
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


@dataclass
class Fuzzed:
    target: str
    tokens: Tokens
    process: subprocess.Popen[bytes]
    log: Path

    def died(self) -> str:
        """'' while the gateway runs; else how it ended."""
        if self.process.poll() is None:
            return ""
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return f"the gateway exited with {self.process.returncode}:\n{tail}"


@pytest.fixture
async def fuzzed(nats_private, mesh_harness, tmp_path):
    """A ``revo gateway`` process with everything on, in front of a ``revo node`` process
    serving the crashy engine, with an admin, a viewer and a checker, and tokens of every
    kind. NATS is private: the fuzzer's failed sign-ins lock 127.0.0.1 out of signing in."""
    # The harness's own gateway only manages users and signs tokens (with the key in
    # REVO_HOME, which the processes share); the calls go to the processes.
    mesh = await mesh_harness(nodes=0, nats={"url": nats_private.url}, auth=AUTH)
    suffix = uuid.uuid4().hex[:8]
    admin, viewer = f"fuzz-admin-{suffix}", f"fuzz-viewer-{suffix}"
    checker = f"fuzz-checker-{suffix}"  # never fuzzed: its rate limit is all its own
    await mesh.gateway.guard.users.create(admin, "admin", "fuzz admin password")
    await mesh.gateway.guard.users.create(viewer, "viewer", "fuzz viewer password")
    await mesh.gateway.guard.users.create(checker, "viewer", "fuzz checker password")
    tokens = Tokens(mesh, admin, viewer, checker)

    target = f"127.0.0.1:{free_port()}"
    log = tmp_path / "gateway.log"
    # heartbeats of a second: a loaded machine must not make the node look gone
    common = {"REVO_NODE__HEARTBEAT_S": "1.0", **_environment(AUTH)}
    node = spawn_node(mesh.config, tmp_path / "node.log", extra_env={
        **common, "REVO_PLUGINS__ONLY": "crashy",
        "REVO_PLUGINS__EXTRA__CRASHY": "tests.plugins.crashy",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY),
                                                    os.environ.get("PYTHONPATH")]))})
    process = spawn_node(mesh.config, log, command="gateway", extra_env={
        **common, "REVO_GATEWAY__ADDRESS": target})
    fuzzed = Fuzzed(target, tokens, process, log)
    try:
        async def ready() -> bool:
            assert not fuzzed.died(), fuzzed.died()
            assert node.poll() is None, (tmp_path / "node.log").read_text()[-3000:]
            return await asyncio.to_thread(_answers, target, tokens)

        await wait_for(ready, 30, "the gateway process to serve the crashy engine")
        yield fuzzed
    finally:
        stop_node(process)
        stop_node(node)


def _normal_call(channel: grpc.Channel, tokens: Tokens) -> None:
    metadata = (("authorization", f"Bearer {tokens.fixed['checker']}"),)
    reply = channel.unary_unary(STATS, None, None)(
        echo_pb2.StatsRequest().SerializeToString(), metadata=metadata, timeout=10)
    echo_pb2.StatsResponse.FromString(reply)


def _answers(target: str, tokens: Tokens) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            _normal_call(channel, tokens)
        except grpc.RpcError:
            return False
    return True


def _settings(examples: int):
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


async def test_random_calls_end_with_known_statuses(fuzzed):
    seen: collections.Counter[str] = collections.Counter()

    def fuzz() -> None:
        with grpc.insecure_channel(fuzzed.target) as channel:
            @_settings(150)
            @given(call=calls())
            def one(call: Call) -> None:
                assert not fuzzed.died(), fuzzed.died()
                code = check(call, send(channel, fuzzed.tokens, call))
                seen[code.name] += 1

            one()
            _normal_call(channel, fuzzed.tokens)  # the gateway still answers

    await asyncio.to_thread(fuzz)
    print(f"fuzz statuses: {dict(seen)}")
    assert not fuzzed.died(), fuzzed.died()
    assert seen["OK"] > 0
    assert seen["UNAUTHENTICATED"] > 0


async def test_memory_stays_bounded_over_thousands_of_random_calls(fuzzed):
    pool: list[Call] = []

    @_settings(300)
    @given(call=calls())
    def collect(call: Call) -> None:
        if call.path not in SLOW_PATHS and not call.crash:
            pool.append(call)

    collect()
    assert len(pool) >= 100

    def batch(rng: random.Random, count: int) -> collections.Counter[str]:
        codes: collections.Counter[str] = collections.Counter()
        picked = [rng.choice(pool) for _ in range(count)]
        with grpc.insecure_channel(fuzzed.target) as channel, ThreadPoolExecutor(4) as workers:
            for call, outcome in zip(
                    picked, workers.map(lambda c: send(channel, fuzzed.tokens, c), picked),
                    strict=True):
                codes[check(call, outcome).name] += 1
            _normal_call(channel, fuzzed.tokens)
        return codes

    gateway = psutil.Process(fuzzed.process.pid)
    rng = random.Random(20260601)
    warm = await asyncio.to_thread(batch, rng, WARM_UP_CALLS)
    before = gateway.memory_info().rss
    measured = await asyncio.to_thread(batch, rng, MEASURED_CALLS)
    after = gateway.memory_info().rss
    print(f"warm-up statuses: {dict(warm)}; measured statuses: {dict(measured)}")
    print(f"gateway RSS before {before / 2**20:.2f} MiB, after {after / 2**20:.2f} MiB, "
          f"growth {(after - before) / 1024:.0f} KiB over {MEASURED_CALLS} calls")
    assert not fuzzed.died(), fuzzed.died()
    assert sum(measured.values()) == MEASURED_CALLS
    assert measured["OK"] > 0
    assert after - before < RSS_GROWTH_LIMIT, (
        f"the gateway grew {(after - before) / MEASURED_CALLS:.0f} B a call after warm-up")


@dataclass(frozen=True)
class StreamEnd:
    """How one stream that the client gave up on ended."""

    wanted: int
    """messages to read before cancelling; 0: read on until its (tiny) deadline"""
    received: int
    code: grpc.StatusCode


def _cancel_streams(target: str, tokens: Tokens, count: int) -> list[StreamEnd]:
    """Streams the client gives up on: every third cancelled after 1 to 7 messages (its
    deadline far off), the others left to run past a deadline of 10 ms or 2 ms."""
    metadata = (("authorization", f"Bearer {tokens.fixed['admin']}"),)
    # 100,000 messages a millisecond apart: no stream ends before the client gives up on it
    # (1,000 fast ones would all be produced, and buffered on the way, before a cancel)
    request = echo_pb2.CountRequest(count=100_000, interval_ms=1).SerializeToString()
    ends: list[StreamEnd] = []
    with grpc.insecure_channel(target) as channel:
        for i in range(count):
            wanted = i % 7 + 1 if i % 3 == 0 else 0
            stream = channel.unary_stream(COUNT, None, None)(
                request, metadata=metadata, timeout=(60.0, 0.01, 0.002)[i % 3])
            received = 0
            try:
                for _ in stream:
                    received += 1
                    if received == wanted:
                        stream.cancel()  # type: ignore[no-untyped-call]
                        break
            except grpc.RpcError:
                pass  # the stream's code is read below, whatever ended it
            ends.append(StreamEnd(wanted, received, stream.code()))  # type: ignore[attr-defined]
    return ends


def _streams_cancelled(target: str, tokens: Tokens) -> int:
    """How many streams the crashy engine saw its caller cancel."""
    metadata = (("authorization", f"Bearer {tokens.fixed['admin']}"),)
    with grpc.insecure_channel(target) as channel:
        reply = channel.unary_unary(ECHO, None, None)(
            echo_pb2.EchoRequest(payload=crashy.STREAMS_CANCELLED).SerializeToString(),
            metadata=metadata, timeout=10)
    return int(echo_pb2.EchoResponse.FromString(reply).payload)


async def test_clients_cancelling_streams_do_not_crash_the_gateway(fuzzed):
    assert await asyncio.to_thread(_streams_cancelled, fuzzed.target, fuzzed.tokens) == 0
    batches = await asyncio.gather(*(asyncio.to_thread(
        _cancel_streams, fuzzed.target, fuzzed.tokens, 300) for _ in range(4)))
    ends = [end for batch in batches for end in batch]
    assert not fuzzed.died(), fuzzed.died()
    cancelled = [end for end in ends if end.wanted]
    assert len(cancelled) == 400
    # each delivered the messages asked for, then ended cancelled
    assert [(e.received, e.code) for e in cancelled] == [
        (e.wanted, grpc.StatusCode.CANCELLED) for e in cancelled]
    for end in ends:
        if not end.wanted:
            check(Call(COUNT, b"", None, None, None, (), 0.01), (end.code, ""))
    # the cancels crossed the gateway: the engine saw at least the 400 stop before their
    # deadline (streams past a 10 ms deadline may be cancelled there too)
    async def engine_saw_them() -> bool:
        seen = await asyncio.to_thread(_streams_cancelled, fuzzed.target, fuzzed.tokens)
        assert seen <= len(ends)
        return seen >= len(cancelled)

    await wait_for(engine_saw_them, 30, "the engine to see the 400 streams cancelled")
    assert await asyncio.to_thread(_answers, fuzzed.target, fuzzed.tokens)
