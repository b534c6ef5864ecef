"""A fake OpenAI- and Anthropic-compatible model API on loopback, for tests that drive real SDKs.

Stdlib only, so plugin authors' tests can use it without the mesh running::

    from mesh.testing.llm import FakeLLMServer, answer, status

    async def test_summary_counts_tokens():
        with FakeLLMServer(api_key="k") as server:
            server.script(status(429, retry_after=1), answer("two words"))
            client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="k",
                                        max_retries=0)
            ...
            assert server.requests[0].body["model"] == "gpt-test"

Routes: ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` (OpenAI, ``Authorization:
Bearer KEY``) and ``POST /v1/messages`` (Anthropic, ``x-api-key: KEY`` or ``Authorization:
Bearer KEY``, which anthropic SDK 2.x sends). A wrong or missing key gets 401 before any
behaviour is consumed.

Each request takes the next :class:`Behaviour` from the script (:meth:`FakeLLMServer.script`),
or the server's ``default`` when the script is empty. Build behaviours with :func:`answer`,
:func:`call_tools` (tool calls, streamed as each API streams them: OpenAI's
``delta.tool_calls`` pieces, Anthropic's ``tool_use`` blocks with ``input_json_delta``),
:func:`json_answer`, :func:`status`, :func:`hang`, :func:`malformed` and
:func:`fail_after`. Where concurrent requests arrive in no fixed order, a *responder*
(:meth:`FakeLLMServer.respond_with`) chooses each request's behaviour from its body first
(for instance by a phrase of the system prompt), and the script answers what it leaves
(None).

Accounting is deterministic so that tests can assert exact numbers: a reply is split into
words (each word with the whitespace after it is one streamed delta), a tool call's
arguments into pieces of :data:`ARGUMENT_PIECE` characters (:func:`split_arguments`),
completion tokens are the number of text and argument deltas, and prompt tokens are the
whitespace-separated words in every message (and the Anthropic ``system`` prompt);
:func:`answer` can override both.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

__all__ = [
    "Behaviour",
    "FakeLLMServer",
    "RecordedRequest",
    "Reply",
    "ScriptedCall",
    "answer",
    "call_tools",
    "fail_after",
    "hang",
    "json_answer",
    "malformed",
    "split_arguments",
    "split_tokens",
    "status",
]

DEFAULT_TEXT = "Hello from the fake model."
MAX_HANG_S = 30.0  # a forgotten hang() must not outlive a test run's timeout
EMBEDDING_DIMENSIONS = 8
ARGUMENT_PIECE = 4
"""Characters per streamed piece of a tool call's arguments."""

BehaviourKind = Literal["answer", "status", "hang", "malformed", "fail_after"]


@dataclass(frozen=True)
class ScriptedCall:
    """One tool call of a scripted answer; ``id`` '' numbers it (``call_fake_N`` for
    OpenAI, ``toolu_fake_N`` for Anthropic)."""

    name: str
    arguments: Any = None
    """The arguments: a dict (sent as its JSON), a JSON text, or None for ``{}``."""
    id: str = ""

    @property
    def arguments_json(self) -> str:
        if self.arguments is None:
            return "{}"
        return self.arguments if isinstance(self.arguments, str) else json.dumps(
            self.arguments)


@dataclass(frozen=True)
class Behaviour:
    """What the server does with one request; build it with the functions below."""

    kind: BehaviourKind = "answer"
    text: str = DEFAULT_TEXT
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    status_code: int = 200
    body: Any = None  # a JSON value (or str, sent as is) replacing the default error body
    retry_after: float | None = None
    seconds: float = 0.0
    n_chunks: int = 0
    until: threading.Event | None = None  # a hang ends early once this is set
    interval_s: float = 0.0  # a stream's pace: seconds before each text delta
    calls: tuple[ScriptedCall, ...] = ()  # tool calls after the text


def answer(text: str = DEFAULT_TEXT, prompt_tokens: int | None = None,
           completion_tokens: int | None = None, cached_tokens: int = 0, *,
           interval_s: float = 0.0) -> Behaviour:
    """Reply with ``text``; token counts default to the deterministic ones (module docstring).

    A stream sends all its deltas at once unless ``interval_s`` paces it as a model
    generates: delta *k* (from 1) goes *k* x ``interval_s`` after the response headers."""
    return Behaviour("answer", text=text, prompt_tokens=prompt_tokens,
                     completion_tokens=completion_tokens, cached_tokens=cached_tokens,
                     interval_s=interval_s)


def call_tools(*calls: ScriptedCall | str, text: str = "") -> Behaviour:
    """Answer with tool calls (a bare name calls it with ``{}``), after ``text`` if any:
    finish reason ``tool_calls`` (OpenAI) or stop reason ``tool_use`` (Anthropic)."""
    scripted = tuple(c if isinstance(c, ScriptedCall) else ScriptedCall(c) for c in calls)
    return Behaviour("answer", text=text, calls=scripted)


def json_answer(value: Any) -> Behaviour:
    """Answer with ``value`` as JSON text, streamed like any text (what a model constrained
    to a JSON format sends)."""
    return answer(json.dumps(value))


def status(code: int, body: Any = None, retry_after: float | None = None) -> Behaviour:
    """Fail with HTTP ``code`` and an error body in the shape of the API called (or ``body``).

    ``retry_after`` (seconds) is sent as the ``retry-after`` header.
    """
    return Behaviour("status", status_code=code, body=body, retry_after=retry_after)


def hang(seconds: float, text: str = DEFAULT_TEXT, *,
         until: threading.Event | None = None) -> Behaviour:
    """Wait ``seconds`` (at most 30, cut short by :meth:`FakeLLMServer.stop`), then answer.

    With ``until``, answer as soon as that event is set: a test holds requests open until
    a condition of its own, not for a guessed time. A client that hangs up meanwhile is
    counted in :attr:`FakeLLMServer.hung_up`."""
    return Behaviour("hang", text=text, seconds=min(seconds, MAX_HANG_S), until=until)


def malformed() -> Behaviour:
    """Answer 200 with a body that is not JSON (non-streaming) or an SSE event that is not."""
    return Behaviour("malformed")


def fail_after(n_chunks: int, text: str = DEFAULT_TEXT) -> Behaviour:
    """Stream ``n_chunks`` text deltas of ``text``, then drop the connection mid-body.

    A non-streaming request gets half of its body before the drop.
    """
    return Behaviour("fail_after", text=text, n_chunks=n_chunks)


@dataclass(frozen=True)
class Reply:
    """How the server answered one request (:attr:`FakeLLMServer.replies`, and the
    server's ``on_reply``), recorded when it is done with the request. Times are
    ``time.monotonic()`` values."""

    behaviour: Behaviour
    path: str
    started: float
    """When the behaviour was chosen (the request was read)."""
    text_done: float | None
    """When the last piece of text was written (a stream's last delta, or the whole body);
    None when it never was (an error status, a drop or a hang-up before the end)."""
    ended: float
    """When the server was done with the request."""
    complete: bool
    """The whole response was written (a client may still leave before its trailing
    events: then ``text_done`` is set and ``complete`` is False)."""


Responder = Callable[[dict[str, Any]], "Behaviour | None"]
"""Chooses a request's behaviour from its parsed JSON body; None leaves it to the script."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; ``headers`` has lower-case names and no credentials."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, or None when it was absent or not JSON


def split_tokens(text: str) -> list[str]:
    """The deltas ``text`` streams as: each word with the whitespace after it.

    Leading whitespace joins the first delta, so ``"".join(split_tokens(t)) == t``.
    """
    pieces = re.findall(r"\S+\s*", text)
    if not pieces:
        return [text] if text else []
    lead = text[: len(text) - len(text.lstrip())]
    return [lead + pieces[0], *pieces[1:]]


def split_arguments(text: str) -> list[str]:
    """The pieces a tool call's arguments stream as: :data:`ARGUMENT_PIECE` characters each."""
    return [text[i:i + ARGUMENT_PIECE] for i in range(0, len(text), ARGUMENT_PIECE)]


def _deltas_before(is_delta: list[bool]) -> list[int]:
    """For each event, how many delta events come before it."""
    before, seen = [], 0
    for flag in is_delta:
        before.append(seen)
        seen += flag
    return before


def _count_words(value: Any) -> int:
    """Words in a message's content: a string, or a list of ``{"type": "text", ...}`` blocks."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(part.get("text", "")) for part in value
                   if isinstance(part, dict))
    return 0


def _prompt_words(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    words = sum(_count_words(m.get("content")) for m in messages if isinstance(m, dict))
    return words + _count_words(body.get("system"))


_OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                       403: "permission_denied", 404: "not_found", 429: "rate_limit_exceeded"}
_ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                          403: "permission_error", 404: "not_found_error",
                          413: "request_too_large", 429: "rate_limit_error",
                          503: "overloaded_error", 529: "overloaded_error"}


class FakeLLMServer:
    """An HTTP server on ``127.0.0.1`` (a free port) in a background thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``api_key=None`` accepts
    any key. Thread-safe: the SDK may call it from any event loop or thread.
    """

    def __init__(self, api_key: str | None = "test-key", *,
                 default: Behaviour | None = None,
                 on_reply: Callable[[Reply], None] | None = None) -> None:
        """``on_reply`` is called with each :class:`Reply` (in a handler thread) when the
        server is done with a request."""
        self.api_key = api_key
        self.default = default if default is not None else answer()
        self._on_reply = on_reply
        self._replies: list[Reply] = []
        self._script: deque[Behaviour] = deque()
        self._responder: Responder | None = None
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._connections: set[socket.socket] = set()
        self._hangups = 0
        self._httpd: _QuietHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> FakeLLMServer:
        """Bind a free loopback port and serve in a daemon thread; returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError("FakeLLMServer is already started")
        self._stopping.clear()
        httpd = _QuietHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-llm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging handlers and close open connections; idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # addresses

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the Anthropic SDK's ``base_url``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the OpenAI SDK's ``base_url``."""
        return f"{self.base_url}/v1"

    anthropic_base_url = base_url

    # script and records

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order (after any still queued)."""
        with self._lock:
            self._script.extend(behaviours)

    def respond_with(self, responder: Responder | None) -> None:
        """Choose each request's behaviour with ``responder(body)`` before the script is
        consulted; None (from it, or as ``responder``) falls back to the script. It runs in
        the server's handler threads, so it must be thread-safe."""
        with self._lock:
            self._responder = responder

    @property
    def pending(self) -> int:
        """How many scripted behaviours no request has consumed yet."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy), oldest first, 401s included."""
        with self._lock:
            return list(self._requests)

    @property
    def replies(self) -> list[Reply]:
        """How every request with a behaviour was answered so far (a copy), in the order
        the server finished them."""
        with self._lock:
            return list(self._replies)

    def _replied(self, reply: Reply) -> None:
        with self._lock:
            self._replies.append(reply)
        if self._on_reply is not None:
            self._on_reply(reply)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_behaviour(self, body: dict[str, Any]) -> Behaviour:
        with self._lock:
            responder = self._responder
        chosen = responder(body) if responder is not None else None
        if chosen is not None:
            return chosen
        with self._lock:
            return self._script.popleft() if self._script else self.default

    @property
    def hung_up(self) -> int:
        """Requests whose client closed the connection while a :func:`hang` held them."""
        with self._lock:
            return self._hangups

    def _hung_up(self) -> None:
        with self._lock:
            self._hangups += 1

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _next_id(self) -> int:
        return next(self._ids)


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a benchmark opens 64 connections at once (the default: 5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # peers hanging up is the point here
            super().handle_error(request, client_address)


class _DropConnection(Exception):
    """Raised inside a handler to end the connection without finishing the response."""


def _handler_for(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_FakeLLMHandler):
        fake = server

    return Handler


class _FakeLLMHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked streams, so a dropped connection is detectable
    timeout = 10  # idle keep-alive connections end on their own
    # TCP_NODELAY: without it a stream's second small write waits for the client's delayed
    # ACK (40 ms on Linux); no real API streams like that
    disable_nagle_algorithm = True
    fake: FakeLLMServer

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the client or stop() closed the socket first
        finally:
            self.fake._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read .requests; stderr noise helps nobody

    def do_GET(self) -> None:
        self._read_and_record()
        self._send_json(404, {"error": {"message": f"no route for GET {self.path}"}})

    def do_POST(self) -> None:
        body = self._read_and_record()
        path = self.path.split("?", 1)[0]
        try:
            if path == "/v1/chat/completions":
                self._serve(body, "openai", self._chat_completion)
            elif path == "/v1/embeddings":
                self._serve(body, "openai", self._embeddings)
            elif path == "/v1/messages":
                self._serve(body, "anthropic", self._message)
            else:
                self._send_json(404, {"error": {"message": f"no route for POST {path}"}})
        except (_DropConnection, ConnectionError, TimeoutError):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    # request plumbing

    def _read_and_record(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()
                   if k.lower() not in ("authorization", "x-api-key")}
        self.fake._record(RecordedRequest(self.command, self.path, headers, body))
        return body

    def _authorised(self, api: str) -> bool:
        expected = self.fake.api_key
        if expected is None:
            return True
        bearer = self.headers.get("authorization") == f"Bearer {expected}"
        if api == "openai":
            return bearer
        # the Anthropic API takes x-api-key; anthropic SDK 2.x sends the key as a bearer token
        return bearer or self.headers.get("x-api-key") == expected

    def _serve(self, body: Any, api: str,
               reply: Callable[[dict[str, Any], Behaviour], None]) -> None:
        if not self._authorised(api):
            self._send_error(api, 401, None, None)
            return
        if not isinstance(body, dict):
            self._send_error(api, 400, None, None)
            return
        behaviour = self.fake._next_behaviour(body)
        started, complete = time.monotonic(), False
        self._text_done: float | None = None
        try:
            if behaviour.kind == "status":
                self._send_error(api, behaviour.status_code, behaviour.body,
                                 behaviour.retry_after)
            else:
                if behaviour.kind == "hang":
                    self._hang(behaviour.seconds, behaviour.until)
                reply(body, behaviour)
            complete = True
        finally:
            self.fake._replied(Reply(behaviour, self.path.split("?", 1)[0], started,
                                     self._text_done, time.monotonic(), complete))

    def _hang(self, seconds: float, until: threading.Event | None) -> None:
        """Wait, unless the server stops, ``until`` is set or the client hangs up (counted
        in ``hung_up``)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self.fake._stopping.wait(min(remaining, 0.05)):
                raise _DropConnection
            if until is not None and until.is_set():
                return
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                self.fake._hung_up()
                raise _DropConnection

    def _pace(self, until: float) -> None:
        """Wait until ``time.monotonic()`` reaches ``until``; stop() ends the stream."""
        remaining = until - time.monotonic()
        if remaining > 0 and self.fake._stopping.wait(remaining):
            raise _DropConnection

    # responses

    def _send_json(self, code: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, api: str, code: int, body: Any, retry_after: float | None) -> None:
        extra = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
        if body is None:
            try:
                message = f"fake {code}: {HTTPStatus(code).phrase}"
            except ValueError:
                message = f"fake {code}"
            if api == "openai":
                kind = _OPENAI_ERROR_TYPES.get(code, "server_error")
                body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
            else:
                kind = _ANTHROPIC_ERROR_TYPES.get(code, "api_error")
                body = {"type": "error", "error": {"type": kind, "message": message}}
        self._send_json(code, body.encode() if isinstance(body, str) else body, extra)

    def _send_body(self, payload: Any, behaviour: Behaviour) -> None:
        """A non-streaming reply, broken as ``behaviour`` says."""
        if behaviour.kind == "malformed":
            self._send_json(200, b'{"id": "broken", "choices": [')
            return
        data = json.dumps(payload).encode()
        if behaviour.kind == "fail_after":
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            raise _DropConnection
        self._send_json(200, data)
        self._text_done = time.monotonic()

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _stream(self, events: list[bytes], deltas_before: list[int],
                behaviour: Behaviour) -> None:
        """Send SSE ``events``; ``deltas_before[i]`` is how many text deltas precede event i."""
        self._start_stream()
        started = time.monotonic()
        for index, (event, seen) in enumerate(zip(events, deltas_before, strict=True)):
            if behaviour.kind == "fail_after" and seen >= behaviour.n_chunks:
                raise _DropConnection
            if behaviour.interval_s > 0 and deltas_before[index + 1:index + 2] == [seen + 1]:
                self._pace(started + (seen + 1) * behaviour.interval_s)  # event is delta seen+1
            self._write_chunk(event)
            if self._text_done is None and deltas_before[index + 1:index + 2] in (
                    [], [deltas_before[-1]]):
                self._text_done = time.monotonic()  # no delta left after this event
        if behaviour.kind == "fail_after":
            raise _DropConnection  # fewer deltas than n_chunks: still drop before the end
        self._end_stream()

    # OpenAI

    def _chat_completion(self, body: dict[str, Any], behaviour: Behaviour) -> None:
        model = str(body.get("model", "fake-model"))
        ident = f"chatcmpl-fake-{self.fake._next_id()}"
        created = int(time.time())
        pieces = split_tokens(behaviour.text)
        calls = [(call.id or f"call_fake_{self.fake._next_id()}", call.name,
                  call.arguments_json) for call in behaviour.calls]
        arguments = [split_arguments(args) for _, _, args in calls]
        usage = _openai_usage(body, behaviour, len(pieces) + sum(map(len, arguments)))
        finish = "tool_calls" if calls else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant",
                                       "content": behaviour.text if behaviour.text or not calls
                                       else None, "refusal": None}
            if calls:
                message["tool_calls"] = [{"id": i, "type": "function",
                                          "function": {"name": n, "arguments": a}}
                                         for i, n, a in calls]
            self._send_body({
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish,
                             "logprobs": None}],
                "usage": usage,
            }, behaviour)
            return
        if behaviour.kind == "malformed":
            self._start_stream()
            self._write_chunk(b'data: {"id": "broken", "choices": [\n\n')
            self._end_stream()
            return

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                 "logprobs": None}]}

        chunks = [(chunk({"role": "assistant", "content": ""}, None), False)]
        chunks += [(chunk({"content": piece}, None), True) for piece in pieces]
        for index, ((call_id, name, _), parts) in enumerate(zip(calls, arguments, strict=True)):
            # as OpenAI streams a call: id, name and empty arguments first, then the pieces
            chunks.append((chunk({"tool_calls": [{
                "index": index, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": ""}}]}, None), False))
            chunks += [(chunk({"tool_calls": [{"index": index, "function": {
                "arguments": part}}]}, None), True) for part in parts]
        chunks.append((chunk({}, finish), False))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(({"id": ident, "object": "chat.completion.chunk",
                            "created": created, "model": model, "choices": [],
                            "usage": usage}, False))
        events = [b"data: %s\n\n" % json.dumps(c).encode() for c, _ in chunks]
        events.append(b"data: [DONE]\n\n")
        self._stream(events, _deltas_before([d for _, d in chunks] + [False]), behaviour)

    def _embeddings(self, body: dict[str, Any], behaviour: Behaviour) -> None:
        inputs = body.get("input", "")
        texts = [inputs] if isinstance(inputs, str) else [str(t) for t in inputs]
        tokens = behaviour.prompt_tokens
        if tokens is None:
            tokens = sum(len(t.split()) for t in texts)
        self._send_body({
            "object": "list", "model": str(body.get("model", "fake-embedding")),
            "data": [{"object": "embedding", "index": i, "embedding": _embedding(t)}
                     for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }, behaviour)

    # Anthropic

    def _message(self, body: dict[str, Any], behaviour: Behaviour) -> None:
        model = str(body.get("model", "fake-model"))
        ident = f"msg_fake_{self.fake._next_id()}"
        pieces = split_tokens(behaviour.text)
        calls = [(call.id or f"toolu_fake_{self.fake._next_id()}", call.name,
                  call.arguments_json) for call in behaviour.calls]
        arguments = [split_arguments(args) for _, _, args in calls]
        input_tokens = behaviour.prompt_tokens
        if input_tokens is None:
            input_tokens = _prompt_words(body)
        output_tokens = behaviour.completion_tokens
        if output_tokens is None:
            output_tokens = len(pieces) + sum(map(len, arguments))
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                 "cache_read_input_tokens": behaviour.cached_tokens,
                 "cache_creation_input_tokens": 0}
        text_blocks = [{"type": "text", "text": behaviour.text}] \
            if behaviour.text or not calls else []
        message: dict[str, Any] = {
            "id": ident, "type": "message", "role": "assistant", "model": model,
            "content": text_blocks + [{"type": "tool_use", "id": i, "name": n,
                                       "input": json.loads(a)} for i, n, a in calls],
            "stop_reason": "tool_use" if calls else "end_turn", "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            self._send_body(message, behaviour)
            return
        if behaviour.kind == "malformed":
            self._start_stream()
            self._write_chunk(b'event: message_start\ndata: {"type": "message_start", [\n\n')
            self._end_stream()
            return
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**usage, "output_tokens": 1}}
        sequence: list[tuple[str, dict[str, Any], bool]] = [
            ("message_start", {"type": "message_start", "message": start}, False)]
        block = 0
        if text_blocks:
            sequence.append(("content_block_start", {
                "type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}, False))
            sequence += [("content_block_delta",
                          {"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": piece}}, True)
                         for piece in pieces]
            sequence.append(("content_block_stop",
                             {"type": "content_block_stop", "index": 0}, False))
            block = 1
        for (call_id, name, _), parts in zip(calls, arguments, strict=True):
            # as Anthropic streams a tool_use block: empty input, an empty first
            # input_json_delta, then the pieces of the input's JSON
            sequence.append(("content_block_start", {
                "type": "content_block_start", "index": block,
                "content_block": {"type": "tool_use", "id": call_id, "name": name,
                                  "input": {}}}, False))
            sequence += [("content_block_delta", {
                "type": "content_block_delta", "index": block,
                "delta": {"type": "input_json_delta", "partial_json": part}}, bool(part))
                for part in ["", *parts]]
            sequence.append(("content_block_stop",
                             {"type": "content_block_stop", "index": block}, False))
            block += 1
        sequence += [
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": message["stop_reason"],
                                         "stop_sequence": None},
                               "usage": {"output_tokens": output_tokens}}, False),
            ("message_stop", {"type": "message_stop"}, False),
        ]
        events = [b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())
                  for name, data, _ in sequence]
        self._stream(events, _deltas_before([d for _, _, d in sequence]), behaviour)


def _openai_usage(body: dict[str, Any], behaviour: Behaviour, n_pieces: int) -> dict[str, Any]:
    prompt = behaviour.prompt_tokens
    if prompt is None:
        prompt = _prompt_words(body)
    completion = behaviour.completion_tokens
    if completion is None:
        completion = n_pieces
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": behaviour.cached_tokens}}


def _embedding(text: str) -> list[float]:
    """A deterministic unit-free vector: the same text always embeds the same."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0, 6) for b in digest[:EMBEDDING_DIMENSIONS]]

