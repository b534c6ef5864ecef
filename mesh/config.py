"""The mesh's configuration: one typed model, read from ``revo.toml`` and ``REVO_*`` variables.

Precedence, lowest first: defaults, the TOML file (``$REVO_CONFIG``, else ``./revo.toml`` if
it exists), then environment variables. A nested key ``gateway.address`` is set by
``REVO_GATEWAY__ADDRESS`` (double underscore between levels); list values are comma
separated. An unknown key, in the file or the environment, is a :class:`ConfigError` that
suggests the closest known key. The clients' variables (:data:`CLIENT_VARIABLES`:
``REVO_URL``, ``REVO_TOKEN``, ...) and the launcher's secrets are not settings: they are
accepted and ignored here.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mesh.errors import ConfigError

__all__ = [
    "CLIENT_VARIABLES",
    "ApiKeySettings",
    "AuditSettings",
    "AuthSettings",
    "CatalogModel",
    "EngineSettings",
    "EnvoySettings",
    "GatewaySettings",
    "Limit",
    "LoginThrottle",
    "MeshConfig",
    "ModelSettings",
    "NatsSettings",
    "NodeSettings",
    "PluginSettings",
    "RateLimitSettings",
    "TlsSettings",
    "TracingSettings",
    "load_config",
    "to_environment",
]

ENV_PREFIX = "REVO_"
CLIENT_VARIABLES = frozenset({"REVO_URL", "REVO_API_KEY", "REVO_TOKEN", "REVO_USERNAME",
                              "REVO_PASSWORD", "REVO_CA_FILE", "REVO_TIMEOUT"})
"""REVO_* variables a client reads (``mesh.client``, ``revo call``, ``revo mcp``): where the
gateway is and how to sign in. The mesh's own configuration accepts and ignores them, so one
shell can hold both (docs/operators.md, "Environment variables")."""
# Variables that belong to the launcher, the clients or the test suite rather than to the
# model. Secrets are read from the environment where they are used, never kept in the model.
_ENV_NOT_CONFIG = frozenset({"REVO_CONFIG", "REVO_JWT_SECRET", "REVO_IDENTITY_SECRET",
                             "REVO_ADMIN_PASSWORD", "REVO_ADMIN_PASSWORD_FILE"}
                            ) | CLIENT_VARIABLES
SECRET_VARIABLES = frozenset({"REVO_JWT_SECRET", "REVO_IDENTITY_SECRET",
                              "REVO_ADMIN_PASSWORD", "REVO_ADMIN_PASSWORD_FILE",
                              "REVO_API_KEY", "REVO_TOKEN", "REVO_PASSWORD"})
"""REVO_* variables that carry secrets rather than settings."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NatsSettings(_Section):
    """Where the mesh's NATS is, and how ``revo up`` runs its embedded server."""

    url: str = Field("nats://127.0.0.1:4222", description="NATS server(s), comma separated")
    embedded: bool = Field(True, description="`revo up` starts nats-server itself")
    port: int = Field(4222, ge=0, le=65535, description="client port of the embedded server")
    monitor_port: int = Field(8222, ge=0, le=65535, description="monitor port (/healthz)")
    max_payload_bytes: int = Field(8 * 1024 * 1024, gt=0,
                                   description="largest NATS message (embedded server)")
    embedded_cpus: int = Field(1, ge=0, description="cores (GOMAXPROCS) of the embedded "
                               "server; 0 lets Go use all")
    connect_timeout_s: float = Field(5.0, gt=0, description="time to wait for the first "
                                     "connection before giving up")
    ping_interval_s: float = Field(1.0, gt=0, description="ping the server this often; "
                                   "two pings unanswered and the connection is taken as "
                                   "dead (a hung or cut-off server) and moved to another")
    replicas: int = Field(1, ge=1, le=5, description="replicas of every JetStream stream and "
                          "bucket the mesh and its engines create (3 on a three-server "
                          "cluster; an existing stream with fewer is raised to it)")
    tls_ca_file: Path | None = Field(None, description="CA that signed the NATS server's "
                                     "certificate (turns TLS on)")
    tls_cert_file: Path | None = Field(None, description="client certificate, when NATS "
                                       "verifies clients")
    tls_key_file: Path | None = Field(None, description="key of tls_cert_file")
    user: str = Field("", description="NATS user (with password)")
    password: str = Field("", description="NATS password; prefer a creds file")
    password_file: Path | None = Field(None, description="file holding the NATS password "
                                       "(a compose or Kubernetes secret), instead of password")
    creds_file: Path | None = Field(None, description="NATS credentials file (JWT + nkey)")
    server_tls_cert_file: Path | None = Field(
        None, description="embedded server: serve TLS with this certificate")
    server_tls_key_file: Path | None = Field(None, description="embedded server: its key")


class TlsSettings(_Section):
    """TLS of the gateway's gRPC port; off unless a certificate and key are given."""

    cert_file: Path | None = Field(None, description="PEM certificate chain (turns TLS on)")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    client_ca_file: Path | None = Field(None, description="CA for client certificates "
                                        "(mutual TLS)")
    require_client_cert: bool = Field(False, description="refuse clients without a "
                                      "certificate signed by client_ca_file")
    ca_file: Path | None = Field(None, description="CA that signed cert_file: local tools "
                                 "(revo up, revo status) verify the gateway with it")


class GatewaySettings(_Section):
    """The gRPC gateway."""

    address: str = Field("127.0.0.1:50051", description="host:port the gateway listens on")
    max_message_bytes: int = Field(4 * 1024 * 1024, gt=0,
                                   description="largest request or response message")
    default_timeout_s: float = Field(30.0, gt=0,
                                     description="deadline for calls that bring none")
    max_timeout_s: float = Field(300.0, gt=0, description="longest deadline a caller may ask")
    accept_timeout_s: float = Field(
        1.5, gt=0, description="a call neither answered nor accepted by a node within this "
        "fails UNAVAILABLE (its node died)")
    colocate: bool = Field(False, description="host the engines in the gateway's own process")
    stream_window: int = Field(32, ge=1, le=4096,
                               description="stream messages in flight before an ack")
    metrics_address: str = Field("127.0.0.1:9464", description="host:port where the gateway "
                                 "serves Prometheus metrics at /metrics (empty: metrics off "
                                 "in the gateway, nothing measured)")
    http_address: str = Field("127.0.0.1:8000", description="host:port of the gateway's "
                              "HTTP door: the OpenAI-compatible API under /v1, Connect-protocol "
                              "JSON for every method, /health (empty: off)")
    http_max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="largest HTTP request "
                                     "body the HTTP door reads (a larger one is refused: "
                                     "RESOURCE_EXHAUSTED)")
    tls: TlsSettings = Field(default_factory=TlsSettings)


class NodeSettings(_Section):
    """A node: the process that hosts engine actor pools."""

    id: str = Field("", description="node id; empty picks hostname-pid-random")
    heartbeat_s: float = Field(2.0, gt=0, description="registry heartbeat period")
    shutdown_grace_s: float = Field(10.0, ge=0,
                                    description="time in-flight calls get on SIGTERM")
    start_timeout_s: float = Field(30.0, gt=0, description="time an engine may take to start")
    restart_backoff_s: float = Field(0.1, gt=0, description="first restart delay of an actor")
    restart_backoff_max_s: float = Field(30.0, gt=0, description="cap of the restart delay")
    metrics_address: str = Field("127.0.0.1:0", description="host:port where the node serves "
                                 "Prometheus metrics at /metrics, announced to the mesh (port "
                                 "0: a free one; empty: metrics off in the node, nothing "
                                 "measured)")
    health_address: str = Field("", description="host:port where the node serves "
                                "grpc.health.v1 for probes: '' is liveness, each hosted "
                                "service and 'revo.node' readiness (NOT_SERVING while "
                                "draining or cut off from NATS); empty: off")


class PluginSettings(_Section):
    """Which plugins load."""

    block: list[str] = Field(default_factory=list,
                             description="engine names not to load (REVO_PLUGINS__BLOCK=a,b)")
    only: list[str] = Field(default_factory=list,
                            description="when set, load only these engines")
    extra: dict[str, str] = Field(default_factory=dict,
                                  description="name = 'module[:object]' plugins not installed "
                                              "as distributions (development)")


class Limit(BaseModel):
    """A rate: ``rate`` requests per second on average, up to ``burst`` at once."""

    model_config = ConfigDict(extra="forbid")

    rate: float = Field(gt=0, description="requests per second, sustained")
    burst: int = Field(ge=1, description="requests allowed at once")

    @property
    def window_s(self) -> float:
        """The time ``burst`` requests take to refill."""
        return self.burst / self.rate


def _default_role_limits() -> dict[str, Limit]:
    return {"admin": Limit(rate=200, burst=400), "developer": Limit(rate=100, burst=200),
            "analyst": Limit(rate=50, burst=100), "viewer": Limit(rate=20, burst=40)}


class RateLimitSettings(_Section):
    """Per-user limits, shared by every gateway through counters in NATS."""

    enabled: bool = Field(True, description="enforce rate limits")
    roles: dict[str, Limit] = Field(default_factory=_default_role_limits,
                                    description="each user's limit, by role")
    methods: dict[str, Limit] = Field(
        default_factory=dict, description="each user's limit on one method, keyed by path "
        "('/revo.echo.v1.EchoService/Echo'), on top of the role's")
    fail_open: bool = Field(True, description="admit calls when NATS cannot be asked "
                            "(logged); false refuses them UNAVAILABLE")


class LoginThrottle(_Section):
    """How many failed sign-ins are allowed before Login answers RESOURCE_EXHAUSTED."""

    per_user: int = Field(5, ge=1, description="failures per user name per window")
    per_address: int = Field(20, ge=1, description="failures per client address per window")
    window_s: float = Field(300.0, gt=0, description="the window, in seconds")


class AuditSettings(_Section):
    """The audit stream: one record per call, in JetStream with file storage."""

    enabled: bool = Field(True, description="record every call")
    max_age_days: float = Field(90.0, gt=0, description="records older than this are removed")
    max_bytes: int = Field(1 << 30, gt=0, description="oldest records go beyond this size")


class ApiKeySettings(_Section):
    """Long-lived keys for programs (``UserService.CreateApiKey``, ``revo keys``)."""

    default_ttl_s: int = Field(90 * 86400, ge=60, description="lifetime of a key created "
                               "without an expiry")
    max_ttl_s: int = Field(365 * 86400, ge=60, description="the longest lifetime a key may "
                           "be given (a longer one is refused INVALID_ARGUMENT)")

    @model_validator(mode="after")
    def _default_within_max(self) -> ApiKeySettings:
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError(f"auth.api_keys.default_ttl_s ({self.default_ttl_s}) must not "
                             f"exceed auth.api_keys.max_ttl_s ({self.max_ttl_s})")
        return self


class AuthSettings(_Section):
    """Sign-in, tokens, roles, rate limits and audit at the gateway."""

    enabled: bool = Field(True, description="require tokens; false serves every method "
                          "to anyone (development only)")
    issuer: str = Field("revo", description="the tokens' iss claim")
    audience: str = Field("revo-mesh", description="the tokens' aud claim")
    algorithm: Literal["HS256", "RS256", "EdDSA"] = Field(
        "HS256", description="signing algorithm; HS256 uses REVO_JWT_SECRET or secret_file")
    secret_file: Path | None = Field(None, description="HS256 secret (default: "
                                     "<home>/secrets/jwt.secret, created when absent)")
    signing_key_file: Path | None = Field(None, description="RS256/EdDSA private key (PEM)")
    key_id: str = Field("", description="kid of the signing key (default: derived from it)")
    verify_keys: dict[str, Path] = Field(
        default_factory=dict, description="kid = file: older keys (public PEM, or secret "
        "for HS256) still accepted until their tokens expire")
    access_ttl_s: int = Field(900, ge=2, description="access token lifetime")
    refresh_ttl_s: int = Field(7 * 86400, ge=60, description="refresh token lifetime")
    leeway_s: int = Field(5, ge=0, le=300, description="clock skew allowed on exp and nbf")
    identity_secret_file: Path | None = Field(
        None, description="key that seals caller identity from gateways to nodes (default: "
        "REVO_IDENTITY_SECRET, else <home>/secrets/identity.key)")
    login: LoginThrottle = Field(default_factory=LoginThrottle)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    api_keys: ApiKeySettings = Field(default_factory=ApiKeySettings)


class CatalogModel(BaseModel):
    """One model the router may call."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the name callers use")
    provider: Literal["triton", "openai", "anthropic", "openai_compatible"] = Field(
        description="who serves it")
    upstream: str = Field("", description="the provider's model id (default: name)")
    base_url: str = Field("", description="API base URL (OpenAI-compatible servers, proxies)")
    api_key_env: str = Field("", description="environment variable holding the API key")
    api_key_file: Path | None = Field(None, description="file holding the API key")
    input_usd_per_million: float = Field(0.0, ge=0, description="price of prompt tokens")
    output_usd_per_million: float = Field(0.0, ge=0, description="price of completion tokens")
    cached_usd_per_million: float | None = Field(
        None, ge=0, description="price of cached prompt tokens (default: input price)")
    context_window: int = Field(8192, gt=0, description="prompt + completion tokens")
    priority: int = Field(100, description="lower is tried first by 'auto'")
    max_output_tokens: int = Field(1024, gt=0, description="completion cap when the request "
                                   "gives none")
    supports_tools: bool | None = Field(
        None, description="takes tool definitions and answers with tool calls (default: "
        "true for openai and anthropic, false for openai_compatible and triton)")
    supports_structured_output: bool | None = Field(
        None, description="honours JSON response formats (default: true for openai and "
        "anthropic, false for openai_compatible and triton)")

    @property
    def local(self) -> bool:
        return self.provider == "triton"

    @property
    def tools_supported(self) -> bool:
        """``supports_tools``, or the provider's default when unset."""
        if self.supports_tools is not None:
            return self.supports_tools
        return self.provider in ("openai", "anthropic")

    @property
    def structured_output_supported(self) -> bool:
        """``supports_structured_output``, or the provider's default when unset."""
        if self.supports_structured_output is not None:
            return self.supports_structured_output
        return self.provider in ("openai", "anthropic")

    @property
    def paid(self) -> bool:
        return self.input_usd_per_million > 0 or self.output_usd_per_million > 0


class ModelSettings(_Section):
    """Model calls: the catalog the router chooses from, and what users may spend."""

    catalog: list[CatalogModel] = Field(default_factory=list,
                                        description="models, as [[models.catalog]] tables")
    reference_model: str = Field("", description="cloud model whose price measures savings "
                                 "(default: the dearest cloud model)")
    retries: int = Field(2, ge=0, le=10, description="retries per model on 429/5xx/timeouts")
    backoff_s: float = Field(0.2, gt=0, description="first retry delay (doubles, with jitter)")
    backoff_max_s: float = Field(5.0, gt=0, description="longest retry delay")
    cooldown_after: int = Field(3, ge=1, description="consecutive failures that cool a model")
    cooldown_s: float = Field(30.0, gt=0, description="how long a cooled model is skipped")
    timeout_s: float = Field(60.0, gt=0, description="per provider call")
    triton_embedded: bool = Field(True, description="`revo up` starts tritonserver on "
                                  "triton_repository (needs the models extra)")
    triton_repository: Path = Field(Path("triton_models"), description="Triton model "
                                    "repository (relative to the working directory)")
    triton_models: list[str] = Field(default_factory=lambda: ["embedder"],
                                     description="models Triton loads at start")
    triton_python_env: Path = Field(
        Path(".venv-models"), description="the local models' own Python environment (a venv "
        "made from <triton_repository>/requirements.txt; `revo up` creates it when missing "
        "or out of date), with which Triton runs the models instead of the mesh's")
    triton_url: str = Field("", description="Triton gRPC host:port (production; `revo up` "
                            "sets it to its own server)")
    generator_checkpoint: Path | None = Field(
        None, description="Hugging Face checkpoint directory that `revo up`'s Triton loads "
        "as the `generator` model (unset: no generator)")

    @field_validator("generator_checkpoint", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value
    budget_usd: float = Field(10.0, ge=0, description="each user's spend on paid models per "
                              "period, in US dollars (0: paid models refused)")
    budget_period: Literal["day", "month"] = Field("month", description="when budgets reset "
                                                   "(UTC)")
    user_budgets_usd: dict[str, float] = Field(
        default_factory=dict, description="user = dollars: budgets other than budget_usd")


class TracingSettings(_Section):
    """OpenTelemetry traces of every call (mesh.observability.tracing); off by default."""

    enabled: bool = Field(False, description="trace calls and export the spans with OTLP")
    protocol: Literal["grpc", "http/protobuf"] = Field(
        "grpc", description="OTLP transport: grpc (port 4317) or http/protobuf (port 4318)")
    endpoint: str = Field("", description="OTLP receiver (default: http://127.0.0.1:4317 for "
                          "grpc, http://127.0.0.1:4318/v1/traces for http/protobuf)")
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0, description="share of new traces "
                                "recorded; a call that brings a traceparent follows its "
                                "caller's decision (parent-based)")
    capture_content: bool = Field(False, description="put prompts and completions on "
                                  "GenAI spans (they may hold personal data)")
    service_name: str = Field("revo", min_length=1, description="service.name of the spans")


class EnvoySettings(_Section):
    """Envoy in front of the gateway, as ``revo up`` runs it (``envoy/envoy.yaml``): gRPC,
    gRPC-web and the HTTP door on one listener, for browsers and HTTP tools."""

    enabled: bool = Field(True, description="`revo up` starts Envoy in front of the gateway")
    address: str = Field("127.0.0.1:8080", description="host:port of Envoy's listener: gRPC, "
                         "gRPC-web, /v1, /health and Connect JSON (the browser endpoint)")
    admin_address: str = Field("127.0.0.1:9901", description="host:port of Envoy's admin "
                               "interface (/ready, /stats); keep it on loopback")
    access_log: str = Field("", description="where Envoy writes one JSON line per request: "
                            "a file path, 'stdout', or empty for <home>/logs/envoy-access.log")
    cors_origins: list[str] = Field(
        default_factory=list, description="browser origins allowed besides this machine's "
        "own (http(s)://localhost, 127.0.0.1, [::1] on any port), exactly as a browser sends "
        "them ('https://console.example.com'); '*' allows any")
    stream_idle_timeout_s: float = Field(
        0.0, ge=0, description="a stream with no traffic for this long is cut (0: never; "
        "long quiet streams such as task watches need 0 or a large value)")
    workers: int = Field(1, ge=1, le=64, description="Envoy worker threads (--concurrency)")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS of Envoy's "
                             "listener (off unless cert_file and key_file are set)")


class EngineSettings(BaseModel):
    """Settings of one engine: the mesh's keys, plus the plugin's own (validated by it)."""

    model_config = ConfigDict(extra="allow")

    pool_size: int | None = Field(None, ge=1, le=256, description="actors in the engine's pool")
    max_pending: int | None = Field(None, ge=0,
                                    description="calls that may wait for an actor")

    def plugin_settings(self) -> dict[str, Any]:
        """The keys that belong to the plugin rather than to the mesh."""
        return dict(self.model_extra or {})


class MeshConfig(_Section):
    """Everything a node, a gateway or ``revo up`` reads."""

    home: Path = Field(Path(".revo"), description="state directory (REVO_HOME)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value
    nats: NatsSettings = Field(default_factory=NatsSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    node: NodeSettings = Field(default_factory=NodeSettings)
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    envoy: EnvoySettings = Field(default_factory=EnvoySettings)
    engines: dict[str, EngineSettings] = Field(default_factory=dict)

    def engine(self, name: str) -> EngineSettings:
        """Settings of engine ``name`` (defaults when the file has none)."""
        return self.engines.get(name) or EngineSettings.model_validate({})


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf key of the model (``gateway.address``) with its annotation."""
    leaves: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            leaves.update(_leaf_fields(annotation, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = annotation
    return leaves


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(_leaf_fields(model))


def _open_tables(model: type[BaseModel]) -> list[str]:
    """Keys whose values are tables of free keys (``plugins.extra``, ``engines``)."""
    return [key for key, annotation in _leaf_fields(model).items()
            if getattr(annotation, "__origin__", None) is dict]


_MOVED = {"auth.audit.replicas": "nats.replicas"}
"""Keys that were removed, and the key that now does their work."""


def _suggest(key: str, known: list[str]) -> str:
    moved = _MOVED.get(key.removeprefix(ENV_PREFIX).lower().replace("__", "."))
    if moved is not None:
        if key.startswith(ENV_PREFIX):
            moved = ENV_PREFIX + moved.upper().replace(".", "__")
        return f"; it was replaced by '{moved}'"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"


def _env_overrides(environ: Mapping[str, str], known: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_CONFIG:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        dotted = ".".join(path)
        below_table = any(dotted.startswith(table + ".") for table in _open_tables(MeshConfig))
        if dotted not in known and not below_table:
            env_known = [ENV_PREFIX + k.upper().replace(".", "__") for k in known]
            env_known += sorted(_ENV_NOT_CONFIG)
            raise ConfigError(f"unknown setting {name}{_suggest(name, env_known)}")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _coerce_lists(tree: dict[str, Any], model: type[BaseModel]) -> None:
    """Split comma-separated environment strings for list fields."""
    for name, field in model.model_fields.items():
        if name not in tree:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            if isinstance(tree[name], dict):
                _coerce_lists(tree[name], annotation)
        elif getattr(annotation, "__origin__", None) is list and isinstance(tree[name], str):
            tree[name] = [item.strip() for item in tree[name].split(",") if item.strip()]


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _explain(error: ValidationError, source: str, known: list[str]) -> ConfigError:
    lines = []
    for item in error.errors():
        dotted = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{dotted}' in {source}{_suggest(dotted, known)}")
        else:
            lines.append(f"'{dotted}' in {source}: {item['msg']} (got {item.get('input')!r})")
    return ConfigError("; ".join(lines))


def load_config(
    path: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    read_file: bool = True,
    **overrides: Any,
) -> MeshConfig:
    """Read the configuration.

    ``path`` defaults to ``$REVO_CONFIG`` or ``./revo.toml`` (skipped when absent).
    ``overrides`` are top-level sections or keys applied last (used by the CLI's flags).
    ``read_file=False`` ignores every file (tests build their configuration from scratch).
    Raises :class:`ConfigError` with the key to fix and a suggestion.
    """
    environ = os.environ if environ is None else environ
    known = _known_keys(MeshConfig)
    data: dict[str, Any] = {}
    source = "defaults"
    named = path or environ.get("REVO_CONFIG")
    file = Path(named) if named else Path("revo.toml")
    if read_file and (named or file.exists()):
        try:
            data = tomllib.loads(file.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {file} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}") from exc
        source = str(file)
    env = _env_overrides(environ, known)
    _coerce_lists(env, MeshConfig)
    if env:
        source = f"{source} or the environment" if source != "defaults" else "the environment"
    try:
        return MeshConfig.model_validate(_merge(_merge(data, env), overrides))
    except ValidationError as exc:
        raise _explain(exc, source, known) from None


def to_environment(config: MeshConfig) -> dict[str, str]:
    """The ``REVO_*`` variables that give a process started with them (and no file) this
    configuration: one per value that differs from its default (how ``revo up`` hands an
    in-memory configuration to its children). ConfigError for a value that variables cannot
    carry (a list of tables such as ``models.catalog``, a key such as a method path): such a
    configuration belongs in a revo.toml (``REVO_CONFIG``)."""
    out: dict[str, str] = {}

    def walk(path: list[str], value: Any) -> None:
        name = ENV_PREFIX + "__".join(path).upper()
        if isinstance(value, dict):
            for key, item in value.items():
                if not re.fullmatch(r"[A-Za-z0-9_]+", str(key)):
                    raise ConfigError(f"{'.'.join([*path, str(key)])}: an environment "
                                      "variable cannot name this key; use a revo.toml")
                walk([*path, str(key)], item)
        elif isinstance(value, list):
            if any(isinstance(item, dict | list) or "," in str(item) for item in value):
                raise ConfigError(f"{'.'.join(path)}: an environment variable cannot carry "
                                  "this list; use a revo.toml")
            out[name] = ",".join(str(item) for item in value)
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif value is not None:
            out[name] = str(value)

    walk([], config.model_dump(mode="json", exclude_defaults=True))
    return out
