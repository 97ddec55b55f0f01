"""The pieces of a real-device training that need no running Flower: node keys bound to identities, the
SuperLink's one-run TLS, the SuperNode's command line and exit, and the spec handed to the ServerApp."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.errors import SignatureError
from tinymlops.federated.nodekey import (
    BINDING_FILE,
    annotation_value,
    bind,
    ensure_node_key,
    verified_node_key,
)
from tinymlops.federated.spec import parse_spec
from tinymlops.federated.supernode import explain_exit, supernode_command
from tinymlops.federated.tls import server_tls


def test_a_node_key_is_made_once_and_bound_to_the_identity(tmp_path: Path) -> None:
    identity = Ed25519PrivateKey.generate()
    first = ensure_node_key(tmp_path, identity)
    again = ensure_node_key(tmp_path, identity)
    assert first == again
    assert first.private_key_path.stat().st_mode & 0o077 == 0
    key = serialization.load_ssh_private_key(first.private_key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
    assert json.loads((tmp_path / BINDING_FILE).read_bytes()) == first.binding
    annotation = annotation_value(first.binding)
    assert verified_node_key(annotation, identity.public_key(), source="dev") == first.public_key_pem


def test_a_binding_under_another_identity_or_altered_is_refused(tmp_path: Path) -> None:
    identity, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    binding = ensure_node_key(tmp_path, identity).binding
    with pytest.raises(SignatureError, match="dev7: the node key is not signed by the device's identity key"):
        verified_node_key(binding, other.public_key(), source="dev7")
    swapped = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(SignatureError, match="not signed"):
        verified_node_key({**binding, "flowerPublicKey": swapped}, identity.public_key(), source="dev7")
    with pytest.raises(SignatureError, match="not JSON"):
        verified_node_key("{", identity.public_key(), source="dev7")
    with pytest.raises(SignatureError, match="binding"):
        verified_node_key({"format": "other"}, identity.public_key(), source="dev7")


def test_an_identity_signed_key_flower_cannot_take_is_refused() -> None:
    identity = Ed25519PrivateKey.generate()
    ed_pem = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(SignatureError, match="NIST-curve EC"):
        verified_node_key(bind(identity, ed_pem), identity.public_key(), source="dev")


def test_the_superlink_certificate_names_its_addresses_and_chains_to_the_run_ca() -> None:
    tls = server_tls(["127.0.0.1", "localhost"])
    ca, cert = x509.load_pem_x509_certificate(tls.ca_pem), x509.load_pem_x509_certificate(tls.cert_pem)
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_the_supernode_command_names_the_data_path_and_authenticates_only_over_tls(tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    command = supernode_command("link:9000", data, root_certificates=tmp_path / "ca.pem",
                                node_key=tmp_path / "flower-node.key", runtime_port=4321)
    assert command[0] == "flower-supernode" and command[1:3] == ["--superlink", "link:9000"]
    assert command[command.index("--node-config") + 1] == f'data-path="{data.resolve()}"'
    assert command[command.index("--auth-supernode-private-key") + 1] == str(tmp_path / "flower-node.key")
    assert "--insecure" not in command and command[command.index("--port") + 1] == "4321"
    insecure = supernode_command("link:9000", data, root_certificates=None, node_key=None, runtime_port=1)
    assert "--insecure" in insecure and "--auth-supernode-private-key" not in insecure


def test_a_refused_node_is_explained_from_flowers_log(tmp_path: Path) -> None:
    log = tmp_path / "flower-supernode.log"
    log.write_text("ERROR :     Exit Code: 305\nFailed to initialize the connection to the SuperLink.\n"
                   "[code: 2004] Failed to activate SuperNode.\n")
    reason = explain_exit(1, log)
    assert "refused this node" in reason and "[code: 2004] Failed to activate SuperNode." in reason
    log.write_text("something else\n")
    assert explain_exit(2, log) == f"flower-supernode exited with code 2; see {log}"


def test_the_spec_reaches_the_serverapp_unchanged() -> None:
    pytest.importorskip("flwr")
    from tinymlops.federated.deployed import read_spec

    spec = parse_spec({"model": {"name": "m"}, "fleet": {"name": "f", "selector": {"matchLabels": {"a": "b"}}},
                       "strategy": {"name": "FedProx", "params": {"proximalMu": 0.1}},
                       "privacy": {"clipNorm": 2.0, "noiseMultiplier": 0.5},
                       "promotion": {"data": {"uri": "store://x.npz"}, "minAccuracyGain": 0.01}})
    assert read_spec(json.loads(json.dumps(dataclasses.asdict(spec)))) == spec
