"""mesh.testing.llm.FakeLLMServer, driven through the real openai and anthropic SDKs."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from mesh.testing import llm as testing_llm
from mesh.testing import wait_for
from mesh.testing.llm import (
    FakeLLMServer,
    answer,
    fail_after,
    hang,
    malformed,
    split_tokens,
    status,
)

KEY = "sk-test-key"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three primes please"},
]
ANTHROPIC_MESSAGES: list[Any] = [{"role": "user", "content": "Name three primes please"}]
REPLY = "Two, three and five."


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def oai(server: FakeLLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=KEY, max_retries=0,
                                timeout=5)
    yield client
    await client.close()


@pytest.fixture
async def claude(server: FakeLLMServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key=KEY, max_retries=0,
                                      timeout=5)
    yield client
    await client.close()


async def ask_openai(client: openai.AsyncOpenAI) -> Any:
    return await client.chat.completions.create(model="gpt-test", messages=MESSAGES)


async def ask_claude(client: anthropic.AsyncAnthropic) -> Any:
    return await client.messages.create(model="claude-test", max_tokens=64, system="Be terse.",
                                        messages=ANTHROPIC_MESSAGES)


async def openai_deltas(client: openai.AsyncOpenAI, into: list[str]) -> None:
    """Stream a chat completion, appending each text delta to ``into`` as it arrives."""
    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES,
                                                  stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            into.append(chunk.choices[0].delta.content)


async def anthropic_deltas(client: anthropic.AsyncAnthropic, into: list[str]) -> None:
    """Stream a message (raw events), appending each text delta to ``into`` as it arrives."""
    stream = await client.messages.create(model="claude-test", max_tokens=64, stream=True,
                                          messages=ANTHROPIC_MESSAGES)
    async for event in stream:
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            into.append(event.delta.text)


# answers and accounting


async def test_openai_answer_reports_deterministic_usage(
        server: FakeLLMServer, oai: openai.AsyncOpenAI) -> None:
    server.script(answer(REPLY, cached_tokens=2))

    reply = await ask_openai(oai)

    assert reply.choices[0].message.content == REPLY
    assert reply.model == "gpt-test"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (7, 4)  # 3+4 words
    assert reply.usage.total_tokens == 11
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 2
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.body["messages"] == MESSAGES
    assert "authorization" not in request.headers


async def test_openai_stream_reassembles_text_and_sends_usage_last(
        server: FakeLLMServer, oai: openai.AsyncOpenAI) -> None:
    server.script(answer(REPLY, prompt_tokens=100, completion_tokens=9))

    stream = await oai.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]

    deltas = [c.choices[0].delta.content for c in chunks
              if c.choices and c.choices[0].delta.content]
    assert deltas == split_tokens(REPLY) == ["Two, ", "three ", "and ", "five."]
    assert "".join(deltas) == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (100, 9, 109)


async def test_a_paced_stream_spaces_its_deltas_in_both_apis(
        server: FakeLLMServer, oai: openai.AsyncOpenAI,
        claude: anthropic.AsyncAnthropic) -> None:
    interval = 0.05
    server.script(answer(REPLY, interval_s=interval), answer(REPLY, interval_s=interval))

    async def arrivals(events: AsyncIterator[Any], text_of: Any) -> list[float]:
        started, times = time.monotonic(), []
        async for event in events:
            if text_of(event):
                times.append(time.monotonic() - started)
        return times

    openai_stream = await oai.chat.completions.create(model="gpt-test", messages=MESSAGES,
                                                      stream=True)
    openai_times = await arrivals(openai_stream,
                                  lambda c: c.choices and c.choices[0].delta.content)
    anthropic_stream = await claude.messages.create(
        model="claude-test", max_tokens=64, stream=True, messages=ANTHROPIC_MESSAGES)
    anthropic_times = await arrivals(anthropic_stream,
                                     lambda e: e.type == "content_block_delta")
    for times in (openai_times, anthropic_times):
        assert len(times) == len(split_tokens(REPLY)) == 4
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # each delta waits for its turn (never early); loose above, for a busy machine
        assert all(gap >= interval * 0.8 for gap in gaps), gaps
        assert times[-1] < interval * 4 + 1.0


async def test_openai_stream_without_include_usage_has_no_usage(
        oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)

    n_chunks = len(split_tokens(testing_llm.DEFAULT_TEXT)) + 2  # with the role and stop chunks
    assert [chunk.usage async for chunk in stream] == [None] * n_chunks


async def test_openai_embeddings_are_deterministic(
        server: FakeLLMServer, oai: openai.AsyncOpenAI) -> None:
    first = await oai.embeddings.create(model="embed-test", input=["red apple", "pear"])
    again = await oai.embeddings.create(model="embed-test", input="red apple")

    assert [d.index for d in first.data] == [0, 1]
    assert first.data[0].embedding == again.data[0].embedding != first.data[1].embedding
    assert first.usage.prompt_tokens == 3


async def test_anthropic_answer_reports_deterministic_usage(
        server: FakeLLMServer, claude: anthropic.AsyncAnthropic) -> None:
    server.script(answer(REPLY, cached_tokens=5))

    reply = await ask_claude(claude)

    assert [block.text for block in reply.content if block.type == "text"] == [REPLY]
    assert reply.stop_reason == "end_turn"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (6, 4)  # 2 system + 4 user
    assert reply.usage.cache_read_input_tokens == 5
    [request] = server.requests
    assert request.path == "/v1/messages"
    assert request.body["system"] == "Be terse."
    assert "x-api-key" not in request.headers
    assert "authorization" not in request.headers


async def test_anthropic_stream_sends_the_real_event_sequence(
        server: FakeLLMServer, claude: anthropic.AsyncAnthropic) -> None:
    server.script(answer(REPLY))

    stream = await claude.messages.create(model="claude-test", max_tokens=64, stream=True,
                                          messages=ANTHROPIC_MESSAGES)
    events = [event async for event in stream]

    assert [e.type for e in events] == [
        "message_start", "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop", "message_delta", "message_stop"]
    text = "".join(e.delta.text for e in events
                   if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == REPLY
    start, delta = events[0], events[-2]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == 4
    assert delta.type == "message_delta"
    assert (delta.usage.output_tokens, delta.delta.stop_reason) == (4, "end_turn")


async def test_anthropic_stream_helper_builds_the_final_message(
        server: FakeLLMServer, claude: anthropic.AsyncAnthropic) -> None:
    server.script(answer(REPLY, prompt_tokens=40, completion_tokens=12))

    async with claude.messages.stream(model="claude-test", max_tokens=64,
                                      messages=ANTHROPIC_MESSAGES) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()

    assert text == REPLY
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 12)


# failures


async def test_openai_429_is_a_rate_limit_error_with_retry_after(
        server: FakeLLMServer, oai: openai.AsyncOpenAI) -> None:
    server.script(status(429, retry_after=7))

    with pytest.raises(openai.RateLimitError) as caught:
        await ask_openai(oai)

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


async def test_anthropic_429_is_a_rate_limit_error_with_retry_after(
        server: FakeLLMServer, claude: anthropic.AsyncAnthropic) -> None:
    server.script(status(429, retry_after=7))

    with pytest.raises(anthropic.RateLimitError) as caught:
        await ask_claude(claude)

    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "fake 429: Too Many Requests"}}


async def test_500_is_an_internal_server_error_in_both_sdks(
        server: FakeLLMServer, oai: openai.AsyncOpenAI,
        claude: anthropic.AsyncAnthropic) -> None:
    server.script(status(500), status(500), status(503))

    with pytest.raises(openai.InternalServerError):
        await ask_openai(oai)
    with pytest.raises(anthropic.InternalServerError):
        await ask_claude(claude)
    with pytest.raises(anthropic.ServiceUnavailableError):  # a subclass, for 503 only
        await ask_claude(claude)


async def test_custom_error_body_is_sent_as_given(
        server: FakeLLMServer, oai: openai.AsyncOpenAI) -> None:
    server.script(status(400, body={"error": {"message": "context too long", "type": "x",
                                              "code": "context_length_exceeded"}}))

    with pytest.raises(openai.BadRequestError) as caught:
        await ask_openai(oai)

    assert caught.value.code == "context_length_exceeded"


async def test_hang_times_out_the_client_and_stop_frees_the_handler(
        server: FakeLLMServer) -> None:
    server.script(hang(30), hang(30))
    oai = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=KEY, max_retries=0,
                             timeout=0.3)
    claude = anthropic.AsyncAnthropic(base_url=server.base_url, api_key=KEY, max_retries=0,
                                      timeout=0.3)

    with pytest.raises(openai.APITimeoutError):
        await ask_openai(oai)
    with pytest.raises(anthropic.APITimeoutError):
        await ask_claude(claude)
    await oai.close()
    await claude.close()

    # a request still held when the server stops is ended by stop(): the client sees the
    # connection close (left alone, the hang would answer it after 30 s)
    server.script(hang(30))
    patient = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=KEY,
                                 max_retries=0, timeout=60)
    try:
        asking = asyncio.ensure_future(ask_openai(patient))
        await wait_for(lambda: len(server.requests) == 3, 10, "the third request")
        await asyncio.to_thread(server.stop)
        with pytest.raises(openai.APIConnectionError):
            await asking
    finally:
        await patient.close()


async def test_hang_shorter_than_the_timeout_still_answers(
        server: FakeLLMServer, oai: openai.AsyncOpenAI) -> None:
    server.script(hang(0.2, text="late"))

    reply = await ask_openai(oai)

    assert reply.choices[0].message.content == "late"


async def test_hang_until_an_event_answers_once_it_is_set(server: FakeLLMServer) -> None:
    release = threading.Event()
    server.script(hang(30, text="released", until=release))
    oai = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=KEY, max_retries=0,
                             timeout=20)
    try:
        asking = asyncio.ensure_future(ask_openai(oai))
        await wait_for(lambda: len(server.requests) == 1, 10, "the request to arrive")
        assert not asking.done()  # held until released, well short of its 30 s
        release.set()
        reply = await asking
    finally:
        await oai.close()
    assert reply.choices[0].message.content == "released"
    assert server.hung_up == 0


async def test_malformed_bodies_surface_as_json_decode_errors(
        server: FakeLLMServer, oai: openai.AsyncOpenAI,
        claude: anthropic.AsyncAnthropic) -> None:
    server.script(*[malformed()] * 4)

    with pytest.raises(json.JSONDecodeError):
        await ask_openai(oai)
    with pytest.raises(json.JSONDecodeError):
        await ask_claude(claude)
    with pytest.raises(json.JSONDecodeError):
        await openai_deltas(oai, [])
    with pytest.raises(json.JSONDecodeError):
        await anthropic_deltas(claude, [])


async def test_openai_stream_fails_after_three_deltas(
        server: FakeLLMServer, oai: openai.AsyncOpenAI) -> None:
    server.script(fail_after(3, "one two three four five"))
    deltas: list[str] = []

    with pytest.raises(openai.APIConnectionError):
        await openai_deltas(oai, deltas)

    assert deltas == ["one ", "two ", "three "]


async def test_anthropic_stream_fails_after_three_deltas(
        server: FakeLLMServer, claude: anthropic.AsyncAnthropic) -> None:
    server.script(fail_after(3, "one two three four five"))
    deltas: list[str] = []

    # anthropic 2.12 lets the transport's error through unwrapped once the stream has begun
    with pytest.raises(httpx2.RemoteProtocolError):
        await anthropic_deltas(claude, deltas)

    assert deltas == ["one ", "two ", "three "]


async def test_fail_after_cuts_a_non_streaming_body(
        server: FakeLLMServer, oai: openai.AsyncOpenAI) -> None:
    server.script(fail_after(0))

    with pytest.raises(openai.APIConnectionError):
        await ask_openai(oai)


async def test_wrong_key_is_refused_without_consuming_the_script(
        server: FakeLLMServer) -> None:
    server.script(answer("kept"))
    oai = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="wrong", max_retries=0)
    claude = anthropic.AsyncAnthropic(base_url=server.base_url, api_key="wrong", max_retries=0)

    with pytest.raises(openai.AuthenticationError):
        await ask_openai(oai)
    with pytest.raises(anthropic.AuthenticationError):
        await ask_claude(claude)
    await oai.close()
    await claude.close()

    assert server.pending == 1
    assert len(server.requests) == 2


async def test_scripted_behaviours_are_consumed_in_order_then_default(
        server: FakeLLMServer, oai: openai.AsyncOpenAI) -> None:
    server.script(status(429), answer("second"))

    with pytest.raises(openai.RateLimitError):
        await ask_openai(oai)
    second = await ask_openai(oai)
    third = await ask_openai(oai)

    assert second.choices[0].message.content == "second"
    assert third.choices[0].message.content == testing_llm.DEFAULT_TEXT
    assert server.pending == 0


async def test_a_responder_chooses_by_body_and_leaves_the_rest_to_the_script(
        server: FakeLLMServer, oai: openai.AsyncOpenAI) -> None:
    server.respond_with(lambda body: answer("for gpt-a") if body["model"] == "gpt-a" else None)
    server.script(answer("scripted"))

    other = await oai.chat.completions.create(model="gpt-b", messages=MESSAGES)
    chosen = await oai.chat.completions.create(model="gpt-a", messages=MESSAGES)
    default = await oai.chat.completions.create(model="gpt-b", messages=MESSAGES)

    assert other.choices[0].message.content == "scripted"
    assert chosen.choices[0].message.content == "for gpt-a"
    assert default.choices[0].message.content == testing_llm.DEFAULT_TEXT


async def test_replies_say_when_the_text_was_written_and_whether_all_of_it_was() -> None:
    seen: list[testing_llm.Reply] = []
    with FakeLLMServer(api_key=KEY, on_reply=seen.append) as fake:
        client = openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key=KEY,
                                    max_retries=0, timeout=5)
        fake.script(answer("one two three"), status(500), fail_after(2, "one two three"),
                    answer("one two three four", interval_s=0.2))
        await openai_deltas(client, [])
        with pytest.raises(openai.InternalServerError):
            await openai_deltas(client, [])
        with pytest.raises(openai.APIConnectionError):
            await openai_deltas(client, [])
        stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES,
                                                      stream=True)
        async for _ in stream:  # the role chunk, then the first word
            break
        await stream.close()  # hangs up 0.2 s before the second word
        await wait_for(lambda: len(fake.replies) == 4, 10, "four replies")
        await client.close()
    whole, error, cut, left = fake.replies
    assert seen == fake.replies
    assert whole.complete
    assert whole.text_done is not None
    assert whole.started <= whole.text_done <= whole.ended
    assert error.complete
    assert error.text_done is None
    assert not cut.complete
    assert cut.text_done is None
    assert not left.complete
    assert left.text_done is None
    assert whole.path == "/v1/chat/completions"


# the module itself


def test_split_tokens_round_trips() -> None:
    for text in ["", "   ", "one", "  lead and trail  ", "tab\tand\nnewline"]:
        assert "".join(split_tokens(text)) == text
    assert split_tokens("a  b") == ["a  ", "b"]


def test_all_is_exactly_the_public_surface() -> None:
    defined = {name for name, obj in vars(testing_llm).items()
               if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
               and obj.__module__ == testing_llm.__name__}

    assert set(testing_llm.__all__) == defined
    assert testing_llm.__all__ == sorted(testing_llm.__all__)
