"""AIP-158 pagination, shared by every list of the mesh and its engines.

A list request has ``int32 page_size`` and ``string page_token``; its response has
``string next_page_token``, empty on the last page. An engine calls:

- :func:`page_size` on the request's ``page_size``: 0 is the list's default, more than its
  maximum is the maximum, negative is ``INVALID_ARGUMENT``;
- :func:`decode_page_token` on the request's ``page_token``: the position the previous page
  ended at (``None`` for the first page), or ``INVALID_ARGUMENT`` for a token this list did
  not return, or one made for other filters;
- :func:`take_page` to pick the page after that position from the items in the list's
  order, and :func:`encode_page_token` to make ``next_page_token`` from where it ended.

A token is opaque to callers (URL-safe base64 of a small JSON document: a version, a
fingerprint of the request's filters, the position). It names the last item returned, not
an offset, so items added or removed elsewhere in the order neither shift nor repeat later
pages; what each list guarantees beyond that is in its proto's comments.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from mesh.errors import InvalidArgument

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "Position", "decode_page_token",
           "encode_page_token", "page_size", "take_page"]

DEFAULT_PAGE_SIZE = 100
"""What ``page_size`` 0 means, unless a list says otherwise."""
MAX_PAGE_SIZE = 1000
"""The most items a page holds, unless a list says otherwise; larger sizes are cut to it."""

Position = tuple[str | int | float | bool, ...]
"""Where a page ended: the sort key of its last item (JSON scalars only)."""
T = TypeVar("T")

_VERSION = 1
_BAD_TOKEN = ("page_token is not one this list returned: pass the previous page's "
              "next_page_token unchanged, or leave it empty for the first page")


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE,
              maximum: int = MAX_PAGE_SIZE) -> int:
    """The page size to use for a request's ``page_size``: ``default`` for 0, at most
    ``maximum``; negative is :class:`InvalidArgument`."""
    if requested < 0:
        raise InvalidArgument(violations=[(
            "page_size", f"must not be negative, got {requested} (0 means {default}; at "
                         f"most {maximum})")])
    return min(requested or default, maximum)


def _fingerprint(query: object) -> str:
    text = json.dumps(query, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_page_token(position: Position, query: object = None) -> str:
    """The ``next_page_token`` for a page that ended at ``position``, for a request whose
    filters are ``query`` (any JSON-able value: the same filters must come with the token)."""
    document = json.dumps([_VERSION, _fingerprint(query), list(position)],
                          separators=(",", ":"))
    return base64.urlsafe_b64encode(document.encode()).decode().rstrip("=")


def decode_page_token(token: str, query: object = None,
                      shape: Sequence[type] = ()) -> Position | None:
    """The position a request's ``page_token`` names; ``None`` when it is empty.

    ``query`` must equal what :func:`encode_page_token` was given, and the position must
    have ``shape``'s types, one per part, else :class:`InvalidArgument`."""
    if not token:
        return None
    try:
        if len(token) > 4096:
            raise ValueError("too long")
        document = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        version, fingerprint, parts = document
        if version != _VERSION or not isinstance(parts, list):
            raise ValueError("unknown version")
        position = tuple(parts)
        if shape and (len(position) != len(shape) or not all(
                type(part) is kind for part, kind in zip(position, shape, strict=True))):
            raise ValueError("wrong shape")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(violations=[("page_token", _BAD_TOKEN)]) from None
    if fingerprint != _fingerprint(query):
        raise InvalidArgument(violations=[(
            "page_token", "was made for a listing with other filters: send the same "
                          "filters with every page, or leave page_token empty to start "
                          "again")])
    return position


def take_page(items: Iterable[T], key: Callable[[T], Any], size: int,
              after: Any = None, *, descending: bool = False) -> tuple[list[T], Any]:
    """The first ``size`` of ``items`` in ``key`` order (``descending``: from the largest
    key) that come after ``after`` (every item when ``after`` is None), and the key of the
    page's last item when more items follow (None on the last page). Keys must be unique.
    O(n log size): items need not be sorted."""
    if after is None:
        candidates = items
    elif descending:
        candidates = (i for i in items if key(i) < after)
    else:
        candidates = (i for i in items if key(i) > after)
    chosen = (heapq.nlargest if descending else heapq.nsmallest)(size + 1, candidates, key=key)
    if len(chosen) <= size:
        return chosen, None
    return chosen[:size], key(chosen[size - 1])
