"""The cluster profile's pieces that need no server: how children get the configuration,
Envoy over several gateways, and the ports chosen before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.config import CatalogModel, load_config, to_environment
from mesh.embedded.cluster import CLUSTER_GATEWAYS, ClusterLauncher
from mesh.embedded.envoy import render_config
from mesh.errors import ConfigError


def test_an_in_memory_configuration_travels_as_revo_variables(tmp_path: Path) -> None:
    config = load_config(environ={}, read_file=False, home=str(tmp_path),
                         plugins={"only": ["echo", "parallel"]},
                         auth={"enabled": False, "audit": {"enabled": False}},
                         nats={"replicas": 3}, engines={"recall": {"milvus_uri": "http://x"}})

    environment = to_environment(config)

    assert environment["REVO_PLUGINS__ONLY"] == "echo,parallel"
    assert environment["REVO_AUTH__ENABLED"] == "false"
    assert environment["REVO_NATS__REPLICAS"] == "3"
    assert "REVO_GATEWAY__ADDRESS" not in environment  # defaults are not repeated
    again = load_config(environ=environment, read_file=False)
    assert again.model_dump(exclude={"engines"}) == config.model_dump(exclude={"engines"})
    assert again.engine("recall").plugin_settings() == {"milvus_uri": "http://x"}


def test_a_configuration_variables_cannot_carry_names_its_key() -> None:
    config = load_config(environ={}, read_file=False)
    config.models.catalog = [CatalogModel(name="m", provider="openai")]

    with pytest.raises(ConfigError, match=r"models\.catalog.*revo\.toml"):
        to_environment(config)


def test_envoy_balances_over_every_gateway_and_checks_their_health() -> None:
    config = load_config(environ={}, read_file=False)
    first = config.gateway
    second = first.model_copy(update={"address": "127.0.0.1:50052",
                                      "http_address": "127.0.0.1:8001"})

    rendered = render_config(config, gateways=[first, second])

    clusters = {c["name"]: c for c in rendered["static_resources"]["clusters"]}
    ports = {name: [e["endpoint"]["address"]["socket_address"]["port_value"]
                    for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]
             for name, cluster in clusters.items()}
    assert ports == {"gateway_grpc": [50051, 50052], "gateway_http": [8000, 8001]}
    assert "grpc_health_check" in clusters["gateway_grpc"]["health_checks"][0]
    assert clusters["gateway_http"]["health_checks"][0]["http_health_check"]["path"] == "/health"
    assert all("outlier_detection" in cluster for cluster in clusters.values())


def test_port_zero_becomes_free_ports_known_before_anything_starts(tmp_path: Path) -> None:
    config = load_config(environ={}, read_file=False, home=str(tmp_path),
                         gateway={"address": "127.0.0.1:0", "http_address": "127.0.0.1:0",
                                  "metrics_address": ""},
                         envoy={"address": "127.0.0.1:0", "admin_address": "127.0.0.1:0"})

    launcher = ClusterLauncher(config)

    gateways = list(launcher.gateways.values())
    assert len(gateways) == CLUSTER_GATEWAYS
    addresses = [g.address for g in gateways] + [g.http_address for g in gateways] + [
        launcher.config.envoy.address, launcher.config.envoy.admin_address]
    assert len(set(addresses)) == len(addresses)
    assert not any(a.endswith(":0") for a in addresses)
    assert [g.metrics_address for g in gateways] == ["", ""]  # off stays off
    assert launcher.config.gateway == gateways[0]
    assert config.envoy.address == "127.0.0.1:0"  # the caller's configuration is not changed
