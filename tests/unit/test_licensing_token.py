"""Licence tokens: issued with the publisher key, refused with the reason named when anything does not hold."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.errors import LicenseError
from tinymlops.licensing.token import issue_token, new_license, read_license, verify_license

MENU = "ab" * 32
OTHER_MENU = "cd" * 32
T0 = 1_800_000_000.0


@pytest.fixture()
def keys() -> dict[str, Ed25519PrivateKey]:
    return {name: Ed25519PrivateKey.generate() for name in ("publisher", "device", "stranger", "other_device")}


def _token(keys: dict[str, Ed25519PrivateKey], **overrides: object) -> str:
    args: dict[str, object] = {"licensee": "acme", "device": keys["device"].public_key(), "models": [MENU],
                               "quota": 10_000, "not_before": T0, "expires": T0 + 3600}
    args.update(overrides)
    return issue_token(new_license(**args), keys["publisher"])  # type: ignore[arg-type]


def test_a_token_verifies_with_its_claims(keys: dict[str, Ed25519PrivateKey]) -> None:
    token = _token(keys)
    assert token.startswith("v4.public.")
    lic = verify_license(token, keys["publisher"].public_key(), device=keys["device"].public_key(), model=MENU,
                         now=T0 + 10)
    assert (lic.licensee, lic.quota, lic.models, lic.epoch) == ("acme", 10_000, (MENU,), 1)
    assert len(lic.token_id_bytes) == 16 and (lic.not_before, lic.expires) == (T0, T0 + 3600)


@pytest.mark.parametrize(("case", "needle"), [
    ("foreign", "pinned publisher key"),
    ("device", "issued to another device"),
    ("model", "covers menu sha256"),
    ("expired", "expired at"),
    ("early", "not valid before"),
    ("garbage", "not a PASETO v4.public token"),
    ("edited", "signature does not hold"),
])
def test_bad_tokens_are_refused_naming_why(keys: dict[str, Ed25519PrivateKey], case: str, needle: str) -> None:
    publisher, device, model, now = keys["publisher"].public_key(), keys["device"].public_key(), MENU, T0 + 10
    token = _token(keys)
    if case == "foreign":
        publisher = keys["stranger"].public_key()
    elif case == "device":
        device = keys["other_device"].public_key()
    elif case == "model":
        model = OTHER_MENU
    elif case == "expired":
        now = T0 + 3600
    elif case == "early":
        now = T0 - 1
    elif case == "garbage":
        token = "eyJhbGciOiJIUzI1NiJ9.e30.x"
    elif case == "edited":
        token = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    with pytest.raises(LicenseError, match=needle):
        verify_license(token, publisher, device=device, model=model, now=now)


def test_claims_are_checked_after_the_signature(keys: dict[str, Ed25519PrivateKey]) -> None:
    lic = new_license(licensee="acme", device=keys["device"].public_key(), models=[MENU], quota=5, not_before=T0,
                      expires=T0 + 60)
    token = issue_token(dataclasses.replace(lic, token_id="not-hex"), keys["publisher"])
    with pytest.raises(LicenseError, match="jti"):
        read_license(token, keys["publisher"].public_key())


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("quota", 0, "quota"), ("models", ["sha"], "model digest"), ("models", [], "non-empty"),
    ("models", MENU, "non-empty list"), ("expires", T0, "must be after"),
    ("licensee", "", "licensee")])
def test_issuing_refuses_nonsense(keys: dict[str, Ed25519PrivateKey], field: str, value: object, needle: str) -> None:
    args: dict[str, object] = {"licensee": "acme", "device": keys["device"].public_key(), "models": [MENU], "quota": 5,
                               "not_before": T0, "expires": T0 + 60}
    args[field] = value
    with pytest.raises(ValueError, match=needle):
        new_license(**args)  # type: ignore[arg-type]


def test_one_token_covers_a_set_of_menus_as_one_allowance(keys: dict[str, Ed25519PrivateKey]) -> None:
    """A fleet's stable and canary menus: a device on either verifies the same token (same id, same quota)."""
    token = _token(keys, models=[OTHER_MENU, MENU, MENU])
    publisher, device = keys["publisher"].public_key(), keys["device"].public_key()
    on_stable = verify_license(token, publisher, device=device, model=MENU, now=T0 + 10)
    on_canary = verify_license(token, publisher, device=device, model=OTHER_MENU, now=T0 + 10)
    assert on_stable == on_canary and on_stable.models == (MENU, OTHER_MENU)
    with pytest.raises(LicenseError, match="covers menu sha256 ababababab"):
        verify_license(token, publisher, device=device, model="ef" * 32, now=T0 + 10)


def test_a_token_signed_with_one_model_claim_still_reads(keys: dict[str, Ed25519PrivateKey]) -> None:
    import json

    import pyseto

    from tinymlops.signing import private_key_pem

    claims = new_license(licensee="acme", device=keys["device"].public_key(), models=[MENU], quota=5,
                         not_before=T0, expires=T0 + 60).claims()
    claims["model"] = claims.pop("models")[0]
    key = pyseto.Key.new(version=4, purpose="public", key=private_key_pem(keys["publisher"]))
    token = pyseto.encode(key, json.dumps(claims).encode()).decode()
    assert read_license(token, keys["publisher"].public_key()).models == (MENU,)
    claims.pop("model")
    with pytest.raises(LicenseError, match="models missing"):
        read_license(pyseto.encode(key, json.dumps(claims).encode()).decode(), keys["publisher"].public_key())
