"""The NATS header block codec of the mesh's direct path."""

from __future__ import annotations

from mesh.transport import headers as h
from mesh.transport.connection import encode_headers, parse_headers


def test_headers_round_trip() -> None:
    values = {h.REQUEST_ID: "abc-1", h.TIMEOUT_MS: "250", h.TRACEPARENT: "00-1-2-01"}
    block = encode_headers(values)
    assert block.startswith(b"NATS/1.0\r\n")
    assert block.endswith(b"\r\n\r\n")
    assert parse_headers(block) == values


def test_inline_status_is_read_as_the_nats_status() -> None:
    assert parse_headers(b"NATS/1.0 503\r\n\r\n") == {h.NATS_STATUS: "503"}
    parsed = parse_headers(b"NATS/1.0 408 Request Timeout\r\nA: b\r\n\r\n")
    assert parsed == {h.NATS_STATUS: "408", "Description": "Request Timeout", "A": "b"}


def test_header_values_keep_colons() -> None:
    block = encode_headers({h.MESSAGE: "bad value: x"})
    assert parse_headers(block)[h.MESSAGE] == "bad value: x"
