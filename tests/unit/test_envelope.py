"""Envelope encryption: artifacts round-trip, and every tampering, truncation or mix-up is caught and named."""

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.envelope import (
    ALGORITHM,
    HEADER,
    NONCE_SIZE,
    TAG_SIZE,
    WRAP_ALGORITHM,
    WRAP_FIELDS,
    data_key_id,
    decrypt_artifact,
    device_key_pem,
    device_public_pem,
    encrypt_artifact,
    fingerprint,
    generate_device_key,
    is_envelope,
    load_device_key,
    load_device_public,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)
from tinymlops.errors import IntegrityError
from tinymlops.signing import public_key_pem

PLAINTEXT = bytes(range(256)) * 3
AAD = b"variant:abc123"
CONTEXT = b"models/team/digits"
DATA_KEY = new_data_key()
DEVICE_A = generate_device_key()
DEVICE_B = generate_device_key()


@pytest.fixture(scope="module")
def envelope() -> bytes:
    return encrypt_artifact(PLAINTEXT, DATA_KEY, aad=AAD)


def test_round_trip(envelope: bytes) -> None:
    assert ALGORITHM == "AES-256-GCM"
    assert is_envelope(envelope)
    assert not is_envelope(PLAINTEXT)
    assert decrypt_artifact(envelope, DATA_KEY, aad=AAD) == PLAINTEXT
    assert decrypt_artifact(encrypt_artifact(b"", DATA_KEY, aad=AAD), DATA_KEY, aad=AAD) == b""


def test_overhead_is_header_nonce_and_tag(envelope: bytes) -> None:
    assert envelope.startswith(b"TMLE\x01")
    assert len(envelope) - len(PLAINTEXT) == len(HEADER) + NONCE_SIZE + TAG_SIZE == 5 + 12 + 16


def test_same_plaintext_twice_gives_different_ciphertexts(envelope: bytes) -> None:
    again = encrypt_artifact(PLAINTEXT, DATA_KEY, aad=AAD)
    assert again[len(HEADER) : len(HEADER) + NONCE_SIZE] != envelope[len(HEADER) : len(HEADER) + NONCE_SIZE]
    assert again[len(HEADER) + NONCE_SIZE :] != envelope[len(HEADER) + NONCE_SIZE :]


def test_any_flipped_byte_after_the_header_is_caught() -> None:
    small = encrypt_artifact(b"tiny model", DATA_KEY, aad=AAD)
    for position in range(len(HEADER), len(small)):
        flipped = bytearray(small)
        flipped[position] ^= 0x01
        with pytest.raises(IntegrityError, match=r"authentication failed: tampered"):
            decrypt_artifact(bytes(flipped), DATA_KEY, aad=AAD)


def test_a_flipped_header_byte_is_named(envelope: bytes) -> None:
    with pytest.raises(IntegrityError, match="not an envelope"):
        decrypt_artifact(b"X" + envelope[1:], DATA_KEY, aad=AAD)
    with pytest.raises(IntegrityError, match="unknown envelope version 2"):
        decrypt_artifact(envelope[:4] + b"\x02" + envelope[5:], DATA_KEY, aad=AAD)


@pytest.mark.parametrize("keep", [0, 3, 4, 5, 16, 32])
def test_short_envelopes_are_named(envelope: bytes, keep: int) -> None:
    with pytest.raises(IntegrityError, match="not an envelope|unknown envelope version missing|truncated"):
        decrypt_artifact(envelope[:keep], DATA_KEY, aad=AAD)


def test_an_envelope_cut_after_its_header_fails_authentication(envelope: bytes) -> None:
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt_artifact(envelope[:-1], DATA_KEY, aad=AAD)


def test_wrong_aad_is_caught(envelope: bytes) -> None:
    with pytest.raises(IntegrityError, match=r"variant:other.*another artifact"):
        decrypt_artifact(envelope, DATA_KEY, aad=b"variant:other")


def test_wrong_data_key_is_caught_and_named(envelope: bytes) -> None:
    other = new_data_key()
    with pytest.raises(IntegrityError, match=f"wrong data key \\(tried {data_key_id(other)}\\)"):
        decrypt_artifact(envelope, other, aad=AAD)
    with pytest.raises(IntegrityError, match="must be 32 bytes"):
        decrypt_artifact(envelope, DATA_KEY[:16], aad=AAD)


def test_plain_bytes_are_not_an_envelope() -> None:
    with pytest.raises(IntegrityError, match=r"variant:abc123.*not an envelope"):
        decrypt_artifact(b"\x08\x07\x12\x04onnx model bytes", DATA_KEY, aad=AAD)


def test_data_key_id_is_short_stable_and_not_the_key() -> None:
    assert data_key_id(DATA_KEY) == data_key_id(bytes(DATA_KEY))
    assert len(data_key_id(DATA_KEY)) == 16
    assert data_key_id(DATA_KEY) not in DATA_KEY.hex()
    assert data_key_id(DATA_KEY) != data_key_id(new_data_key())


def test_device_keys_round_trip_through_pem() -> None:
    key = load_device_key(device_key_pem(DEVICE_A), source="device.pem")
    public = load_device_public(device_public_pem(DEVICE_A.public_key()), source="device.pub.pem")
    assert fingerprint(key.public_key()) == fingerprint(public) == fingerprint(DEVICE_A.public_key())
    assert len(fingerprint(public)) == 16


def test_malformed_or_foreign_pem_names_its_source() -> None:
    with pytest.raises(IntegrityError, match="device.pem: not a PEM private key"):
        load_device_key(b"garbage", source="device.pem")
    with pytest.raises(IntegrityError, match="device.pub.pem: not a PEM public key"):
        load_device_public(b"garbage", source="device.pub.pem")
    with pytest.raises(IntegrityError, match="signing.pub.pem: expected an X25519 device key, got Ed25519"):
        load_device_public(public_key_pem(Ed25519PrivateKey.generate().public_key()), source="signing.pub.pem")


def test_wrap_then_unwrap() -> None:
    wrapped = wrap_data_key(DATA_KEY, DEVICE_A.public_key(), context=CONTEXT)
    assert set(wrapped) == set(WRAP_FIELDS)
    assert wrapped["alg"] == WRAP_ALGORITHM
    assert wrapped["recipient"] == fingerprint(DEVICE_A.public_key())
    assert wrapped["key_id"] == data_key_id(DATA_KEY)
    assert base64.b64decode(wrapped["wrapped_key"]) != DATA_KEY
    assert unwrap_data_key(wrapped, DEVICE_A, context=CONTEXT) == DATA_KEY


def test_unwrap_on_another_device_names_both_fingerprints() -> None:
    wrapped = wrap_data_key(DATA_KEY, DEVICE_A.public_key(), context=CONTEXT)
    a, b = fingerprint(DEVICE_A.public_key()), fingerprint(DEVICE_B.public_key())
    with pytest.raises(IntegrityError, match=f"wrapped for another device: wrapped for device {a}, this device is {b}"):
        unwrap_data_key(wrapped, DEVICE_B, context=CONTEXT)


def test_a_forged_recipient_still_fails_to_unwrap() -> None:
    wrapped = wrap_data_key(DATA_KEY, DEVICE_A.public_key(), context=CONTEXT)
    forged = {**wrapped, "recipient": fingerprint(DEVICE_B.public_key())}
    with pytest.raises(IntegrityError, match="unwrap failed: tampered"):
        unwrap_data_key(forged, DEVICE_B, context=CONTEXT)


def _flip_b64(value: str, position: int) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[position] ^= 0x01
    return base64.b64encode(bytes(raw)).decode("ascii")


@pytest.mark.parametrize("field", ["wrapped_key", "ephemeral_public", "nonce"])
@pytest.mark.parametrize("position", [0, 11, -1])
def test_tampered_wrap_fields_are_caught(field: str, position: int) -> None:
    wrapped = wrap_data_key(DATA_KEY, DEVICE_A.public_key(), context=CONTEXT)
    tampered = {**wrapped, field: _flip_b64(wrapped[field], position)}
    with pytest.raises(IntegrityError, match="unwrap failed: tampered|'ephemeral_public' is not a usable"):
        unwrap_data_key(tampered, DEVICE_A, context=CONTEXT)


def test_wrong_context_is_caught() -> None:
    wrapped = wrap_data_key(DATA_KEY, DEVICE_A.public_key(), context=CONTEXT)
    with pytest.raises(IntegrityError, match="wrapped for another model \\(context models/team/other\\)"):
        unwrap_data_key(wrapped, DEVICE_A, context=b"models/team/other")


@pytest.mark.parametrize("field", WRAP_FIELDS)
def test_missing_field_is_named(field: str) -> None:
    wrapped = {k: v for k, v in wrap_data_key(DATA_KEY, DEVICE_A.public_key(), context=CONTEXT).items() if k != field}
    with pytest.raises(IntegrityError, match=f"field '{field}' missing"):
        unwrap_data_key(wrapped, DEVICE_A, context=CONTEXT)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("alg", "RSA-OAEP", "unknown alg 'RSA-OAEP'"),
        ("nonce", "not base64!", "field 'nonce' is not valid base64"),
        ("ephemeral_public", base64.b64encode(b"short").decode(), "field 'ephemeral_public' is 5 bytes, expected 32"),
        ("wrapped_key", 42, "field 'wrapped_key' must be a string, got int"),
        ("key_id", "0000000000000000", "key_id says 0000000000000000, the unwrapped key is"),
    ],
)
def test_malformed_field_is_named(field: str, value: object, message: str) -> None:
    wrapped = {**wrap_data_key(DATA_KEY, DEVICE_A.public_key(), context=CONTEXT), field: value}
    with pytest.raises(IntegrityError, match=message):
        unwrap_data_key(wrapped, DEVICE_A, context=CONTEXT)


def test_rotation_wraps_the_same_data_key_for_a_new_device_without_re_encrypting(envelope: bytes) -> None:
    published = bytes(envelope)
    for_a = wrap_data_key(DATA_KEY, DEVICE_A.public_key(), context=CONTEXT)
    new_device = generate_device_key()  # a new device, or device A's rotated key
    for_new = wrap_data_key(DATA_KEY, new_device.public_key(), context=CONTEXT)
    assert for_new["key_id"] == for_a["key_id"]
    for wrapped, device in ((for_a, DEVICE_A), (for_new, new_device)):
        assert decrypt_artifact(published, unwrap_data_key(wrapped, device, context=CONTEXT), aad=AAD) == PLAINTEXT
    assert published == envelope
