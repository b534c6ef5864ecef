"""The ``revo`` commands against a real mesh: their output, exit code and stderr.

One ``revo gateway --colocate`` process (echo and workflows, auth on) on the session's
nats-server serves the whole module; the commands run in-process (``mesh.cli.main``), with
the environment a user would set. The exit codes are those of docs/operators.md: 0 OK,
1 failed, 2 usage, 3 unreachable, 4 refused.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mesh.auth.tokens import ACCESS, Keyring, TokenService
from mesh.cli import main
from mesh.config import load_config
from mesh.embedded.nats_server import NatsServer, free_port
from mesh.embedded.processes import spawn, stop_process
from mesh.testing import wait_for
from tests.integration.test_tls import Pki, pki  # noqa: F401 (the fixture)

ECHO = "revo.echo.v1.EchoService"


@dataclass
class Mesh:
    """The module's mesh: the environment that points ``revo`` at it."""

    env: dict[str, str]
    target: str
    home: Path
    log: Path

    def expired_token(self) -> str:
        config = load_config(environ=self.env, read_file=False)
        tokens = TokenService(config.auth, Keyring.from_settings(config.auth, self.home, {}))
        return tokens.issue("operator", "admin", ACCESS, generation=1 << 62,
                            now=time.time() - 3600, ttl_s=60)[0]


def _serves_echo(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=2)
            names = {s.name for s in next(iter(answers)).list_services_response.service}
        except grpc.RpcError:
            return False
    return ECHO in names and "revo.workflows.v1.WorkflowService" in names


@pytest.fixture(scope="module")
def mesh(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("cli")
    target = f"127.0.0.1:{free_port()}"
    env = {"REVO_HOME": str(root / "home"), "REVO_NATS__URL": nats_server.url,
           "REVO_GATEWAY__ADDRESS": target, "REVO_GATEWAY__METRICS_ADDRESS": "",
           "REVO_GATEWAY__HTTP_ADDRESS": "", "REVO_NODE__METRICS_ADDRESS": "",
           "REVO_PLUGINS__ONLY": "echo,workflows", "REVO_AUTH__ENABLED": "true",
           "REVO_AUTH__AUDIT__ENABLED": "false", "REVO_AUTH__LOGIN__PER_USER": "1000",
           "REVO_AUTH__LOGIN__PER_ADDRESS": "100000", "REVO_LOG_LEVEL": "WARNING"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REVO_")}
    log = root / "gateway.log"
    process = spawn([sys.executable, "-m", "mesh", "gateway", "--colocate"], log_file=log,
                    env={**clean, **env}, cwd=root)
    try:
        async def ready() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return await asyncio.to_thread(_serves_echo, target)

        asyncio.run(wait_for(ready, 60, "the gateway to serve echo and workflows"))
        yield Mesh(env, target, root / "home", log)
    finally:
        stop_process(process, 15)


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def revo(mesh: Mesh, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         tmp_path: Path) -> Any:
    """``revo ARGS...`` in-process, in an empty directory, with the mesh's environment
    (and ``extra`` variables): its exit code, stdout and stderr."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("REVO_")]:
        monkeypatch.delenv(name)

    def run(*args: str, stdin: str | None = None, **extra: str) -> Run:
        with monkeypatch.context() as patch:
            for name, value in {**mesh.env, **extra}.items():
                patch.setenv(name, value)
            if stdin is not None:
                patch.setattr(sys, "stdin", io.StringIO(stdin))
            capsys.readouterr()
            code = main(list(args))
            out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


# -- status --------------------------------------------------------------------------------


def test_status_shows_the_mesh_as_text_and_json(revo: Any, mesh: Mesh) -> None:
    text = revo("status")
    assert text.code == 0, text.err
    assert f"gateway {mesh.target}: serving" in text.out
    assert "echo" in text.out
    assert f"service {ECHO}: Echo, Count, Stats" in text.out

    report = revo("status", "--json")
    assert report.code == 0, report.err
    data = report.json()
    assert set(data) == {"up", "gateway", "nodes", "services", "error"}
    assert data["error"] is None
    assert data["gateway"] == {"address": mesh.target, "reachable": True, "metrics": None}
    assert data["up"]["running"] is False
    engines = {e["name"]: e for node in data["nodes"] for e in node["engines"]}
    assert engines["echo"]["status"] == "running"
    assert set(engines["echo"]) == {"name", "status", "version", "actors_alive", "pool_size",
                                    "restarts", "message", "progress"}
    services = {s["name"]: s["methods"] for s in data["services"]}
    assert services[ECHO] == ["Echo", "Count", "Stats"]


def test_status_tells_a_wrong_key_from_an_unreachable_gateway(revo: Any, mesh: Mesh) -> None:
    wrong = revo("status", REVO_API_KEY="revo_0123456789abcdef_not-the-secret")
    assert wrong.code == 4
    assert "wrong key or bad token" in wrong.err
    assert "REVO_API_KEY" in wrong.err
    assert "not reachable" not in wrong.err

    expired = revo("status", "--json", REVO_TOKEN=mesh.expired_token())
    assert expired.code == 4
    assert "expired token" in expired.err
    error = expired.json()["error"]
    assert (error["kind"], error["details"]["reason"]) == ("token_expired", "TOKEN_EXPIRED")

    gone = revo("status", "--address", f"127.0.0.1:{free_port()}")
    assert gone.code == 3
    assert "not reachable" in gone.err
    assert "Connection refused" in gone.err
    assert "revo up: not running" in gone.out


def test_plugins_as_json(revo: Any) -> None:
    listed = revo("plugins", "--json")
    assert listed.code == 0, listed.err
    plugins = {p["name"]: p for p in listed.json()["plugins"]}
    assert plugins["echo"] == {"name": "echo", "status": "enabled",
                               "version": version("revo-engine-echo"),
                               "distribution": "revo-engine-echo",
                               "source": "revo_engine_echo", "services": [ECHO],
                               "message": ""}
    assert plugins["recall"]["status"] == "disabled"  # REVO_PLUGINS__ONLY=echo,workflows


# -- call ------------------------------------------------------------------------------------


def test_call_prints_json_for_a_unary_call_and_a_stream(revo: Any, tmp_path: Path) -> None:
    echoed = revo("call", f"{ECHO}/Echo", "-d", '{"payload": "aGk="}')
    assert echoed.code == 0, echoed.err
    reply = echoed.json()
    assert (reply["payload"], reply["caller"], reply["role"]) == ("aGk=", "operator", "admin")

    counted = revo("call", "EchoService/Count", "-d", '{"count": 3}')
    assert counted.code == 0, counted.err
    assert [json.loads(line) for line in counted.out.splitlines()] == [
        {"index": 0}, {"index": 1}, {"index": 2}]

    (tmp_path / "request.json").write_text('{"payload": "ZmlsZQ=="}')
    from_file = revo("call", f"/{ECHO}/Echo", "-d", "@request.json")
    assert from_file.json()["payload"] == "ZmlsZQ=="
    from_stdin = revo("call", f"{ECHO}.Echo", "-d", "-", stdin='{"payload": "aW4="}')
    assert from_stdin.json()["payload"] == "aW4="


def test_call_reports_bad_input_and_the_errors_details(revo: Any) -> None:
    unknown = revo("call", "revo.echo.v1.EchoService/Ech")
    assert unknown.code == 2
    assert "has no method 'Ech'; did you mean revo.echo.v1.EchoService/Echo?" in unknown.err
    no_service = revo("call", "EchoServce/Echo")
    assert no_service.code == 2
    assert "unknown service 'EchoServce'; did you mean revo.echo.v1.EchoService/Echo" \
        in no_service.err

    not_json = revo("call", f"{ECHO}/Echo", "-d", '{"payload": ')
    assert not_json.code == 2
    assert "is not JSON" in not_json.err
    assert "line 1 column" in not_json.err
    wrong_field = revo("call", f"{ECHO}/Echo", "-d", '{"paylod": "aGk="}')
    assert wrong_field.code == 2
    assert 'no field named "paylod"' in wrong_field.err

    refused = revo("call", f"{ECHO}/Echo", "-d", '{"delayMs": 90000}')
    assert refused.code == 1
    assert refused.out == ""
    assert "INVALID_ARGUMENT" in refused.err
    assert "delay_ms: must be at most 60000" in refused.err


def test_call_list_names_the_served_methods(revo: Any) -> None:
    listed = revo("call", "--list")
    assert listed.code == 0, listed.err
    assert f"{ECHO}/Count" in listed.out
    assert "-> stream CountResponse" in listed.out
    data = revo("call", "--list", "--json").json()
    assert data["source"] == "gateway"
    count = next(m for m in data["methods"] if m["method"] == f"{ECHO}/Count")
    assert count == {"method": f"{ECHO}/Count", "service": ECHO, "name": "Count",
                     "request": "revo.echo.v1.CountRequest",
                     "response": "revo.echo.v1.CountResponse", "server_streaming": True,
                     "client_streaming": False}


# -- users, keys, workflows: signed in as someone else -------------------------------------


def test_users_keys_and_permissions(revo: Any, mesh: Mesh) -> None:
    viewer = f"cli-viewer-{uuid.uuid4().hex[:8]}"
    made = revo("users", "create", viewer, "--role", "viewer", "--password-stdin",
                stdin="viewer password 1\n")
    assert made.code == 0, made.err
    try:
        users = revo("users", "list", "--json")
        assert users.code == 0, users.err
        mine = [u for u in users.json()["users"] if u["username"] == viewer]
        assert [(u["role"], u["disabled"], set(u)) for u in mine] == [
            ("viewer", False, {"username", "role", "disabled", "updated_at"})]

        key = revo("keys", "create", "--name", "cli", "--user", viewer)
        assert key.code == 0, key.err
        secret = key.out.splitlines()[-1]
        keys = revo("keys", "list", "--user", viewer, "--json").json()["keys"]
        assert [(k["name"], k["owner"], k["status"]) for k in keys] == [("cli", viewer,
                                                                          "active")]
        assert secret not in json.dumps(keys)

        # signed in by password: a viewer may read, not manage users
        as_viewer = {"REVO_USERNAME": viewer, "REVO_PASSWORD": "viewer password 1"}
        read = revo("call", f"{ECHO}/Stats", **as_viewer)
        assert read.code == 0, read.err
        denied = revo("call", "revo.auth.v1.UserService/ListUsers", **as_viewer)
        assert denied.code == 4
        assert "permission denied" in denied.err
        wrong = revo("call", f"{ECHO}/Stats", REVO_USERNAME=viewer, REVO_PASSWORD="nope")
        assert wrong.code == 4
        assert "wrong user name or password" in wrong.err
        # the key acts as its owner
        whoami = revo("call", "revo.auth.v1.AuthService/WhoAmI", REVO_API_KEY=secret)
        assert whoami.code == 0, whoami.err
        assert whoami.json()["username"] == viewer
    finally:
        assert revo("users", "delete", viewer).code == 0


def test_workflows_list_and_runs_as_json(revo: Any, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    (tmp_path / "flow.yaml").write_text(
        f"name: {name}\ndescription: one echo\nsteps:\n  - id: hello\n    call:\n"
        f"      method: /{ECHO}/Echo\n      request: {{payload: aGk=}}\n")
    applied = revo("workflows", "apply", "flow.yaml")
    assert applied.code == 0, applied.err
    listed = revo("workflows", "list", "--json")
    assert listed.code == 0, listed.err
    assert {"name": name, "version": 1, "steps": 1, "description": "one echo"} in \
        listed.json()["workflows"]

    ran = revo("workflows", "run", name)
    assert ran.code == 0, ran.out + ran.err
    run_id = ran.out.split()[1]
    runs = revo("workflows", "runs", "--workflow", name, "--json")
    assert runs.code == 0, runs.err
    [run] = runs.json()["runs"]
    assert (run["id"], run["workflow"], run["version"], run["started_by"]) == (
        run_id, name, 1, "operator")
    assert set(run) == {"id", "workflow", "version", "state", "started_by", "created_at",
                        "finished_at", "error"}
    assert run["state"] in ("running", "succeeded")  # the index may lag the run a moment
    assert revo("workflows", "runs", "--workflow", name, "--state", "failed",
                "--json").json() == {"runs": []}


def test_nats_unreachable_is_exit_3(revo: Any) -> None:
    gone = revo("users", "list", REVO_NATS__URL=f"nats://127.0.0.1:{free_port()}",
                REVO_NATS__CONNECT_TIMEOUT_S="2")
    assert gone.code == 3
    assert "cannot reach NATS" in gone.err


def test_unreachable_says_why_tls_or_dns(mesh: Mesh, revo: Any, tmp_path: Path,
                                         pki: Pki) -> None:  # noqa: F811
    """A gateway that speaks TLS: with its CA the call goes through; with another CA, or
    in plain text, it is unreachable and the message says it is TLS; a name that does not
    resolve says so."""
    target = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVO_")}
    env.update(mesh.env, REVO_GATEWAY__ADDRESS=target, REVO_PLUGINS__ONLY="echo",
               REVO_GATEWAY__TLS__CERT_FILE=str(pki.server_cert),
               REVO_GATEWAY__TLS__KEY_FILE=str(pki.server_key))
    log = tmp_path / "tls-gateway.log"
    process = spawn([sys.executable, "-m", "mesh", "gateway", "--colocate"], log_file=log,
                    env=env, cwd=tmp_path)
    call = ("call", f"{ECHO}/Stats")
    try:
        def through() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            done: Run = revo(*call, REVO_URL=target, REVO_CA_FILE=str(pki.ca))
            return done.code == 0

        asyncio.run(wait_for(lambda: asyncio.to_thread(through), 60,
                             "the TLS gateway to answer"))
        other_ca = revo(*call, REVO_URL=target, REVO_CA_FILE=str(pki.stranger_cert))
        assert other_ca.code == 3
        assert "TLS failed" in other_ca.err
        plain = revo(*call, REVO_URL=target)
        assert plain.code == 3
        assert "does it speak TLS?" in plain.err
    finally:
        stop_process(process, 15)
    nowhere = revo(*call, REVO_URL="nowhere.invalid:50051")
    assert nowhere.code == 3
    assert "the host name does not resolve" in nowhere.err


# -- read-only commands create nothing ------------------------------------------------------


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_read_only_commands_create_nothing(mesh: Mesh, tmp_path: Path) -> None:
    """In an empty directory, with HOME and XDG pointed there too: status, plugins,
    --version, call --list and users list leave it as it was (status used to make a
    signing secret under ./.revo)."""
    (tmp_path / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVO_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "home/.config"),
               XDG_DATA_HOME=str(tmp_path / "home/.local/share"),
               XDG_CACHE_HOME=str(tmp_path / "home/.cache"),
               XDG_STATE_HOME=str(tmp_path / "home/.local/state"),
               PYTHONDONTWRITEBYTECODE="1", REVO_URL=mesh.target,
               REVO_NATS__URL=mesh.env["REVO_NATS__URL"])
    before = _tree(tmp_path)
    commands = [["status"], ["status", "--json"], ["plugins"], ["--version"],
                ["call", "--list"], ["users", "list"]]

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mesh", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    async def all_of_them() -> list[subprocess.CompletedProcess[str]]:
        return await asyncio.gather(*(asyncio.to_thread(run, c) for c in commands))

    done = asyncio.run(all_of_them())
    codes = {" ".join(c): d.returncode for c, d in zip(commands, done, strict=True)}
    # no secret here: status signs in with nothing, and says so
    assert codes == {"status": 4, "status --json": 4, "plugins": 0, "--version": 0,
                     "call --list": 0, "users list": 0}, [d.stderr[-500:] for d in done]
    assert "no credentials were sent" in done[0].stderr
    assert _tree(tmp_path) == before
