"""API keys without servers: their shape, expiry bounds, role caps, stored records, and the
gateway-side check against mirrored entries (what ``tests/integration/test_api_keys.py``
shows through real gateways)."""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from typing import Any, cast

import pytest

from mesh.auth.key_cache import ApiKeyCache
from mesh.auth.keys import ApiKey, key_expiry, parse_api_key, secret_hash
from mesh.auth.roles import lower_role, role_within
from mesh.auth.users import User
from mesh.config import ApiKeySettings
from mesh.errors import InvalidArgument, Reason, Unauthenticated

KEY_ID = "0123456789abcdef"
SECRET = secrets.token_urlsafe(32)
NOW = 1_800_000_000.0


@pytest.mark.parametrize("token", [
    "revo_", "revo_x", f"revo_{KEY_ID}", f"revo_{KEY_ID}_", f"revo_{KEY_ID}_short",
    f"revo_{KEY_ID.upper()}_{SECRET}", f"revo_{KEY_ID}0_{SECRET}", f"revo_{KEY_ID}_{SECRET}x",
    f"revo_{KEY_ID}_{SECRET[:-1]}!", f"revo_{KEY_ID}_{SECRET[:-1]} ", f"revo__{SECRET}",
    f"REVO_{KEY_ID}_{SECRET}",
])
def test_malformed_keys_are_unauthenticated_with_the_expected_shape(token: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        parse_api_key(token)
    assert "expected revo_<16 hex digits>_<43-character secret>" in refused.value.message
    assert SECRET[:20] not in refused.value.message  # never echoes what may be a secret


def test_a_well_formed_key_parses_into_id_and_secret() -> None:
    assert parse_api_key(f"revo_{KEY_ID}_{SECRET}") == (KEY_ID, SECRET)
    # the secret's alphabet includes '_' and '-'
    assert parse_api_key(f"revo_{KEY_ID}_{'_-' * 21}a") == (KEY_ID, "_-" * 21 + "a")


def test_expiry_defaults_and_bounds() -> None:
    settings = ApiKeySettings(default_ttl_s=3600, max_ttl_s=7200)
    assert key_expiry(settings, NOW) == NOW + 3600
    assert key_expiry(settings, NOW, expires_in_s=60) == NOW + 60
    assert key_expiry(settings, NOW, expires_at=NOW + 7200) == NOW + 7200
    for kwargs, words in (({"expires_in_s": 0}, "expires_in_s must be at least 1 s"),
                          ({"expires_in_s": 7201}, "expires_in_s must be at most 7200 s"),
                          ({"expires_at": NOW - 1}, "expires_at must be at least 1 s"),
                          ({"expires_at": NOW + 9000}, "expires_at must be at most")):
        with pytest.raises(InvalidArgument) as refused:
            key_expiry(settings, NOW, **kwargs)
        assert words in refused.value.message


def test_a_keys_role_is_capped_by_the_owners() -> None:
    assert role_within("viewer", "developer")
    assert role_within("developer", "developer")
    assert not role_within("admin", "developer")
    assert not role_within("root", "admin")
    assert lower_role("admin", "analyst") == "analyst"
    assert lower_role("viewer", "admin") == "viewer"


def test_a_stored_record_holds_the_hash_and_loads_with_fields_it_does_not_know() -> None:
    key = ApiKey(KEY_ID, "ci", "alice", "developer", NOW, NOW + 60, secret_hash(SECRET))
    stored = key.encode()
    assert SECRET.encode() not in stored
    assert SECRET not in repr(key)
    assert b"last_used_at" not in stored  # kept in its own entry
    later = json.loads(stored) | {"scopes": ["recall"]}  # written by a later version
    assert ApiKey.decode(json.dumps(later).encode()) == key


def _cache(key: ApiKey, owner: User | None) -> ApiKeyCache:
    cache = ApiKeyCache(cast(Any, None), cast(Any, None))  # no NATS: entries fed by hand
    cache._put(f"keys.{key.id}", key.encode())
    if owner is not None:
        cache._put(f"users.{owner.username}", owner.encode())
    return cache


ALICE = User("alice", "analyst", "scrypt$hash", created_at=NOW - 100)
GOOD = ApiKey(KEY_ID, "ci", "alice", "developer", NOW, NOW + 60, secret_hash(SECRET))
TOKEN = f"revo_{KEY_ID}_{SECRET}"


def test_the_cache_admits_a_good_key_with_the_lower_of_its_and_its_owners_role() -> None:
    key, role = _cache(GOOD, ALICE).authenticate(TOKEN, now=NOW + 1)
    assert (key.owner, role) == ("alice", "analyst")


@pytest.mark.parametrize(("key", "owner", "token", "words", "reason"), [
    (GOOD, ALICE, f"revo_{KEY_ID}_{secrets.token_urlsafe(32)}", "unknown API key",
     Reason.UNAUTHENTICATED),
    (GOOD, ALICE, f"revo_{'f' * 16}_{SECRET}", "unknown API key", Reason.UNAUTHENTICATED),
    (replace(GOOD, revoked_at=NOW), ALICE, TOKEN,
     f"API key {KEY_ID} ('ci') was revoked", Reason.TOKEN_REVOKED),
    (replace(GOOD, expires_at=NOW), ALICE, TOKEN,
     f"API key {KEY_ID} ('ci') expired at", Reason.TOKEN_EXPIRED),
    (GOOD, None, TOKEN, "its owner 'alice' no longer exists", Reason.TOKEN_REVOKED),
    (GOOD, User("alice", "analyst", "h", created_at=NOW + 1), TOKEN,
     "its owner 'alice' no longer exists", Reason.TOKEN_REVOKED),
    (GOOD, User("alice", "analyst", "h", disabled=True), TOKEN, "owner 'alice' is disabled",
     Reason.TOKEN_REVOKED),
])
def test_the_cache_says_why_a_key_is_refused(key: ApiKey, owner: User | None, token: str,
                                             words: str, reason: Reason) -> None:
    with pytest.raises(Unauthenticated) as refused:
        _cache(key, owner).authenticate(token, now=NOW + 1)
    assert words in refused.value.message
    assert refused.value.reason == reason


def test_a_deleted_entry_leaves_the_cache() -> None:
    cache = _cache(GOOD, ALICE)
    cache._delete(f"keys.{KEY_ID}")
    with pytest.raises(Unauthenticated, match="unknown API key"):
        cache.authenticate(TOKEN, now=NOW + 1)
