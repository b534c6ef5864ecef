"""NATS subjects, queue groups, registry keys and header values, built from valid tokens."""

from __future__ import annotations

import pytest

from mesh.transport import headers, subjects

ECHO = "revo.echo.v1.EchoService"


def test_method_subject_is_prefixed_service_and_method() -> None:
    assert subjects.method_subject(ECHO, "Echo") == "revo.rpc.revo.echo.v1.EchoService.Echo"


def test_service_wildcard_matches_the_methods_of_one_service() -> None:
    assert subjects.service_wildcard(ECHO) == "revo.rpc.revo.echo.v1.EchoService.*"


def test_queue_group_is_per_service() -> None:
    assert subjects.queue_group(ECHO) == "revo.revo.echo.v1.EchoService"
    assert subjects.queue_group("revo.mesh.v1.MeshService") != subjects.queue_group(ECHO)


def test_method_round_trips_through_its_subject() -> None:
    subject = subjects.method_subject(ECHO, "Count")

    assert subjects.method_from_subject(subject) == "Count"


def test_grpc_path() -> None:
    assert subjects.grpc_path(ECHO, "Echo") == "/revo.echo.v1.EchoService/Echo"


def test_registry_key() -> None:
    assert subjects.registry_key("host-1_a") == "nodes.host-1_a"


def test_application_subjects_never_start_with_dollar() -> None:
    for subject in (subjects.method_subject(ECHO, "Echo"), subjects.service_wildcard(ECHO),
                    subjects.queue_group(ECHO)):
        assert not subject.startswith("$")


@pytest.mark.parametrize("service", [
    "EchoService",                  # no package
    "",
    "revo.echo.v1.",                # empty last token
    ".revo.echo.v1.EchoService",    # leading dot
    "revo..echo.EchoService",       # empty token
    "revo.*.EchoService",           # wildcard
    "revo.>",
    "revo.echo v1.EchoService",     # space
    "$SYS.echo.EchoService",
    "revo.echo-v1.EchoService",
    "revo.1echo.EchoService",       # token starting with a digit
])
def test_invalid_service_names_are_refused(service: str) -> None:
    with pytest.raises(ValueError, match="service"):
        subjects.method_subject(service, "Echo")
    with pytest.raises(ValueError, match="service"):
        subjects.service_wildcard(service)
    with pytest.raises(ValueError, match="service"):
        subjects.queue_group(service)


@pytest.mark.parametrize("method", ["Echo.Foo", "", "*", ">", "Echo Foo", "$Echo", "1Echo"])
def test_invalid_method_names_are_refused(method: str) -> None:
    with pytest.raises(ValueError, match="method"):
        subjects.method_subject(ECHO, method)


@pytest.mark.parametrize("node_id", ["node 1", "", "node.1", "node*", "x" * 129, "nöde"])
def test_invalid_node_ids_are_refused(node_id: str) -> None:
    with pytest.raises(ValueError, match="node id"):
        subjects.registry_key(node_id)


def test_a_trailing_newline_is_refused_everywhere() -> None:
    # A newline in a subject would end the NATS protocol line early.
    with pytest.raises(ValueError, match="method"):
        subjects.method_subject(ECHO, "Echo\n")
    with pytest.raises(ValueError, match="service"):
        subjects.queue_group(ECHO + "\n")
    with pytest.raises(ValueError, match="node id"):
        subjects.registry_key("node-1\n")


def test_longest_node_id_is_accepted() -> None:
    assert subjects.registry_key("x" * 128) == "nodes." + "x" * 128


def test_header_text_is_one_line() -> None:
    text = headers.header_text("line one\r\nline two\nline three\r")

    assert "\r" not in text
    assert "\n" not in text
    assert text.split() == ["line", "one", "line", "two", "line", "three"]


def test_header_text_keeps_short_text_unchanged() -> None:
    assert headers.header_text("engine 'echo' is stopping") == "engine 'echo' is stopping"


def test_header_text_bounds_length_and_marks_the_cut() -> None:
    text = headers.header_text("x" * 5000)

    assert len(text) == 1024
    assert text.endswith("…")
    assert headers.header_text("y" * 50, limit=10) == "y" * 9 + "…"
    assert headers.header_text("y" * 10, limit=10) == "y" * 10


def test_header_names_are_unique() -> None:
    names = [value for name, value in vars(headers).items()
             if name.isupper() and isinstance(value, str)]

    assert len(names) == len({name.lower() for name in names})
