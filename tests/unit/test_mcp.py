"""revo mcp without sockets: where it may listen, and how a mesh error reads as a tool error."""

from __future__ import annotations

import pytest

from mesh.errors import InvalidArgument, RateLimited, Unauthenticated
from mesh.mcp.access import describe
from mesh.mcp.server import loopback_address


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1:8765", ("127.0.0.1", 8765)), ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("[::1]:9000", ("::1", 9000)), ("localhost:1", ("localhost", 1)),
])
def test_loopback_addresses_are_accepted(address: str, expected: tuple[str, int]) -> None:
    assert loopback_address(address) == expected


@pytest.mark.parametrize("address", ["0.0.0.0:8765", "192.168.1.4:8765", "[::]:8765",
                                     "example.com:80"])
def test_other_addresses_are_refused_naming_why(address: str) -> None:
    with pytest.raises(ValueError, match="loopback only") as caught:
        loopback_address(address)
    assert "acts as the API key's owner" in str(caught.value)


@pytest.mark.parametrize("address", ["8765", "127.0.0.1:", "127.0.0.1:http", ":8765"])
def test_malformed_addresses_say_the_shape(address: str) -> None:
    with pytest.raises(ValueError, match="must be host:port"):
        loopback_address(address)


def test_a_tool_error_has_the_code_message_and_details() -> None:
    assert describe(InvalidArgument("top_k must be at most 100")) == (
        "INVALID_ARGUMENT: top_k must be at most 100")
    assert describe(RateLimited("over the limit", retry_after_s=2.0)) == (
        "RESOURCE_EXHAUSTED: over the limit (reason RATE_LIMITED; retry after 2 s)")
    assert describe(InvalidArgument(violations=[("text", "is empty")])) == (
        "INVALID_ARGUMENT: text is empty")
    assert describe(Unauthenticated("no token", reason="TOKEN_MISSING")) == (
        "UNAUTHENTICATED: no token (reason TOKEN_MISSING)")
