"""Licence tokens: PASETO v4.public (pyseto), signed with the publisher's Ed25519 key, verified on the device.

Why PASETO v4.public rather than a Biscuit: v4.public *is* Ed25519 over the token
body, the algorithm of the publisher key every device already pins to verify
menus, so a licence adds no new trust anchor, no new key type and no policy
language to the device; a licence is a fixed set of claims, checked in one place
(`verify_license`).  Biscuit's strength, attenuation by whoever holds a token,
is what a licence must *not* allow.

Claims (JSON, all required): `iss` ("tinymlops"), `sub` (the licensee), `jti`
(token id, 32 hex digits: the id the usage chain hashes), `device` (the device's
Ed25519 identity public key, raw 32 bytes in base64 as its `Device` annotation
holds it), `models` (the menus it covers: sha256 of the exact `menu.json` bytes of
each, so a fleet's stable and canary revisions share one allowance), `quota`
(inferences this token allows), `nbf`/`exp`/`iat` (RFC 3339, UTC) and `epoch` (increases
with every refill: a device never goes back to a lower one).

The device checks time itself (`now` is the latest time it has seen, so setting
the clock back does not stretch a licence), which is why the body is decoded
without pyseto's own wall-clock check.  A token signed before `models` existed names
one menu in `model`; it is read as the set of that one.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops.errors import LicenseError
from tinymlops.extras import require_extra
from tinymlops.signing import private_key_pem, public_key_base64, public_key_pem
from tinymlops.timestamps import rfc3339, seconds

require_extra("licensing", __name__, "pyseto")

import pyseto  # noqa: E402  (after the extra check, so a missing pyseto names the extra)

ISSUER = "tinymlops"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class License:
    """A licence's claims, as issued or as verified."""

    licensee: str
    token_id: str  # 32 hex digits (16 bytes)
    device: str  # the identity public key, raw bytes in base64
    models: tuple[str, ...]  # sha256 hex of each menu.json the licence covers, sorted
    quota: int
    not_before: float  # Unix seconds
    expires: float
    epoch: int = 1
    issued_at: float = 0.0

    @property
    def token_id_bytes(self) -> bytes:
        return bytes.fromhex(self.token_id)

    def covers(self, menu_sha256: str) -> bool:
        return menu_sha256 in self.models

    def claims(self) -> dict[str, Any]:
        return {"iss": ISSUER, "sub": self.licensee, "jti": self.token_id, "device": self.device,
                "models": list(self.models), "quota": self.quota, "nbf": rfc3339(self.not_before),
                "exp": rfc3339(self.expires), "iat": rfc3339(self.issued_at), "epoch": self.epoch}


def new_license(*, licensee: str, device: Ed25519PublicKey, models: Sequence[str], quota: int, not_before: float,
                expires: float, epoch: int = 1, issued_at: float | None = None) -> License:
    """A licence with a fresh random token id; ValueError naming the argument that makes no sense."""
    if not licensee or len(licensee) > 253:
        raise ValueError(f"licensee must be 1..253 characters, got {licensee!r}")
    if isinstance(models, str) or not models:
        raise ValueError(f"models must be a non-empty list of menu digests, got {models!r}")
    for model in models:
        if not _HEX64.match(model):
            raise ValueError(f"model digest must be 64 lowercase hex digits (sha256 of menu.json), got {model!r}")
    if quota < 1:
        raise ValueError(f"quota must be >= 1 inference, got {quota}")
    if expires <= not_before:
        raise ValueError(f"expires ({rfc3339(expires)}) must be after the start of validity ({rfc3339(not_before)})")
    if epoch < 1:
        raise ValueError(f"epoch must be >= 1, got {epoch}")
    return License(licensee, secrets.token_hex(16), public_key_base64(device), tuple(sorted(set(models))), quota,
                   not_before, expires, epoch, not_before if issued_at is None else issued_at)


def issue_token(license: License, key: Ed25519PrivateKey) -> str:
    """The licence as a PASETO v4.public token signed with the publisher's key."""
    paseto_key = pyseto.Key.new(version=4, purpose="public", key=private_key_pem(key))
    token = pyseto.encode(paseto_key, json.dumps(license.claims(), sort_keys=True).encode())
    return token.decode("ascii") if isinstance(token, bytes) else str(token)


def verify_license(token: str, publisher: Ed25519PublicKey, *, device: Ed25519PublicKey | None, model: str | None,
                   now: float | None) -> License:
    """The licence `token` carries, once its signature, claims, binding and validity at `now` hold.

    `device`/`model`: what the token must be bound to (None: not checked, e.g. a statement over many
    devices); `now` None: validity is left to the caller (a device judges it per inference). LicenseError
    names what is wrong."""
    license = read_license(token, publisher)
    check_binding(license, device=device, model=model)
    if now is not None:
        check_validity(license, now)
    return license


def check_binding(license: License, *, device: Ed25519PublicKey | None, model: str | None) -> None:
    """LicenseError unless `license` is bound to `device` and `model` (None: not checked)."""
    if device is not None and license.device != public_key_base64(device):
        raise LicenseError(f"licence {license.token_id[:8]}: issued to another device (identity key "
                           f"{license.device[:12]}…, this device is {public_key_base64(device)[:12]}…)")
    if model is None:
        return
    if not license.covers(model):
        covered = ", ".join(m[:12] + "…" for m in license.models)
        raise LicenseError(f"licence {license.token_id[:8]}: covers menu sha256 {covered}, but this "
                           f"device runs menu {model[:12]}…; get a licence for the revision it runs")


def check_validity(license: License, now: float) -> None:
    """LicenseError unless `now` is within the licence's validity window."""
    if now < license.not_before:
        raise LicenseError(f"licence {license.token_id[:8]}: not valid before {rfc3339(license.not_before)}")
    if now >= license.expires:
        raise LicenseError(f"licence {license.token_id[:8]}: expired at {rfc3339(license.expires)}; "
                           "reconnect to refill")


def read_license(token: str, publisher: Ed25519PublicKey) -> License:
    """The claims of `token` once its PASETO v4.public signature holds under `publisher` (no binding, no time)."""
    if not isinstance(token, str) or not token.startswith("v4.public."):
        raise LicenseError("licence token: not a PASETO v4.public token (it must start with 'v4.public.')")
    paseto_key = pyseto.Key.new(version=4, purpose="public", key=public_key_pem(publisher))
    try:
        decoded = pyseto.decode(paseto_key, token.strip())
    except pyseto.VerifyError as exc:
        raise LicenseError("licence token: signature does not hold under the pinned publisher key "
                           "(signed by another key, or edited)") from exc
    except (pyseto.PysetoError, ValueError) as exc:
        raise LicenseError(f"licence token: malformed ({exc})") from exc
    if not isinstance(decoded.payload, bytes):
        raise LicenseError("licence token: body is not JSON bytes")
    try:
        claims = json.loads(decoded.payload)
    except ValueError as exc:
        raise LicenseError(f"licence token: body is not JSON ({exc})") from exc
    return license_from_claims(claims)


def license_from_claims(claims: Any) -> License:
    if not isinstance(claims, Mapping):
        raise LicenseError("licence token: body is not a JSON object")
    missing = [k for k in ("iss", "sub", "jti", "device", "quota", "nbf", "exp", "epoch") if k not in claims]
    if missing:
        raise LicenseError(f"licence token: claim(s) {', '.join(missing)} missing")
    if claims["iss"] != ISSUER:
        raise LicenseError(f"licence token: iss is {claims['iss']!r}, expected {ISSUER!r}")
    if not isinstance(claims["jti"], str) or not _HEX32.match(claims["jti"]):
        raise LicenseError(f"licence token: jti {claims['jti']!r} is not 32 hex digits")
    models = _models(claims)
    for name in ("quota", "epoch"):
        if not isinstance(claims[name], int) or isinstance(claims[name], bool) or claims[name] < 1:
            raise LicenseError(f"licence token: {name} {claims[name]!r} is not a positive integer")
    try:
        window = [seconds(str(claims[k])) for k in ("nbf", "exp")]
        issued = seconds(str(claims.get("iat") or claims["nbf"]))
    except ValueError as exc:
        raise LicenseError(f"licence token: nbf/exp/iat not RFC 3339 ({exc})") from exc
    return License(str(claims["sub"]), claims["jti"], str(claims["device"]), models, claims["quota"],
                   window[0], window[1], claims["epoch"], issued)


def _models(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The menus a token covers: `models`, or the one `model` of a token signed before sets existed."""
    if "models" in claims:
        models = claims["models"]
        if not isinstance(models, list) or not models:
            raise LicenseError(f"licence token: models {models!r} is not a non-empty list of menu digests")
    elif "model" in claims:
        models = [claims["model"]]
    else:
        raise LicenseError("licence token: claim(s) models missing")
    for model in models:
        if not isinstance(model, str) or not _HEX64.match(model):
            raise LicenseError(f"licence token: model {model!r} is not a sha256 hex digest")
    return tuple(sorted(set(models)))
