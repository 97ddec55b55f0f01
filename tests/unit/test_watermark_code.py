"""The pure parts of watermarking: the BCH code, the key derivations, the chance-match tails and the owner key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinymlops.errors import WatermarkKeyError
from tinymlops.signing import PRIVATE_KEY_FILE, generate_key_pair
from tinymlops.watermark import ecc, stats
from tinymlops.watermark.keys import choices, key_from_file, payload_bits, signs, uniforms
from tinymlops.watermark.marks import derive_mark

KEY = bytes(range(32))


def _flip(word: np.ndarray, errors: int, rng: np.random.Generator) -> np.ndarray:
    flipped = word.copy()
    flipped[rng.choice(ecc.N, errors, replace=False)] ^= 1
    return flipped


def test_bch_is_the_127_64_code() -> None:
    assert ecc.generator().bit_length() - 1 == ecc.N - ecc.K == 63
    payload = np.random.default_rng(0).integers(0, 2, ecc.K).astype(np.uint8)
    word = ecc.encode(payload)
    assert word.shape == (127,) and (word[63:] == payload).all()  # systematic


@pytest.mark.parametrize("errors", range(ecc.T + 1))
def test_bch_corrects_up_to_t_errors(errors: int) -> None:
    rng = np.random.default_rng(errors)
    for _ in range(10):
        payload = rng.integers(0, 2, ecc.K).astype(np.uint8)
        decoded = ecc.decode(_flip(ecc.encode(payload), errors, rng))
        assert decoded is not None and (decoded == payload).all()


@pytest.mark.parametrize("errors", [ecc.T + 1, 15, 30])
def test_bch_beyond_t_never_returns_the_sent_payload(errors: int) -> None:
    # The code's distance is 21: a word 11+ errors away from the codeword sent is at most 10 away from another.
    rng = np.random.default_rng(100 + errors)
    for _ in range(10):
        payload = rng.integers(0, 2, ecc.K).astype(np.uint8)
        decoded = ecc.decode(_flip(ecc.encode(payload), errors, rng))
        assert decoded is None or not (decoded == payload).all()


def test_bch_refuses_wrong_lengths() -> None:
    with pytest.raises(ValueError, match="64 bits"):
        ecc.encode(np.zeros(63, np.uint8))
    with pytest.raises(ValueError, match="127 bits"):
        ecc.decode(np.zeros(128, np.uint8))


def test_derivations_are_deterministic_and_depend_on_key_and_context() -> None:
    assert (signs(KEY, (4, 50), "projection", "acme", 0) == signs(KEY, (4, 50), "projection", "acme", 0)).all()
    other_key = bytes(range(1, 33))
    assert (signs(KEY, (4, 50), "projection", "acme", 0) != signs(other_key, (4, 50), "projection", "acme", 0)).any()
    assert (signs(KEY, (4, 50), "projection", "acme", 0) != signs(KEY, (4, 50), "projection", "acme", 1)).any()
    assert (payload_bits(KEY, "acme", 64) != payload_bits(KEY, "globex", 64)).any()
    assert (payload_bits(KEY, "acme", 64) != payload_bits(other_key, "acme", 64)).any()
    draws = uniforms(KEY, 10_000, "u")
    assert draws.min() >= 0 and draws.max() < 1 and abs(draws.mean() - 0.5) < 0.02
    labels = choices(KEY, 10_000, 10, "c")
    assert set(np.unique(labels)) == set(range(10))
    coin = signs(KEY, (100, 100), "s")
    assert set(np.unique(coin)) == {-1.0, 1.0} and abs(coin.mean()) < 0.05


def test_a_mark_lies_in_the_data_range() -> None:
    mark = derive_mark(KEY, "acme", 3, layer_size=640, triggers=20, classes=10, low=0.0, high=2.0,
                       input_shape=(1, 8, 8))
    assert mark.trigger_x.shape == (20, 1, 8, 8) and mark.trigger_x.dtype == np.float32
    assert mark.trigger_x.min() >= 0.0 and mark.trigger_x.max() <= 2.0
    assert mark.projection.shape == (127, 640) and (ecc.decode(mark.code) == mark.payload).all()


def test_chance_tails_are_exact() -> None:
    assert stats.bit_match_p_value(0, 127) == 2.0**-127
    assert stats.bit_match_p_value(127, 127) == 1.0
    assert stats.trigger_p_value(100, 100, 10) == pytest.approx(1e-100)
    assert stats.trigger_p_value(0, 100, 10) == pytest.approx(1.0)
    assert stats.at_most(1, 3, 0.5) == pytest.approx(0.5)
    assert stats.at_least(2, 3, 0.1) == pytest.approx(3 * 0.01 * 0.9 + 0.001)
    assert stats.corrected(1e-7, 20) == pytest.approx(2e-6) and stats.corrected(0.5, 20) == 1.0


def test_key_files(tmp_path: Path) -> None:
    raw = tmp_path / "owner.key"
    raw.write_bytes(bytes(range(40)))
    assert key_from_file(raw) == bytes(range(40))
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    with pytest.raises(WatermarkKeyError, match=r"short\.key: 31 bytes; a key needs at least 32"):
        key_from_file(short)
    with pytest.raises(WatermarkKeyError, match="cannot be read"):
        key_from_file(tmp_path / "absent.key")
    generate_key_pair(tmp_path / "keys")
    pem = tmp_path / "keys" / PRIVATE_KEY_FILE
    derived = key_from_file(pem)
    assert len(derived) == 32 and derived == key_from_file(pem) and derived not in pem.read_bytes()
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n" * 2)
    with pytest.raises(WatermarkKeyError, match="not an unencrypted private key"):
        key_from_file(broken)
