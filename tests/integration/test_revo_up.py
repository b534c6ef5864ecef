"""`revo up` as a user runs it: real processes, endpoints printed, Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from mesh.embedded.nats_server import free_port
from mesh.testing.models import make_checkpoint
from mesh.v1 import auth_pb2, auth_pb2_grpc, models_pb2, models_pb2_grpc
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone for our purpose
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def _revo(*args: str, env: dict[str, str], cwd: Path, timeout: float = 30):
    return subprocess.run([sys.executable, "-m", "mesh", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


TRITON_MODELS = Path(__file__).resolve().parents[2] / "triton_models"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _triton_http(tmp_path: Path) -> str:
    """The HTTP address of revo up's tritonserver, from its command line in the log dir."""
    log = (tmp_path / "home/logs/tritonserver.log").read_text()
    port = re.search(r"Started HTTPService at 127\.0\.0\.1:(\d+)", log)
    assert port, log[-2000:]
    return f"127.0.0.1:{port.group(1)}"


@pytest.mark.timeout(300)  # the whole mesh, Triton and Envoy, then a solve workflow on it
def test_revo_up_serves_then_sigint_stops_everything(tmp_path: Path, models_env: Path):
    # a random-weight checkpoint: its text is noise, but it is really generated on Triton
    checkpoint = make_checkpoint(tmp_path / "tiny", seed=3)
    gateway = f"127.0.0.1:{free_port()}"
    gateway_metrics = f"http://127.0.0.1:{free_port()}/metrics"
    http_door = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ,
               REVO_GATEWAY__HTTP_ADDRESS=http_door[len("http://"):],  # 8000 may be taken
               REVO_HOME=str(tmp_path / "home"),
               REVO_GATEWAY__METRICS_ADDRESS=gateway_metrics[len("http://"):-len("/metrics")],
               REVO_NATS__PORT=str(free_port()),
               REVO_NATS__MONITOR_PORT=str(free_port()),
               REVO_GATEWAY__ADDRESS=gateway,
               REVO_ENVOY__ADDRESS=f"127.0.0.1:{free_port()}",  # 8080 may be taken
               REVO_ENVOY__ADMIN_ADDRESS=f"127.0.0.1:{free_port()}",
               REVO_PLUGINS__ONLY="echo,models,recall,creative,parallel,workflows",
               REVO_MODELS__GENERATOR_CHECKPOINT=str(checkpoint),
               REVO_ADMIN_PASSWORD="first-admin-password",
               REVO_MODELS__TRITON_REPOSITORY=str(TRITON_MODELS),
               REVO_MODELS__TRITON_PYTHON_ENV=str(models_env))
    up = subprocess.Popen([sys.executable, "-m", "mesh", "up"], env=env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        banner = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            banner.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(banner)
        assert "revo is up" in text, text
        # each step as it happened, Triton's and the generator's included
        assert re.search(r"^✔ tritonserver +127\.0\.0\.1:\d+  models: embedder +\d+\.\d s$",
                         text, re.MULTILINE), text
        assert re.search(rf"^✔ generator +{re.escape(str(checkpoint))} +\d+\.\d s$", text,
                         re.MULTILINE), text
        assert re.search(r"^✔ engines +creative, echo, models, parallel, recall", text,
                         re.MULTILINE), text
        assert gateway in text
        # metrics by default: the gateway's, and the node's at the address it announced
        assert f"metrics          gateway {gateway_metrics}" in text, text
        node_metrics = re.search(r"^ +node \S+ (http://127\.0\.0\.1:\d+/metrics)$", text,
                                 re.MULTILINE)
        assert node_metrics, text
        with urllib.request.urlopen(node_metrics.group(1), timeout=10) as scraped:
            assert b'engine_health_status{engine="echo"' in scraped.read()
        # the HTTP door: in the banner, and serving
        assert f"HTTP             {http_door} (OpenAI API at /v1" in text, text
        with urllib.request.urlopen(f"{http_door}/health", timeout=10) as health:
            assert "revo.echo.v1.EchoService" in json.loads(health.read())["services"]

        with grpc.insecure_channel(gateway) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                echo_pb2_grpc.EchoServiceStub(channel).Echo(echo_pb2.EchoRequest(payload=b"up"),
                                                            timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            # REVO_ADMIN_PASSWORD created the first admin
            tokens = auth_pb2_grpc.AuthServiceStub(channel).Login(
                auth_pb2.LoginRequest(username="admin", password="first-admin-password"),
                timeout=10).tokens
            reply = echo_pb2_grpc.EchoServiceStub(channel).Echo(
                echo_pb2.EchoRequest(payload=b"up"), timeout=10,
                metadata=(("authorization", f"Bearer {tokens.access_token}"),))
        assert reply.payload == b"up"
        assert (reply.caller, reply.role) == ("admin", "admin")
        # ModelService embeds on revo up's Triton
        with grpc.insecure_channel(gateway) as channel:
            models = models_pb2_grpc.ModelServiceStub(channel)
            signed_in = (("authorization", f"Bearer {tokens.access_token}"),)
            listed = models.ListModels(models_pb2.ListModelsRequest(), timeout=10,
                                       metadata=signed_in)
            embedded = models.Embed(models_pb2.EmbedRequest(texts=["one", "two"]),
                                    timeout=30, metadata=signed_in)
        assert [(m.name, m.healthy, m.generates, m.embeds) for m in listed.models] == [
            ("local", True, True, False), ("embedder", True, False, True)]
        assert [len(e.values) for e in embedded.embeddings] == [384, 384]
        # Perfect Recall remembers and finds by meaning (examples/recall_client.py)
        password_file = tmp_path / "admin.password"
        password_file.write_text("first-admin-password")
        example = subprocess.run(
            [sys.executable, str(EXAMPLES / "recall_client.py"), "--target", gateway,
             "--password-file", str(password_file)],
            env=env, capture_output=True, text=True, timeout=120)
        assert example.returncode == 0, example.stdout + example.stderr
        assert example.stdout.count("OUTCOME_STORED") == 5, example.stdout
        assert "OUTCOME_MERGED" in example.stdout
        first_hit = example.stdout.split("Search 'which port", 1)[1].splitlines()[1]
        assert "port 5433" in first_hit, example.stdout

        # Creative makes a set on the local generator and remembers the top pick
        # (examples/creative_client.py)
        example = subprocess.run(
            [sys.executable, str(EXAMPLES / "creative_client.py"), "--target", gateway,
             "--password-file", str(password_file), "--n", "3", "--max-tokens", "24",
             "--force-local", "--choose"],
            env=env, capture_output=True, text=True, timeout=180)
        assert example.returncode == 0, example.stdout + example.stderr
        assert len(re.findall(r"^\[\d\] ", example.stdout, re.MULTILINE)) >= 2, example.stdout
        assert "(local, " in example.stdout, example.stdout
        assert "Vendi score" in example.stdout, example.stdout
        assert "chose [" in example.stdout, example.stdout

        # the Coordinator's built-in solve runs on it too (revo workflows run solve). The
        # random-weight judges give no readable score, so the evaluators' vote fails and
        # Creative's own ranking decides; the choice is remembered.
        solved = _revo("workflows", "run", "solve", "--input", json.dumps({
            "problem": "Our nightly reporting job misses its 7am deadline.", "n": 3,
            "options": {"forceLocal": True, "maxTokens": 24, "judging": "JUDGING_NONE"}}),
            env=env, cwd=tmp_path, timeout=240)
        assert solved.returncode == 0, solved.stdout + solved.stderr
        result = json.loads(solved.stdout.strip().splitlines()[-1])
        assert result["state"] == "RUN_STATE_SUCCEEDED", solved.stdout
        assert result["output"]["agreed"] is False, "noise scores nothing: no vote"
        assert result["output"]["memoryId"], solved.stdout

        status = _revo("status", env=env, cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "echo" in status.stdout
        assert re.search(r"^ +workflows +running", status.stdout, re.MULTILINE), status.stdout
        assert "service revo.workflows.v1.WorkflowService" in status.stdout
        assert "running" in status.stdout

        state_file = tmp_path / "home/run/up.json"
        state = json.loads(state_file.read_text())
        pids = list(state["processes"].values())
        assert set(state["processes"]) == {"nats-server", "tritonserver", "node", "gateway",
                                          "envoy"}
        assert all(_alive(pid) for pid in pids)
        # Triton runs the embedder, and the mesh's processes were told where it is
        assert state["triton"] in text
        with urllib.request.urlopen(f"http://{_triton_http(tmp_path)}/v2/models/embedder/ready",
                                    timeout=5) as ready:
            assert ready.status == 200

        # a node that dies is restarted, and the mesh serves again
        os.kill(state["processes"]["node"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            node = json.loads(state_file.read_text())["processes"]["node"]
            if node != state["processes"]["node"]:
                break
            time.sleep(0.2)
        assert node != state["processes"]["node"], "the killed node was not restarted"
        pids.append(node)
        again: echo_pb2.EchoResponse | None = None
        with grpc.insecure_channel(gateway) as channel:
            stub = echo_pb2_grpc.EchoServiceStub(channel)
            for _ in range(100):  # bounded: until the new node has joined
                try:
                    again = stub.Echo(echo_pb2.EchoRequest(payload=b"again"), timeout=5,
                                      metadata=(("authorization",
                                                 f"Bearer {tokens.access_token}"),))
                    break
                except grpc.RpcError:
                    time.sleep(0.2)
        assert again is not None
        assert again.payload == b"again"

        up.send_signal(signal.SIGINT)
        up.send_signal(signal.SIGINT)  # Ctrl-C twice must not hang the shutdown
        assert up.wait(timeout=20) == 0  # a hang raises TimeoutExpired
        assert not [pid for pid in pids if _alive(pid)], "revo up left processes behind"
        assert not (tmp_path / "home/run/up.json").exists()

        after = _revo("status", env=env, cwd=tmp_path)
        assert after.returncode == 3  # unreachable (mesh.cli_support's exit codes)
        assert "not running" in after.stdout
        assert "is the mesh up" in after.stderr
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_revo_up_refuses_bad_configuration(tmp_path: Path):
    env = dict(os.environ, REVO_HOME=str(tmp_path / "home"))
    (tmp_path / "revo.toml").write_text('[gateway]\nadress = "127.0.0.1:1"\n')
    result = _revo("up", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "did you mean 'gateway.address'" in result.stderr
