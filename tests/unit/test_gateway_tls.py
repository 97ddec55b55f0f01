"""The gateway over TLS (`gateway run --tls-cert/--tls-key`), and edge nodes and the operator that trust a CA
file: with a self-signed certificate made here (cryptography)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from tinymlops.agent.edgenode import EdgeNode
from tinymlops.commands.gateway import gateway
from tinymlops.errors import ConfigError
from tinymlops.fleet import FleetSimulator
from tinymlops.gateway.app import Gateway, server_tls
from tinymlops.store import DirectoryStore
from tinymlops_operator.config import Settings


def self_signed(folder: Path) -> tuple[Path, Path]:
    """tls.crt and tls.key of a certificate for 127.0.0.1, signed by itself (it is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tinymlops-gateway")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_the_gateway_serves_https_to_clients_that_trust_its_ca_only(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with Gateway(DirectoryStore(tmp_path / "store"), ssl_context=server_tls(str(cert), str(key))) as server:
        assert server.url.startswith("https://127.0.0.1:")
        trusting = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(cert)))
        async with aiohttp.ClientSession(connector=trusting) as http, http.get(f"{server.url}/healthz") as response:
            assert response.status == 200 and await response.json() == {"ok": True}
        async with aiohttp.ClientSession() as http:  # the system's CAs never signed it
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"{server.url}/healthz")


async def test_simulated_edge_nodes_trust_the_ca_file_they_are_given(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with Gateway(DirectoryStore(tmp_path / "store"), ssl_context=server_tls(str(cert), str(key))) as server:
        simulator = FleetSimulator([], namespace="edge", fleet="cams", gateway_url=server.url,
                                   publisher_key=Ed25519PrivateKey.generate().public_key(),
                                   samples=np.zeros((1, 4), np.float32), ca_file=str(cert))
        await simulator.start()
        try:
            assert simulator._http is not None
            status, _, _ = await EdgeNode(server.url, simulator._http).get("plans/edge/cams/plan.json")
            assert status == 404  # reached over TLS: there is just no plan yet
        finally:
            await simulator.stop()


def test_the_command_wants_both_halves_and_names_a_bad_pair(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    runner = CliRunner()
    alone = runner.invoke(gateway, ["run", "--store", str(tmp_path / "s"), "--tls-cert", str(cert)])
    assert alone.exit_code == 2 and "--tls-cert and --tls-key go together" in alone.output
    (tmp_path / "other").mkdir()
    _, other = self_signed(tmp_path / "other")  # a key, but not the certificate's
    mismatched = runner.invoke(gateway, ["run", "--store", str(tmp_path / "s"), "--tls-cert", str(cert),
                                         "--tls-key", str(other)])
    assert mismatched.exit_code == 2 and "not a usable certificate and key" in mismatched.output


def test_the_operator_checks_its_gateway_ca_file_at_start(tmp_path: Path) -> None:
    signing = tmp_path / "signing-key.pem"
    signing.write_text("x")
    env = {"TINYMLOPS_STORE": str(tmp_path), "TINYMLOPS_SIGNING_KEY": str(signing)}
    assert Settings.from_env(env).gateway_ca is None
    cert, _ = self_signed(tmp_path)
    assert Settings.from_env({**env, "TINYMLOPS_GATEWAY_CA": str(cert)}).gateway_ca == cert
    with pytest.raises(ConfigError, match="TINYMLOPS_GATEWAY_CA"):
        Settings.from_env({**env, "TINYMLOPS_GATEWAY_CA": str(tmp_path / "missing.crt")})
