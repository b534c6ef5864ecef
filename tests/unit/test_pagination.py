"""mesh.pagination: page sizes, opaque tokens bound to their filters, and pages that hold
still while items are added and removed."""

from __future__ import annotations

import pytest

from mesh.errors import InvalidArgument
from mesh.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
    page_size,
    take_page,
)


def test_page_size_defaults_caps_and_refuses_negative() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(7) == 7
    assert page_size(MAX_PAGE_SIZE + 1) == MAX_PAGE_SIZE
    assert page_size(0, default=10, maximum=20) == 10
    with pytest.raises(InvalidArgument, match="page_size must not be negative, got -1"):
        page_size(-1)


def test_a_token_round_trips_and_is_opaque() -> None:
    token = encode_page_token((12, "abc"), ["owner", 3])

    assert "abc" not in token
    assert "=" not in token
    assert decode_page_token(token, ["owner", 3], (int, str)) == (12, "abc")
    assert decode_page_token("", ["owner", 3]) is None


@pytest.mark.parametrize("token", ["nonsense!", "e30", "W10", "WzEsImEiLFsxXV0",
                                   encode_page_token(("x", "y"), None), "A" * 5000])
def test_a_token_this_list_did_not_make_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument, match="pass the previous page's next_page_token"):
        decode_page_token(token, None, (int, str))


def test_a_token_with_other_filters_is_invalid_argument() -> None:
    token = encode_page_token((1,), {"state": 1})

    with pytest.raises(InvalidArgument, match="other filters"):
        decode_page_token(token, {"state": 2}, (int,))


def test_pages_neither_skip_nor_repeat_while_items_change() -> None:
    items = list(range(0, 100, 2))
    at_start = set(items)
    seen: list[int] = []
    after = None
    while True:
        page, after = take_page(items, lambda i: i, 7, after)
        seen += page
        items.append(1000 + len(seen))  # added after the cursor
        items.remove(page[0])  # removed before it
        if after is None:
            break
    assert len(seen) == len(set(seen))
    assert at_start <= set(seen)
    assert seen == sorted(seen)


def test_descending_pages() -> None:
    first, after = take_page(["a", "c", "b", "d"], lambda s: s, 3, descending=True)
    assert (first, after) == (["d", "c", "b"], "b")
    assert take_page(["a", "c", "b", "d"], lambda s: s, 3, after, descending=True) == (
        ["a"], None)
