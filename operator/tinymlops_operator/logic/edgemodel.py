"""EdgeModel decisions: when to build, what to ask the pipeline, what status to show."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tinymlops import errors
from tinymlops.envelope import load_device_public
from tinymlops.timestamps import rfc3339, seconds
from tinymlops.variants.matrix import variant_matrix
from tinymlops.variants.tvm_tune import Tuning, parse_tuning
from tinymlops_operator.logic.conditions import set_condition

DEFAULT_PRECISIONS = ("fp32", "int8")
DEFAULT_ACCURACY_BUDGET = 0.01
# A licensee names a folder in the store and a fleet's spec.licensee: a DNS label, as the CRDs' pattern says.
LICENSEE_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

# Domain error -> condition reason; anything else is a PipelineFailed.
REASONS: dict[type[Exception], str] = {
    errors.InvalidModelError: "InvalidSource",
    errors.InvalidDataError: "InvalidData",
    errors.SpecError: "InvalidSpec",
    errors.SignatureError: "SigningFailed",
    errors.WatermarkKeyError: "WatermarkKeyUnavailable",  # before WatermarkError, its base: the first match wins
    errors.WatermarkError: "WatermarkFailed",
}
# Errors that a retry cannot fix: the user must change the spec (a new generation).  A watermark that cannot be
# embedded (or a registry refusing a second, different record) is one; a key its Secret lacks yet is not.
PERMANENT = (errors.InvalidModelError, errors.InvalidDataError, errors.SpecError, errors.WatermarkError)
RETRIED = (errors.WatermarkKeyError,)


@dataclass(frozen=True)
class BuildRequest:
    """Everything the variants pipeline needs for one EdgeModel generation."""

    namespace: str
    name: str
    generation: int
    source_uri: str
    data_uri: str | None
    variants: tuple[str, ...]  # variant ids (tinymlops.variants.matrix)
    accuracy_budget: float
    menu_version: int
    # (Secret name, key in its data) holding this model's signing key; None: the operator's own key.
    signing_secret: tuple[str, str] | None = None
    # X25519 public keys (PEM) the model's own data key is wrapped for (recipients naming no licensee).
    recipients: tuple[str, ...] = ()
    # WebAssembly pre/post-processing modules every variant runs with (spec.pre.uri, spec.post.uri); None: none.
    pre_uri: str | None = None
    post_uri: str | None = None
    # spec.watermark: one watermarked menu per licensee besides the model's own; None: the model's menu only.
    watermark: Watermarking | None = None
    # spec.encryption is set: every menu is published encrypted, each licensee's under its own data key.
    encrypted: bool = False
    # (licensee, its recipients' public keys): who may open that licensee's menu, and no other.
    licensee_recipients: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # spec.hybrid.splitParts: publish each exact split point's head and tail, for devices that split with the
    # gateway's tail service (never with spec.encryption).
    split_parts: bool = False
    # spec.variants.tuning: MetaSchedule's budget for TVM host variants; None: untuned.
    tuning: Tuning | None = None

    @property
    def run_key(self) -> str:
        return run_key(self.namespace, self.name, self.generation)

    def recipients_of(self, licensee: str) -> tuple[str, ...]:
        """Whom `licensee`'s data key is wrapped for (the model's own recipients for "")."""
        if not licensee:
            return self.recipients
        return next((keys for name, keys in self.licensee_recipients if name == licensee), ())


@dataclass(frozen=True)
class Watermarking:
    """spec.watermark: the Secret (name, key in its data) holding the owner key, and the licensees to build for."""

    key_secret: tuple[str, str]
    licensees: tuple[str, ...]


def run_key(namespace: str, name: str, generation: int) -> str:
    """Names one generation's pipeline run: the launcher knows a running build by it."""
    return f"{namespace}/{name}@{generation}"


def build_request(
    spec: Mapping[str, Any],
    *,
    namespace: str,
    name: str,
    generation: int,
    previous_menu_version: int,
) -> BuildRequest:
    source = spec.get("source") or {}
    if not source.get("uri"):
        raise errors.SpecError("spec.source.uri is required")
    data = spec.get("data") or {}
    matrix = spec.get("variants") or {}
    watermarking = _watermarking(spec.get("watermark"), has_data=bool(data.get("uri")))
    recipients = _recipients(spec.get("encryption"), watermarking.licensees if watermarking else ())
    variants = variant_matrix(
        matrix.get("precisions") or DEFAULT_PRECISIONS, matrix.get("sparsities") or (), matrix.get("targets") or ()
    )
    return BuildRequest(
        namespace=namespace,
        name=name,
        generation=generation,
        source_uri=str(source["uri"]),
        data_uri=str(data["uri"]) if data.get("uri") else None,
        variants=tuple(variants),
        accuracy_budget=float(spec.get("accuracyBudget", DEFAULT_ACCURACY_BUDGET)),
        # Monotonic: every new generation publishes a strictly newer menu.
        menu_version=previous_menu_version + 1,
        signing_secret=_signing_secret(spec.get("signingKeySecret")),
        recipients=recipients.get("", ()),
        pre_uri=_module_uri(spec, "pre"),
        post_uri=_module_uri(spec, "post"),
        watermark=watermarking,
        encrypted=bool(spec.get("encryption")),
        licensee_recipients=tuple((licensee, recipients.get(licensee, ()))
                                  for licensee in (watermarking.licensees if watermarking else ())),
        split_parts=_split_parts(spec),
        tuning=parse_tuning(matrix.get("tuning")),
    )


def _module_uri(spec: Mapping[str, Any], role: str) -> str | None:
    """spec.<role>.uri, or None; a pre module needs spec.data (raw inputs to run it on), said naming both fields."""
    module = spec.get(role) or {}
    if not module.get("uri"):
        return None
    if role == "pre" and not (spec.get("data") or {}).get("uri"):
        raise errors.SpecError("spec.pre needs spec.data: raw inputs for the module to turn into the model's")
    return str(module["uri"])


DEFAULT_WATERMARK_KEY = "watermark-key"


def _watermarking(watermark: Mapping[str, Any] | None, *, has_data: bool) -> Watermarking | None:
    """spec.watermark checked as the schema does (the operator may see objects no API server checked)."""
    if not watermark:
        return None
    if not has_data:
        raise errors.SpecError("spec.watermark: a watermark is learnt from data; give spec.data too")
    ref = watermark.get("keySecretRef") or {}
    if not ref.get("name"):
        raise errors.SpecError("spec.watermark.keySecretRef.name is required")
    licensees = [str(licensee) for licensee in watermark.get("licensees") or ()]
    if not licensees:
        raise errors.SpecError("spec.watermark.licensees: at least one licensee is needed")
    for index, licensee in enumerate(licensees):
        if not LICENSEE_ID.fullmatch(licensee):
            raise errors.SpecError(f"spec.watermark.licensees[{index}]: {licensee!r} is not a licensee id "
                                   "(lowercase letters, digits and '-', at most 63, as a DNS label)")
    if len(set(licensees)) != len(licensees):
        raise errors.SpecError("spec.watermark.licensees: a licensee is listed twice")
    return Watermarking((str(ref["name"]), str(ref.get("key") or DEFAULT_WATERMARK_KEY)), tuple(licensees))


def licensees_of(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The licensees the EdgeModel's spec.watermark lists (none without a watermark)."""
    return tuple(str(licensee) for licensee in ((spec.get("watermark") or {}).get("licensees") or ()))


def _split_parts(spec: Mapping[str, Any]) -> bool:
    """spec.hybrid.splitParts; SpecError naming both fields with spec.encryption (the parts are in the clear)."""
    wanted = bool((spec.get("hybrid") or {}).get("splitParts", False))
    if wanted and (spec.get("encryption") or {}).get("recipients"):
        raise errors.SpecError("spec.hybrid.splitParts cannot be used with spec.encryption: a head and its tail "
                               "are published in the clear and together are the whole model")
    return wanted


def _recipients(encryption: Mapping[str, Any] | None, licensees: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The recipients' public keys by the licensee they belong to ("" for the model's own menu), each checked
    to be an X25519 PEM (SpecError naming the entry).  Each licensee's menu opens only for its own recipients,
    so every licensee needs one: a licensee's devices holding the model's key, or another licensee's, would let
    one licensee's copy leak from another's device and frame its licensee."""
    if not encryption:
        return {}
    keys: dict[str, list[str]] = {}
    for index, recipient in enumerate(encryption.get("recipients") or ()):
        where = f"spec.encryption.recipients[{index}]"
        pem = str((recipient or {}).get("publicKey", ""))
        try:
            load_device_public(pem.encode(), source=f"{where}.publicKey")
        except errors.IntegrityError as exc:
            raise errors.SpecError(str(exc)) from exc
        licensee = str((recipient or {}).get("licensee") or "")
        if licensee and licensee not in licensees:
            raise errors.SpecError(f"{where}.licensee: {licensee!r} is not a licensee of this model "
                                   f"(spec.watermark.licensees: {', '.join(licensees) or 'none'})")
        keys.setdefault(licensee, []).append(pem)
    if not keys:
        raise errors.SpecError("spec.encryption.recipients: at least one recipient is needed")
    missing = [licensee for licensee in licensees if licensee not in keys]
    if missing:
        raise errors.SpecError(
            f"spec.encryption.recipients: no recipient names licensee {', '.join(missing)}; each licensee's menu "
            "is encrypted under its own data key, for the recipients naming it (its fleets' devices) only")
    return {licensee: tuple(pems) for licensee, pems in keys.items()}


def _signing_secret(ref: Mapping[str, Any] | None) -> tuple[str, str] | None:
    if not ref:
        return None
    if not ref.get("name"):
        raise errors.SpecError("spec.signingKeySecret.name is required")
    return str(ref["name"]), str(ref.get("key") or "signing-key.pem")


RETRY_BACKOFF_SECONDS = (5.0, 15.0, 60.0, 300.0)


def needs_build(status: Mapping[str, Any], generation: int, now: float) -> bool:
    """Build each generation once; retry only errors a retry can fix, with backoff."""
    if status.get("observedGeneration") != generation:
        return True
    phase = status.get("phase")
    if phase == "Retrying":
        return now >= seconds(status.get("nextAttemptAt"))
    return phase not in ("Ready", "Failed", "Building")


def building_status(status: Mapping[str, Any], request: BuildRequest) -> dict[str, Any]:
    return {
        "phase": "Building",
        "observedGeneration": request.generation,
        # No retry is due any more: None deletes the time (an older operator's Unix seconds, too).
        "nextAttemptAt": None,
        "conditions": set_condition(
            status.get("conditions"),
            type="Ready",
            status=False,
            reason="Building",
            message=f"variants pipeline running for {request.source_uri} (menu version {request.menu_version})",
            generation=request.generation,
        ),
    }


def status_variants(menu: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The menu's variants as `status.variants` lists them, those that could not be built last: the one place
    a menu (a file, snake_case as every file of ours) is spelled the Kubernetes way (camelCase)."""
    return [_built(v) for v in menu.get("variants", [])] + [_not_built(e) for e in menu.get("not_built", [])]


def _built(variant: Mapping[str, Any]) -> dict[str, Any]:
    metrics: Mapping[str, Any] = variant.get("metrics") or {}
    accuracy = metrics.get("accuracy", metrics.get("agreement"))
    return {
        "id": variant["id"],
        "precision": variant.get("precision", ""),
        "target": variant.get("target", ""),
        "format": variant.get("format", ""),
        "sha256": variant.get("sha256", ""),
        "sizeBytes": int(variant.get("size_bytes", 0)),
        "accuracy": round(float(accuracy), 4) if accuracy is not None else None,
        # A microcontroller variant has no host latency (null in its metrics): its estimate is in the menu.
        "latencyMs": round(float(metrics["latency_ms_p50"]), 4) if metrics.get("latency_ms_p50") is not None else None,
        "accepted": bool(variant.get("accepted", False)),
        "built": True,
        "reason": str(variant.get("reason", "")),
    }


def _not_built(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": entry["id"], "accepted": False, "built": False, "reason": str(entry.get("reason", ""))}


def licensee_status(licensee: str, menu: Mapping[str, Any], menu_sha256: str) -> dict[str, Any]:
    """One entry of `status.licensees`: the licensee's watermarked menu, as fleets naming the licensee follow it."""
    variants = status_variants(menu)
    return {"licensee": licensee, "menuSha256": menu_sha256, "menuVersion": int(menu["version"]),
            "variants": len(variants), "accepted": sum(1 for v in variants if v["accepted"])}


# Said in the Ready message (and a Warning Event) of a watermarked model published without spec.encryption.
UNENCRYPTED_LICENSEE_MENUS = (
    "licensee menus are not encrypted (no spec.encryption): any device can fetch any licensee's copy, so a "
    "leaked copy names the licensee whose menu it is, not the licensee whose device leaked it")


def ready_status(
    status: Mapping[str, Any], menu: Mapping[str, Any], menu_sha256: str, generation: int,
    *, run: Mapping[str, str] | None = None, licensees: Sequence[Mapping[str, Any]] = (), encrypted: bool = True,
) -> dict[str, Any]:
    """Status once `menu` is published; `run` is the pipeline run that built it (status.pipelineRun);
    `licensees` the watermarked menus built with it (`licensee_status`; none: status.licensees is removed),
    published in the clear unless `encrypted` (the message then says what that costs attribution)."""
    variants = status_variants(menu)
    accepted = [v["id"] for v in variants if v["accepted"]]
    ready = bool(accepted)
    not_built = [v["id"] for v in variants if not v["built"]]
    message = (
        f"menu v{menu['version']}: {len(accepted)}/{len(variants)} variants accepted ({', '.join(accepted)})"
        + (f"; not built: {', '.join(not_built)}" if not_built else "")
        if ready
        else f"menu v{menu['version']}: no variant met the accuracy budget"
    ) + (f"; watermarked menus for {', '.join(str(entry['licensee']) for entry in licensees)}" if licensees else "") + (
        f"; {UNENCRYPTED_LICENSEE_MENUS}" if licensees and not encrypted else "")
    return {
        "phase": "Ready" if ready else "Failed",
        "observedGeneration": generation,
        "menuVersion": int(menu["version"]),
        "menuSha256": menu_sha256,
        "baseSha256": str((menu.get("base") or {}).get("sha256", "")),
        "variants": variants,
        **({"pipelineRun": dict(run)} if run else {}),
        # merge-patch null: a model no longer watermarked lists no licensee menus
        **({"licensees": [dict(entry) for entry in licensees] or None}
           if licensees or status.get("licensees") else {}),
        "conditions": set_condition(
            status.get("conditions"),
            type="Ready",
            status=ready,
            reason="VariantsBuilt" if ready else "NoAcceptedVariant",
            message=message,
            generation=generation,
        ),
    }


def failed_status(
    status: Mapping[str, Any], error: BaseException, generation: int, now: float
) -> dict[str, Any]:
    """Permanent errors wait for a new spec; others are retried with growing backoff."""
    reason = next((r for cls, r in REASONS.items() if isinstance(error, cls)), "PipelineFailed")
    retry: dict[str, Any] = {}
    if not is_permanent(error):
        attempts = int(status.get("attempts", 0)) + 1 if status.get("observedGeneration") == generation else 1
        delay = RETRY_BACKOFF_SECONDS[min(attempts, len(RETRY_BACKOFF_SECONDS)) - 1]
        retry = {"attempts": attempts, "nextAttemptAt": rfc3339(now + delay)}
    return {
        "phase": "Failed" if is_permanent(error) else "Retrying",
        "observedGeneration": generation,
        **retry,
        "conditions": set_condition(
            status.get("conditions"),
            type="Ready",
            status=False,
            reason=reason,
            message=str(error),
            generation=generation,
        ),
    }


def is_permanent(error: BaseException) -> bool:
    return isinstance(error, PERMANENT) and not isinstance(error, RETRIED)
