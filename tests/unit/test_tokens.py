"""Tokens, password hashes, sealed identity and declared permissions, without sockets.

Every refused token must raise :class:`Unauthenticated` with a message that tells the
caller what is wrong; a token that should be refused and is not is a way into the mesh.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from google.protobuf import descriptor_pb2, descriptor_pool

from mesh.auth import passwords
from mesh.auth.identity import IdentitySeal
from mesh.auth.roles import (
    EXECUTE,
    MANAGE,
    PUBLIC,
    READ,
    WRITE,
    declared_permission,
    grants,
    permission_name,
)
from mesh.auth.tokens import ACCESS, REFRESH, Keyring, TokenService
from mesh.config import AuthSettings
from mesh.errors import ConfigError, Unauthenticated
from mesh.transport import headers as h
from mesh.v1 import options_pb2
from tests.plugins import guarded

USER, ROLE = "alice", "developer"


# -- helpers ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hand_made(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A JWT built without pyjwt (which refuses to make the dangerous ones)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _claims(settings: AuthSettings, **changes: Any) -> dict[str, Any]:
    """A payload the mesh would accept, with ``changes`` (None removes a claim)."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": settings.issuer, "aud": settings.audience, "sub": USER, "role": ROLE,
        "typ": ACCESS, "gen": 0, "jti": "0123456789abcdef", "iat": now, "nbf": now,
        "exp": now + 600}
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def _hs256_service(home: Path, **settings: Any) -> TokenService:
    auth = AuthSettings(**settings)
    return TokenService(auth, Keyring.from_settings(auth, home, environ={}))


def _write_private(path: Path, key: Any) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _write_public(path: Path, key: Any) -> Path:
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _refused(service: TokenService, token: str, kind: str = ACCESS) -> str:
    with pytest.raises(Unauthenticated) as caught:
        service.verify(token, kind)
    return caught.value.message


@pytest.fixture
def hs256(tmp_path: Path) -> TokenService:
    return _hs256_service(tmp_path)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# -- HS256: issue and verify ------------------------------------------------------------


def test_hs256_round_trip(hs256: TokenService, tmp_path: Path) -> None:
    token, issued = hs256.issue(USER, ROLE, ACCESS, generation=7)
    claims = hs256.verify(token)
    assert (claims.user, claims.role, claims.kind, claims.generation) == (USER, ROLE, ACCESS, 7)
    assert claims.jti == issued.jti
    assert claims.expires_at - claims.issued_at == hs256.settings.access_ttl_s
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    assert header["kid"] == hs256.keyring.signing.kid
    # the secret was created once, under the home, and a second service shares it
    assert (tmp_path / "secrets" / "jwt.secret").exists()
    assert _hs256_service(tmp_path).verify(token).user == USER


def test_refresh_token_verifies_as_refresh_only(hs256: TokenService) -> None:
    refresh, _ = hs256.issue(USER, ROLE, REFRESH)
    assert hs256.verify(refresh, REFRESH).kind == REFRESH
    message = _refused(hs256, refresh, ACCESS)
    assert "refresh token" in message
    assert "access token" in message
    access, _ = hs256.issue(USER, ROLE, ACCESS)
    assert "access token" in _refused(hs256, access, REFRESH)


def test_each_token_has_its_own_id(hs256: TokenService) -> None:
    first, second = hs256.issue(USER, ROLE)[1], hs256.issue(USER, ROLE)[1]
    assert first.jti != second.jti


def test_token_signed_with_another_secret_is_refused(hs256: TokenService,
                                                     tmp_path: Path) -> None:
    other = _hs256_service(tmp_path / "elsewhere", key_id=hs256.keyring.signing.kid)
    token, _ = other.issue(USER, "admin")
    assert "signature does not verify" in _refused(hs256, token)


# -- every refused token ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_token_is_refused(hs256: TokenService, alg: str) -> None:
    token = _hand_made({"alg": alg, "typ": "JWT", "kid": hs256.keyring.signing.kid},
                       _claims(hs256.settings), None)
    assert "alg 'none'" in _refused(hs256, token)


def test_expired_token_is_refused(hs256: TokenService) -> None:
    token, _ = hs256.issue(USER, ROLE, now=time.time() - 3600, ttl_s=60)
    assert "expired" in _refused(hs256, token)


def test_cached_token_is_refused_once_it_expires(tmp_path: Path) -> None:
    service = _hs256_service(tmp_path, leeway_s=0)
    token, claims = service.issue(USER, ROLE, now=time.time() - 1, ttl_s=3)
    assert service.verify(token).jti == claims.jti  # verified, and now cached
    deadline = time.monotonic() + 5
    while time.time() <= claims.expires_at and time.monotonic() < deadline:
        time.sleep(0.05)
    message = _refused(service, token)
    assert "expired" in message
    assert "refresh it or sign in again" in message


def test_tampered_payload_is_refused(hs256: TokenService) -> None:
    token, _ = hs256.issue(USER, "viewer")
    header, payload, signature = token.split(".")
    claims = json.loads(_unb64(payload))
    claims["role"] = "admin"
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    assert "signature does not verify" in _refused(hs256, forged)


def test_tampered_signature_is_refused(hs256: TokenService) -> None:
    token, _ = hs256.issue(USER, ROLE)
    header, payload, signature = token.split(".")
    # the first character: the last one may only carry padding bits
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    assert "signature does not verify" in _refused(hs256, f"{header}.{payload}.{flipped}")


def _signed(service: TokenService, payload: dict[str, Any], **header: Any) -> str:
    key = service.keyring.signing
    return jwt.encode(payload, key.sign, algorithm=key.algorithm,
                      headers={"kid": key.kid, **header})


def test_wrong_audience_is_refused(hs256: TokenService) -> None:
    token = _signed(hs256, _claims(hs256.settings, aud="some-other-service"))
    message = _refused(hs256, token)
    assert "audience" in message
    assert hs256.settings.audience in message


def test_wrong_issuer_is_refused(hs256: TokenService) -> None:
    token = _signed(hs256, _claims(hs256.settings, iss="mallory"))
    message = _refused(hs256, token)
    assert "not issued by" in message
    assert hs256.settings.issuer in message


def test_token_not_valid_yet_is_refused(hs256: TokenService) -> None:
    token = _signed(hs256, _claims(hs256.settings, nbf=int(time.time()) + 3600))
    assert "not valid yet" in _refused(hs256, token)
    issued_later, _ = hs256.issue(USER, ROLE, now=time.time() + 3600)
    assert "not valid yet" in _refused(hs256, issued_later)


@pytest.mark.parametrize("claim", ["jti", "exp", "nbf", "iat", "sub", "aud", "iss"])
def test_token_missing_a_required_claim_is_refused(hs256: TokenService, claim: str) -> None:
    token = _signed(hs256, _claims(hs256.settings, **{claim: None}))
    assert f"lacks the '{claim}' claim" in _refused(hs256, token)


@pytest.mark.parametrize("claim", ["role", "typ"])
def test_token_without_role_or_type_is_refused(hs256: TokenService, claim: str) -> None:
    token = _signed(hs256, _claims(hs256.settings, **{claim: None}))
    assert "lacks a user, role, type" in _refused(hs256, token)


def test_unknown_key_id_is_refused(hs256: TokenService) -> None:
    token = _signed(hs256, _claims(hs256.settings), kid="retired-2019")
    message = _refused(hs256, token)
    assert "'retired-2019'" in message
    assert "sign in again" in message


def test_token_without_key_id_is_refused(hs256: TokenService) -> None:
    secret = hs256.keyring.signing.sign
    token = _hand_made({"alg": "HS256", "typ": "JWT"}, _claims(hs256.settings), secret)
    assert "key id None" in _refused(hs256, token)


@pytest.mark.parametrize("garbage", ["", "not-a-token", "a.b.c", "Bearer x.y", "....",
                                     "eyJhbGciOiJIUzI1NiJ9"])
def test_garbage_is_refused(hs256: TokenService, garbage: str) -> None:
    message = _refused(hs256, garbage)
    assert "not a JWT" in message or "invalid" in message, message


# -- RS256 and EdDSA --------------------------------------------------------------------


def _asymmetric_service(tmp_path: Path, key: Any, algorithm: str,
                        **settings: Any) -> TokenService:
    auth = AuthSettings(algorithm=algorithm,
                        signing_key_file=_write_private(tmp_path / f"{algorithm}.pem", key),
                        **settings)
    return TokenService(auth, Keyring.from_settings(auth, tmp_path, environ={}))


def test_rs256_round_trip(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    service = _asymmetric_service(tmp_path, rsa_key, "RS256")
    token, _ = service.issue(USER, ROLE)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert service.verify(token).user == USER
    assert not (tmp_path / "secrets" / "jwt.secret").exists()  # no shared secret needed


def test_eddsa_round_trip(tmp_path: Path) -> None:
    service = _asymmetric_service(tmp_path, ed25519.Ed25519PrivateKey.generate(), "EdDSA")
    token, _ = service.issue(USER, ROLE, REFRESH)
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    assert service.verify(token, REFRESH).role == ROLE


def test_key_of_the_wrong_type_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RS256 private key"):
        _asymmetric_service(tmp_path, ed25519.Ed25519PrivateKey.generate(), "RS256")
    with pytest.raises(ConfigError, match="signing_key_file"):
        Keyring.from_settings(AuthSettings(algorithm="EdDSA"), tmp_path, environ={})


def test_hs256_signed_with_the_rsa_public_key_is_refused(tmp_path: Path,
                                                          rsa_key: rsa.RSAPrivateKey) -> None:
    """Algorithm confusion: the public key is public, so HMAC with it proves nothing."""
    service = _asymmetric_service(tmp_path, rsa_key, "RS256")
    public_pem = _write_public(tmp_path / "public.pem", rsa_key).read_bytes()
    kid = service.keyring.signing.kid
    token = _hand_made({"alg": "HS256", "typ": "JWT", "kid": kid},
                       _claims(service.settings, role="admin"), public_pem)
    message = _refused(service, token)
    assert "'HS256'" in message
    assert "RS256" in message
    # also with the key in the DER form some libraries use as the 'secret'
    der = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    token = _hand_made({"alg": "HS256", "typ": "JWT", "kid": kid},
                       _claims(service.settings, role="admin"), der)
    assert "'HS256'" in _refused(service, token)


def test_rs256_token_claiming_eddsa_is_refused(tmp_path: Path,
                                                rsa_key: rsa.RSAPrivateKey) -> None:
    service = _asymmetric_service(tmp_path, rsa_key, "RS256")
    token, _ = service.issue(USER, ROLE)
    header, payload, signature = token.split(".")
    fields = json.loads(_unb64(header))
    fields["alg"] = "EdDSA"
    assert "'EdDSA'" in _refused(service, f"{_b64(json.dumps(fields).encode())}.{payload}."
                                          f"{signature}")


# -- key rotation -----------------------------------------------------------------------


def test_token_of_a_listed_old_key_still_verifies(tmp_path: Path,
                                                   rsa_key: rsa.RSAPrivateKey) -> None:
    (tmp_path / "old").mkdir()
    old = _asymmetric_service(tmp_path / "old", rsa_key, "RS256")
    old_token, _ = old.issue(USER, ROLE)
    new_key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "new").mkdir()
    verify_keys = {old.keyring.signing.kid: _write_public(tmp_path / "old.pub.pem", rsa_key)}
    new = _asymmetric_service(tmp_path / "new", new_key, "EdDSA", verify_keys=verify_keys)
    assert new.verify(old_token).user == USER  # nobody is signed out by the rotation
    new_token, _ = new.issue(USER, ROLE)
    assert jwt.get_unverified_header(new_token)["kid"] == new.keyring.signing.kid
    assert new.verify(new_token).user == USER
    # the old key only verifies: the old service does not know the new key
    assert "does not know" in _refused(old, new_token)


def test_token_of_an_unlisted_key_is_refused(tmp_path: Path,
                                             rsa_key: rsa.RSAPrivateKey) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    retired = _asymmetric_service(tmp_path / "a", rsa_key, "RS256")
    current = _asymmetric_service(tmp_path / "b", ed25519.Ed25519PrivateKey.generate(),
                                  "EdDSA")
    token, _ = retired.issue(USER, ROLE)
    assert "does not know" in _refused(current, token)


def test_token_of_another_key_claiming_a_listed_kid_is_refused(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    listed_kid = "rs-2024"
    verify_keys = {listed_kid: _write_public(tmp_path / "listed.pub.pem", rsa_key)}
    service = _asymmetric_service(tmp_path, ed25519.Ed25519PrivateKey.generate(), "EdDSA",
                                  verify_keys=verify_keys)
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(service.settings), impostor, algorithm="RS256",
                       headers={"kid": listed_kid})
    assert "signature does not verify" in _refused(service, token)


def test_hs256_rotation_with_an_old_secret(tmp_path: Path) -> None:
    old = _hs256_service(tmp_path / "old")
    old_token, _ = old.issue(USER, ROLE)
    old_secret = tmp_path / "old" / "secrets" / "jwt.secret"
    new = _hs256_service(tmp_path / "new", verify_keys={old.keyring.signing.kid: old_secret})
    assert new.keyring.signing.kid != old.keyring.signing.kid
    assert new.verify(old_token).user == USER
    unlisted = _hs256_service(tmp_path / "unlisted")
    assert "does not know" in _refused(unlisted, old_token)


# -- passwords --------------------------------------------------------------------------


def test_password_hash_never_holds_the_password() -> None:
    password = "correct horse battery staple"
    stored = passwords.hash_password(password)
    assert password not in stored
    assert password.encode().hex() not in stored
    assert base64.b64encode(password.encode()).decode() not in stored
    assert stored.startswith("scrypt$")
    assert passwords.hash_password(password) != stored  # salted
    assert passwords.verify_password(password, stored)
    assert not passwords.verify_password(password + "!", stored)
    assert not passwords.verify_password("", stored)


def test_no_stored_hash_costs_a_verification_and_fails() -> None:
    passwords.verify_password("warm-up-the-dummy", None)
    before = passwords._dummy.cache_info()
    assert passwords.verify_password("anything at all", None) is False
    after = passwords._dummy.cache_info()
    # the unknown user was checked against the dummy hash, as a known one would be
    assert after.hits == before.hits + 1
    # and the dummy's own password does not let anyone in
    assert passwords.verify_password("", None) is False


@pytest.mark.parametrize("stored", ["", "plaintext", "md5$abc", "scrypt$x$8$1$AAAA$AAAA",
                                    "scrypt$15$8$1$not base64$AAAA", "bcrypt$2b$..."])
def test_malformed_stored_hash_never_verifies(stored: str) -> None:
    assert passwords.verify_password("password", stored) is False


# -- sealed identity --------------------------------------------------------------------


P = "/revo.echo.v1.EchoService/Echo"


def _in(seconds: float) -> int:
    return int((time.time() + seconds) * 1000)


def test_identity_seal_opens_what_it_made() -> None:
    seal = IdentitySeal(b"k" * 48)
    headers = seal.headers("alice", "developer", P, _in(10))
    assert set(headers) == {h.CALLER, h.ROLE, h.IDENTITY}
    assert seal.open(headers, P) == ("alice", "developer")


def test_identity_without_a_seal_is_refused() -> None:
    seal = IdentitySeal(b"k" * 48)
    for headers in ({}, {h.CALLER: "admin", h.ROLE: "admin"},
                    {h.CALLER: "admin", h.ROLE: "admin", h.IDENTITY: ""},
                    {h.CALLER: "admin", h.ROLE: "admin", h.IDENTITY: "soon.abc"}):
        with pytest.raises(Unauthenticated, match="only through a gateway") as caught:
            seal.open(headers, P)
        assert h.IDENTITY in caught.value.message, headers


@pytest.mark.parametrize("change", [{h.CALLER: "admin"}, {h.ROLE: "admin"}])
def test_identity_with_changed_caller_or_role_is_refused(change: dict[str, str]) -> None:
    seal = IdentitySeal(b"k" * 48)
    headers = {**seal.headers("alice", "viewer", P, _in(10)), **change}
    with pytest.raises(Unauthenticated, match="not sealed by a gateway"):
        seal.open(headers, P)


def test_identity_with_extended_expiry_is_refused() -> None:
    seal = IdentitySeal(b"k" * 48)
    headers = seal.headers("alice", "viewer", P, _in(10))
    _, mac = headers[h.IDENTITY].split(".")
    headers[h.IDENTITY] = f"{_in(3600)}.{mac}"
    with pytest.raises(Unauthenticated, match="not sealed by a gateway"):
        seal.open(headers, P)


def test_identity_sealed_for_another_method_is_refused() -> None:
    seal = IdentitySeal(b"k" * 48)
    headers = seal.headers("alice", "viewer", P, _in(10))
    with pytest.raises(Unauthenticated, match="not sealed by a gateway"):
        seal.open(headers, "/revo.auth.v1.UserService/DeleteUser")


def test_forged_identity_seal_is_refused() -> None:
    seal = IdentitySeal(b"k" * 48)
    forged = {h.CALLER: "admin", h.ROLE: "admin", h.IDENTITY: f"{_in(10)}.AAAAAAAAAAAAAAAA"}
    with pytest.raises(Unauthenticated, match="not sealed by a gateway"):
        seal.open(forged, P)


def test_identity_sealed_with_another_key_is_refused() -> None:
    headers = IdentitySeal(b"x" * 48).headers("alice", "admin", P, _in(10))
    with pytest.raises(Unauthenticated, match="different identity key"):
        IdentitySeal(b"k" * 48).open(headers, P)


def test_expired_identity_is_refused() -> None:
    seal = IdentitySeal(b"k" * 48)
    headers = seal.headers("alice", "viewer", P, _in(10))
    expires = int(headers[h.IDENTITY].split(".")[0])  # rounded up to the second
    assert expires % 1000 == 0
    assert seal.open(headers, P, now_ms=expires) == ("alice", "viewer")
    with pytest.raises(Unauthenticated, match="expired"):
        seal.open(headers, P, now_ms=expires + 1)


def test_identity_key_is_shared_by_everyone_on_one_home(tmp_path: Path) -> None:
    from mesh.config import load_config

    config = load_config(environ={}, read_file=False, home=str(tmp_path))
    gateway_side = IdentitySeal.from_config(config, environ={})
    node_side = IdentitySeal.from_config(config, environ={})
    headers = gateway_side.headers("alice", "analyst", P, _in(10))
    assert node_side.open(headers, P) == ("alice", "analyst")
    assert (tmp_path / "secrets" / "identity.key").exists()
    other_home = load_config(environ={}, read_file=False, home=str(tmp_path / "other"))
    with pytest.raises(Unauthenticated):
        IdentitySeal.from_config(other_home, environ={}).open(headers, P)


# -- declared permissions ---------------------------------------------------------------


def test_methods_declare_their_permission() -> None:
    methods = guarded.GUARDED_SERVICE.methods_by_name
    assert declared_permission(methods["Read"]) == READ
    assert declared_permission(methods["Write"]) == WRITE
    assert declared_permission(methods["Execute"]) == EXECUTE
    assert declared_permission(methods["Manage"]) == MANAGE
    assert declared_permission(methods["Public"]) == PUBLIC


def test_method_with_no_declaration_needs_manage() -> None:
    assert declared_permission(guarded.GUARDED_SERVICE.methods_by_name["Undeclared"]) == MANAGE
    from grpc_health.v1 import health_pb2

    check = health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name["Check"]
    assert declared_permission(check) == MANAGE


def _odd_service() -> Any:
    """Methods declaring PERMISSION_UNSPECIFIED explicitly and a number no enum value has."""
    name = "revo/tokentest/v1/odd.proto"
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(name)
    except KeyError:
        file = descriptor_pb2.FileDescriptorProto(
            name=name, package="revo.tokentest.v1", syntax="proto3",
            dependency=[options_pb2.DESCRIPTOR.name])
        file.message_type.add(name="Nothing")
        service = file.service.add(name="OddService")
        for method_name, value in (("Unspecified", 0), ("Unknown", 99)):
            options = descriptor_pb2.MethodOptions()
            options.Extensions[options_pb2.permission] = value  # type: ignore[misc]
            service.method.add(name=method_name, input_type=".revo.tokentest.v1.Nothing",
                               output_type=".revo.tokentest.v1.Nothing").options.CopyFrom(
                                   options)
        pool.AddSerializedFile(file.SerializeToString())
    return pool.FindServiceByName("revo.tokentest.v1.OddService")


@pytest.mark.parametrize("method", ["Unspecified", "Unknown"])
def test_unspecified_or_unknown_permission_needs_manage(method: str) -> None:
    assert declared_permission(_odd_service().methods_by_name[method]) == MANAGE


@pytest.mark.parametrize(("role", "allowed"), [
    ("admin", {READ, WRITE, EXECUTE, MANAGE}),
    ("developer", {READ, WRITE, EXECUTE}),
    ("analyst", {READ, EXECUTE}),
    ("viewer", {READ}),
    ("", set()),
    ("root", set()),
])
def test_roles_grant_their_permissions(role: str, allowed: set[int]) -> None:
    for permission in (READ, WRITE, EXECUTE, MANAGE):
        assert grants(role, permission) == (permission in allowed), (
            role, permission_name(permission))
    assert grants(role, PUBLIC)
