"""``revo mcp`` driven by the official ``mcp`` client library, over stdio and streamable HTTP,
in front of a real mesh: gateway with auth, a node with Perfect Recall (embeddings from a
real Triton embedder), Parallel Mind and ModelService (a scripted OpenAI-compatible model)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from mesh.embedded.processes import spawn, stop_process
from mesh.embedded.triton import TritonServer
from mesh.testing import MeshHarness, wait_for
from mesh.testing.llm import FakeLLMServer, answer
from mesh.v1 import auth_pb2, auth_pb2_grpc
from tests.integration.recall_support import collection
from tests.integration.test_auth import AUTH, add_user, bearer, login, remove_users_since

KEY = "sk-mcp-test"
KEY_ENV = "REVO_TEST_MCP_MODEL_KEY"
PLUGINS = {"only": ["recall", "parallel", "models", "guarded"],
           "extra": {"guarded": "tests.plugins.guarded"}}  # its test.progress task type
TOOLS = {"remember", "search", "list_memories", "forget", "submit_task", "watch_task",
         "get_task", "cancel_task", "generate"}
URL_LINE = "revo mcp: streamable HTTP at "


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeLLMServer(api_key=KEY) as server:
        yield server


@pytest.fixture
async def mesh(mesh_harness: Any, triton: TritonServer,
               fake: FakeLLMServer) -> AsyncIterator[MeshHarness]:
    since = time.time()
    catalog = [{"name": "cheap", "provider": "openai", "base_url": fake.openai_base_url,
                "api_key_env": KEY_ENV, "priority": 1, "input_usd_per_million": 1.0,
                "output_usd_per_million": 2.0, "context_window": 16000}]
    harness: MeshHarness = await mesh_harness(
        plugins=PLUGINS, auth=AUTH,
        models={"triton_url": triton.grpc_url, "catalog": catalog, "retries": 0,
                "timeout_s": 10.0},
        engines={"recall": {"collection": collection()},
                 "parallel": {"workers_min": 2, "retry_delay_s": 0.05}})
    pool: Any = harness.nodes[0].pools["recall"]
    await wait_for(lambda: pool.engine.replica.index is not None, 30, "the memory index loaded")
    yield harness
    await remove_users_since(harness, since)


async def api_key(mesh: MeshHarness, role: str = "developer") -> tuple[str, str]:
    """A new user of ``role`` and an API key of theirs (``UserService.CreateApiKey``)."""
    user = await add_user(mesh, role)
    token = (await login(mesh.channel, user)).access_token
    created = await auth_pb2_grpc.UserServiceStub(mesh.channel).CreateApiKey(
        auth_pb2.CreateApiKeyRequest(name="mcp"), metadata=bearer(token), timeout=10)
    assert created.secret.startswith("revo_")
    return user, created.secret


def stdio(mesh: MeshHarness, key: str, cwd: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "mesh", "mcp", "--gateway", mesh.target],
        env={"REVO_API_KEY": key, "REVO_HOME": str(mesh.config.home)}, cwd=cwd)


async def serve_http(mesh: MeshHarness, log: Path,
                     key: str = "") -> tuple[subprocess.Popen[bytes], str]:
    """``revo mcp --transport http`` on a free loopback port; the process and its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVO_")}
    env.update({"REVO_HOME": str(mesh.config.home), **({"REVO_API_KEY": key} if key else {})})
    process = spawn([sys.executable, "-m", "mesh", "mcp", "--transport", "http",
                     "--address", "127.0.0.1:0", "--gateway", mesh.target],
                    log_file=log, env=env)

    def url() -> str:
        if process.poll() is not None:
            raise AssertionError(f"revo mcp exited {process.returncode}: {log.read_text()}")
        found = [line for line in log.read_text().splitlines() if line.startswith(URL_LINE)]
        return found[0].removeprefix(URL_LINE).split()[0] if found else ""

    await wait_for(lambda: bool(url()), 30, "revo mcp's URL")
    return process, url()


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    structured: dict[str, Any] | None = result.structured_content
    assert structured is not None
    return structured


async def failure(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


async def memories_round_trip(client: Client, user: str) -> None:
    fact = "The staging database is Postgres 16 on port 5433."
    stored = await call(client, "remember", text=fact, tags=["infra", "db"],
                        metadata={"team": "core"})
    assert stored["outcome"] == "stored"
    await call(client, "remember", text="Deploys to production happen every Tuesday.")
    found = await call(client, "search", query="which port does the staging DB use?",
                       top_k=2)
    best = found["matches"][0]
    assert (best["id"], best["text"], best["tags"]) == (stored["id"], fact, ["infra", "db"])
    assert best["metadata"] == {"team": "core"}
    assert best["owner"] == user  # the key's owner, as the gateway saw it
    assert best["score"] > found["matches"][1]["score"]
    first = await call(client, "list_memories", page_size=1)  # oldest first, a page at a time
    assert [m["id"] for m in first["memories"]] == [stored["id"]]
    second = await call(client, "list_memories", page_size=1,
                        page_token=first["next_page_token"])
    assert [m["text"] for m in second["memories"]] == [
        "Deploys to production happen every Tuesday."]
    assert not second["next_page_token"]
    assert (await call(client, "forget", ids=[stored["id"]]))["forgotten"] == 1
    after = await call(client, "search", query="which port does the staging DB use?")
    assert stored["id"] not in [m["id"] for m in after["matches"]]


async def task_to_completion(client: Client) -> None:
    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    task = await call(client, "submit_task", type="test.progress")
    assert (task["state"], task["finished"]) == ("queued", False)
    result = await client.call_tool("watch_task", {"task_id": task["id"], "timeout_s": 30},
                                    progress_callback=on_progress)
    assert not result.is_error, result.content
    watched = result.structured_content
    assert watched is not None
    assert (watched["id"], watched["state"], watched["finished"], watched["result"]) == (
        task["id"], "succeeded", True, "done")
    assert reports
    assert all(0 < done <= 1 and total == 1.0 for done, total, _ in reports)
    assert [done for done, _, _ in reports] == sorted({done for done, _, _ in reports})
    assert all(message and message.startswith("step ") for _, _, message in reports)
    got = await call(client, "get_task", task_id=task["id"])
    assert (got["state"], got["result"]) == ("succeeded", "done")


async def watch_times_out_then_cancel(client: Client) -> None:
    task = await call(client, "submit_task", type="sleep", payload="30000")
    watched = await call(client, "watch_task", task_id=task["id"], timeout_s=0.5)
    assert watched["finished"] is False
    assert watched["state"] in ("queued", "running")
    cancelled = await call(client, "cancel_task", task_id=task["id"])
    assert (cancelled["state"], cancelled["finished"]) == ("cancelled", True)


async def test_tools_over_stdio_act_as_the_keys_owner(
        mesh: MeshHarness, fake: FakeLLMServer, tmp_path: Path) -> None:
    user, key = await api_key(mesh)
    log = tmp_path / "mcp-stderr.log"
    with log.open("w") as errlog:
        async with Client(stdio_client(stdio(mesh, key, tmp_path), errlog)) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert set(tools) == TOOLS
            for tool in tools.values():
                assert tool.description
                assert tool.input_schema["type"] == "object"
                assert tool.output_schema is not None
            remember = tools["remember"].input_schema
            assert remember["required"] == ["text"]
            assert remember["properties"]["tags"]["items"] == {"type": "string"}
            assert tools["search"].input_schema["properties"]["top_k"]["type"] == "integer"
            await memories_round_trip(client, user)
            await task_to_completion(client)
            await watch_times_out_then_cancel(client)
            fake.script(answer("Two and three are primes."))
            generated = await call(client, "generate", prompt="Name two primes",
                                   system="Be brief", max_tokens=20)
            assert generated["text"] == "Two and three are primes."
            assert (generated["model"], generated["provider"]) == ("cheap", "openai")
            assert generated["completion_tokens"] == 5
            assert generated["prompt_tokens"] > 0
            assert generated["cost_usd"] > 0
            assert fake.requests[-1].body["messages"][0] == {"role": "system",
                                                             "content": "Be brief"}
    assert key not in log.read_text()  # the key is never logged


async def test_tools_over_streamable_http(mesh: MeshHarness, tmp_path: Path) -> None:
    user, key = await api_key(mesh)
    log = tmp_path / "mcp-http.log"
    process, url = await serve_http(mesh, log, key)
    try:
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/mcp")
        async with Client(url) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            await memories_round_trip(client, user)
            await task_to_completion(client)
    finally:
        assert stop_process(process, 10) == 0
    assert key not in log.read_text()


async def test_http_without_a_server_key_uses_each_requests_key(
        mesh: MeshHarness, tmp_path: Path) -> None:
    user, key = await api_key(mesh)
    process, url = await serve_http(mesh, tmp_path / "mcp-http.log")
    try:
        async with Client(url) as anonymous:
            text = await failure(anonymous, "get_task", task_id="t1")
            assert "UNAUTHENTICATED" in text
            assert "Authorization: Bearer" in text
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
                Client(streamable_http_client(url, http_client=http)) as client:
            stored = await call(client, "remember", text="Lunch is at noon on Fridays.")
            found = await call(client, "search", query="when is lunch on friday")
            assert found["matches"][0]["id"] == stored["id"]
            assert found["matches"][0]["owner"] == user
    finally:
        stop_process(process, 10)


async def test_mesh_errors_are_tool_errors_with_code_and_message(
        mesh: MeshHarness, tmp_path: Path) -> None:
    _, key = await api_key(mesh)
    _, viewer_key = await api_key(mesh, "viewer")
    async with Client(stdio(mesh, key, tmp_path)) as client:
        unknown = await failure(client, "submit_task", type="no.such.type")
        assert "INVALID_ARGUMENT" in unknown
        assert "no.such.type" in unknown
        assert "Traceback" not in unknown
        missing = await failure(client, "get_task", task_id="nope")
        assert "NOT_FOUND" in missing
        schema = await failure(client, "search", query="x", top_k=0)
        assert "top_k" in schema
    async with Client(stdio(mesh, "revo_not_a_key", tmp_path)) as client:
        bad = await failure(client, "search", query="anything")
        assert "UNAUTHENTICATED" in bad
    async with Client(stdio(mesh, viewer_key, tmp_path)) as client:
        denied = await failure(client, "remember", text="viewers may not write")
        assert "PERMISSION_DENIED" in denied


def test_stdio_without_a_key_and_http_off_loopback_are_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVO_")}
    env["REVO_HOME"] = str(tmp_path)
    keyless = subprocess.run([sys.executable, "-m", "mesh", "mcp"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60, check=False)
    assert keyless.returncode == 2
    assert "REVO_API_KEY" in keyless.stderr
    exposed = subprocess.run([sys.executable, "-m", "mesh", "mcp", "--transport", "http",
                              "--address", "0.0.0.0:8765", "--api-key", "k"], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             check=False)
    assert exposed.returncode == 2
    assert "loopback only" in exposed.stderr
