"""A gateway's registry view, fed entries directly (no NATS): which nodes it routes to."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client

from mesh._gen.revo.mesh.v1 import mesh_pb2, registry_pb2
from mesh.registry import REGISTRY_STALL_S, RegistryView, file_set
from revo_engine_echo.v1 import echo_pb2

ECHO = "revo.echo.v1.EchoService"
HEARTBEAT_MS = 250


def _announcement(node_id: str, heartbeat_age_s: float) -> bytes:
    heartbeat = Timestamp()
    heartbeat.FromNanoseconds(int((time.time() - heartbeat_age_s) * 1e9))
    node = mesh_pb2.Node(id=node_id, heartbeat_at=heartbeat, engines=[mesh_pb2.Engine(
        name="echo", status=mesh_pb2.ENGINE_STATUS_RUNNING, services=[ECHO])])
    return registry_pb2.NodeAnnouncement(
        node=node, heartbeat_ms=HEARTBEAT_MS,
        files=file_set([echo_pb2.DESCRIPTOR.services_by_name["EchoService"]])
    ).SerializeToString()


def _ready_view() -> RegistryView:
    view = RegistryView(Client())
    view._ready = True  # as after start(): every change rebuilds the routes
    return view


def test_a_node_left_out_as_stale_is_routed_to_again_on_its_next_heartbeat() -> None:
    """A gateway whose loop was busy sees a node's heartbeats late. When another node
    leaves meanwhile, the rebuild leaves the late one out; its next heartbeat, which
    changes nothing but the time, must bring it back (it once waited for the expiry
    sweep, and calls got NO_LIVE_NODE from a mesh with a live node)."""
    view = _ready_view()
    view._put("nodes.a", _announcement("a", 0.0))
    view._put("nodes.b", _announcement("b", 0.0))
    view._put("nodes.c", _announcement("c", 0.0))
    assert view.snapshot.service_nodes[ECHO] == ["a", "b", "c"]

    view._put("nodes.b", _announcement("b", 1.0))  # its last heartbeat, seen late
    view._delete("nodes.a")  # a leaves: the rebuild finds b stale (c went on beating)
    assert view.snapshot.service_nodes[ECHO] == ["c"]

    view._put("nodes.b", _announcement("b", 0.0))  # b's next heartbeat arrives
    assert view.snapshot.service_nodes[ECHO] == ["b", "c"]


def test_a_node_silent_while_others_beat_is_forgotten() -> None:
    view = _ready_view()
    view._put("nodes.a", _announcement("a", 2.0))  # missed its heartbeats (0.75 s)
    view._put("nodes.b", _announcement("b", 0.0))
    view._rebuild()
    assert view.snapshot.service_nodes[ECHO] == ["b"]


def test_when_every_node_falls_silent_the_registry_stalled_and_they_stay_routed() -> None:
    """A nats-server dies and the registry bucket elects a leader (4 to 9 s): no heartbeat
    gets through from any node. Forgetting them all would fail every call; the view keeps
    them for up to REGISTRY_STALL_S, then forgets them."""
    view = _ready_view()
    view._put("nodes.a", _announcement("a", 5.0))
    view._put("nodes.b", _announcement("b", 5.2))
    view._rebuild()
    assert view.snapshot.service_nodes[ECHO] == ["a", "b"]

    view._put("nodes.a", _announcement("a", REGISTRY_STALL_S + 1))
    view._put("nodes.b", _announcement("b", REGISTRY_STALL_S + 1))
    view._rebuild()
    assert ECHO not in view.snapshot.service_nodes


def test_a_heartbeat_of_a_node_long_dead_does_not_route_to_it() -> None:
    view = _ready_view()
    view._put("nodes.old", _announcement("old", 60.0))
    view._put("nodes.old", _announcement("old", 59.0))
    assert ECHO not in view.snapshot.service_nodes
