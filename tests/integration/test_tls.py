"""TLS: the gateway's gRPC port (server TLS and mutual TLS), and the mesh's own connections
to a NATS that serves TLS, verifies client certificates and requires a user. Certificates
come from a throwaway CA made for each test."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.client import MeshClient, client_credentials
from mesh.config import load_config
from mesh.embedded.nats_server import NatsServer
from mesh.errors import ConfigError
from mesh.gateway import Gateway
from mesh.gateway.server import server_credentials
from mesh.runtime.node import Node
from revo_engine_echo.v1 import echo_pb2, echo_pb2_grpc

ONLY_ECHO = {"only": ["echo"]}


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    """a client certificate from another CA"""
    stranger_key: Path

    def read(self, path: Path) -> bytes:
        return path.read_bytes()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], common_name: str,
          usage: x509.ObjectIdentifier, *, server: bool) -> tuple[x509.Certificate,
                                                                 ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture
def pki(tmp_path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = _ca("revo test CA")
    other_ca = _ca("somebody else's CA")
    server = _leaf(ca, "revo server", ExtendedKeyUsageOID.SERVER_AUTH, server=True)
    client = _leaf(ca, "revo client", ExtendedKeyUsageOID.CLIENT_AUTH, server=False)
    stranger = _leaf(other_ca, "stranger", ExtendedKeyUsageOID.CLIENT_AUTH, server=False)
    return Pki(
        ca=_write_cert(ca[0], folder / "ca.pem"),
        server_cert=_write_cert(server[0], folder / "server.pem"),
        server_key=_write_key(server[1], folder / "server.key"),
        client_cert=_write_cert(client[0], folder / "client.pem"),
        client_key=_write_key(client[1], folder / "client.key"),
        stranger_cert=_write_cert(stranger[0], folder / "stranger.pem"),
        stranger_key=_write_key(stranger[1], folder / "stranger.key"),
    )


async def _echo(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        reply = await echo_pb2_grpc.EchoServiceStub(channel).Echo(
            echo_pb2.EchoRequest(payload=b"over tls"), timeout=3)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    assert reply.payload == b"over tls"
    return grpc.StatusCode.OK


async def _echo_with(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = (grpc.aio.secure_channel(target, credentials) if credentials is not None
               else grpc.aio.insecure_channel(target))
    try:
        return await _echo(channel)
    finally:
        await channel.close(None)


async def test_gateway_serves_tls_and_refuses_plain_text(mesh_harness, pki):
    mesh = await mesh_harness(plugins=ONLY_ECHO, gateway={"tls": {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
        "ca_file": str(pki.ca)}})
    trusted = grpc.ssl_channel_credentials(pki.read(pki.ca))
    assert await _echo_with(mesh.target, trusted) == grpc.StatusCode.OK
    # plain text, or a client that does not trust the gateway's CA, gets nowhere
    assert await _echo_with(mesh.target, None) == grpc.StatusCode.UNAVAILABLE
    assert await _echo_with(mesh.target, grpc.ssl_channel_credentials(
        pki.read(pki.stranger_cert))) == grpc.StatusCode.UNAVAILABLE

    # local tools connect with the credentials the configuration describes
    credentials = client_credentials(mesh.config)
    assert credentials is not None
    async with MeshClient(mesh.target, timeout=3, credentials=credentials) as client:
        assert [n.id for n in await client.list_nodes()] == [mesh.nodes[0].id]


async def test_gateway_with_mutual_tls_wants_a_client_certificate_from_its_ca(mesh_harness,
                                                                              pki):
    mesh = await mesh_harness(plugins=ONLY_ECHO, gateway={"tls": {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
        "client_ca_file": str(pki.ca), "require_client_cert": True}})
    ca = pki.read(pki.ca)
    assert await _echo_with(mesh.target, grpc.ssl_channel_credentials(ca)) == \
        grpc.StatusCode.UNAVAILABLE
    assert await _echo_with(mesh.target, grpc.ssl_channel_credentials(
        ca, pki.read(pki.stranger_key), pki.read(pki.stranger_cert))) == \
        grpc.StatusCode.UNAVAILABLE
    assert await _echo_with(mesh.target, grpc.ssl_channel_credentials(
        ca, pki.read(pki.client_key), pki.read(pki.client_cert))) == grpc.StatusCode.OK
    assert await _echo_with(mesh.target, None) == grpc.StatusCode.UNAVAILABLE


def test_incomplete_gateway_tls_settings_are_config_errors(pki):
    def config(**tls: object):
        return load_config(environ={}, read_file=False, gateway={"tls": tls})

    assert server_credentials(config()) is None  # no certificate: plain text
    with pytest.raises(ConfigError, match="cert_file and key_file"):
        server_credentials(config(cert_file=str(pki.server_cert)))
    with pytest.raises(ConfigError, match="client_ca_file"):
        server_credentials(config(cert_file=str(pki.server_cert), key_file=str(pki.server_key),
                                  require_client_cert=True))
    with pytest.raises(ConfigError, match="cannot read"):
        server_credentials(config(cert_file=str(pki.server_cert) + ".missing",
                                  key_file=str(pki.server_key)))


@pytest.fixture
async def secure_nats(tmp_path, pki):
    """A NATS that serves TLS only, wants a client certificate from the CA, and a user."""
    server = NatsServer(tmp_path / "nats", tls_cert_file=pki.server_cert,
                        tls_key_file=pki.server_key, tls_ca_file=pki.ca,
                        users={"mesh": "mesh password"}).start()
    yield server
    server.stop()


async def test_mesh_runs_over_nats_with_tls_client_certificates_and_a_user(
        secure_nats, mesh_harness, pki):
    assert secure_nats.url.startswith("tls://")
    mesh = await mesh_harness(plugins=ONLY_ECHO, nats={
        "url": secure_nats.url, "tls_ca_file": str(pki.ca),
        "tls_cert_file": str(pki.client_cert), "tls_key_file": str(pki.client_key),
        "user": "mesh", "password": "mesh password"})
    assert await _echo(mesh.channel) == grpc.StatusCode.OK  # gateway -> NATS -> node


async def _fails_to_start(part: Gateway | Node, bound_s: float) -> str:
    """How starting ``part`` failed (it must fail, and not keep trying forever)."""
    try:
        await asyncio.wait_for(part.start(), bound_s)
    except TimeoutError:
        pytest.fail(f"{type(part).__name__}.start() was still trying after {bound_s:g} s; "
                    "it must give up after nats.connect_timeout_s with the reason")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".lower()
    finally:
        await part.stop()
    pytest.fail(f"{type(part).__name__} started against a NATS it should not reach")


async def test_wrong_nats_security_settings_fail_with_the_reason(secure_nats, mesh_config,
                                                                 pki):
    timeout_s = 1.0
    client_tls = {"tls_ca_file": str(pki.ca), "tls_cert_file": str(pki.client_cert),
                  "tls_key_file": str(pki.client_key)}
    no_tls = mesh_config(nats={"url": secure_nats.url, "connect_timeout_s": timeout_s,
                               "user": "mesh", "password": "mesh password"})
    no_user = mesh_config(nats={"url": secure_nats.url, "connect_timeout_s": timeout_s,
                                **client_tls})
    wrong_password = mesh_config(nats={"url": secure_nats.url, "connect_timeout_s": timeout_s,
                                       "user": "mesh", "password": "guess", **client_tls})
    bound_s = timeout_s + 5
    untrusted, anonymous, guessed = await asyncio.gather(
        _fails_to_start(Node(no_tls), bound_s),
        _fails_to_start(Gateway(no_user), bound_s),
        _fails_to_start(Gateway(wrong_password), bound_s))
    assert any(word in untrusted for word in ("certificate", "ssl", "tls")), untrusted
    assert "authorization" in anonymous, anonymous
    assert "authorization" in guessed, guessed
