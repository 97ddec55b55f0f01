"""The artifact store's layout: every key a publisher writes and a reader asks for is spelled here.

    models/<namespace>/<edgemodel>/          a variant directory (`model_prefix`)
        menu.json                            the signed variant menu, canonical bytes (`menu_key`)
        menu.sig                             its base64 Ed25519 signature (`signature_key`)
        blobs/<sha256>                       each variant's artifact, named by its digest (`blob_key`)
        keys/<recipient fingerprint>.json    the model's data key wrapped for one device or group (`grant_key`)
        menus/<menu sha256>.json             a menu kept by digest, which plans point at (`kept_menu`)
        menus/<menu sha256>.sig
    plans/<namespace>/<devicefleet>/         (`plan_prefix`)
        plan.json                            the signed rollout plan of a fleet (`plan_key`)
        plan.sig
    sources/<name>/                          source models the samples put there (store://sources/<name>/model.onnx),
                                             never served (`source_prefix`)
    registry/devices.json                    the device registry the operator builds from the KubeEdge Devices'
                                             identity keys and the gateway reloads, never served
                                             (`DEVICE_REGISTRY_KEY`; format: gateway/authn.py)
    registry/watermarks/licensees.json       the licensees' watermark records, never the owner's key, never
                                             served (`WATERMARK_RECORDS_KEY`; format: watermark/registry.py)
    registry/watermarks/bases/<sha256>.onnx  each base model a watermark was embedded in, the reference a
                                             suspect is realigned against (`watermark_base_key`)

The same tree on disk (`store.DirectoryStore`) and, later, under an S3 prefix.  Each
`models/...` folder is a complete variant directory, so `tinymlops variants verify`
works on it as it is, and so is the folder `tinymlops variants build --out DIR` writes
(its prefix is the directory's name).  Every signed file `X.json` has its signature
beside it in `X.sig`.  Functions that take a `prefix` accept it with or without a
trailing slash, as plans spell a menu's `folder` with one.  Pure string functions.
"""

from __future__ import annotations

MODELS_ROOT, PLANS_ROOT, SOURCES_ROOT, REGISTRY_ROOT = "models", "plans", "sources", "registry"
# What the gateway serves: never sources/ (unpublished models) nor registry/ (which devices exist).
SERVED_ROOTS = (MODELS_ROOT, PLANS_ROOT)
DEVICE_REGISTRY_KEY = f"{REGISTRY_ROOT}/devices.json"
WATERMARK_RECORDS_KEY = f"{REGISTRY_ROOT}/watermarks/licensees.json"
MENU_FILE, MENU_SIGNATURE_FILE = "menu.json", "menu.sig"
PLAN_FILE, PLAN_SIGNATURE_FILE = "plan.json", "plan.sig"
BLOBS_DIR, KEYS_DIR, KEPT_MENUS_DIR = "blobs", "keys", "menus"
SIGNED_SUFFIX, SIGNATURE_SUFFIX = ".json", ".sig"


def _under(prefix: str, *names: str) -> str:
    return "/".join((prefix.rstrip("/"), *names))


def model_prefix(namespace: str, name: str) -> str:
    """The variant directory of one EdgeModel."""
    return f"{MODELS_ROOT}/{namespace}/{name}"


def plan_prefix(namespace: str, fleet: str) -> str:
    """The folder of one DeviceFleet's plan."""
    return f"{PLANS_ROOT}/{namespace}/{fleet}"


def menu_key(prefix: str) -> str:
    return _under(prefix, MENU_FILE)


def plan_key(prefix: str) -> str:
    return _under(prefix, PLAN_FILE)


def signature_key(key: str) -> str:
    """Where the signature of the signed file `key` (menu.json, plan.json, a kept menu) lies: beside it."""
    if not key.endswith(SIGNED_SUFFIX):
        raise ValueError(f"store key {key!r}: only {SIGNED_SUFFIX} files are signed")
    return key.removesuffix(SIGNED_SUFFIX) + SIGNATURE_SUFFIX


def blob_key(prefix: str, sha256: str) -> str:
    return _under(prefix, BLOBS_DIR, sha256)


def grant_file(recipient: str) -> str:
    """The data key wrapped for `recipient` (an X25519 key fingerprint), relative to its variant directory."""
    return f"{KEYS_DIR}/{recipient}.json"


def grant_key(prefix: str, recipient: str) -> str:
    return _under(prefix, grant_file(recipient))


def source_prefix(name: str) -> str:
    """Where the bundled samples place a source model (`store://` + this + `/model.onnx`); users may use any key."""
    return f"{SOURCES_ROOT}/{name}"


def kept_menu(namespace: str, model: str, menu_sha256: str) -> tuple[str, str]:
    """Store keys of a menu kept by digest and of its signature: an immutable copy in the model's folder
    (menu.json itself moves on with the next build, and a rollback must still find the stable menu)."""
    path = _under(model_prefix(namespace, model), KEPT_MENUS_DIR, f"{menu_sha256}{SIGNED_SUFFIX}")
    return path, signature_key(path)


def is_blob_key(key: str) -> bool:
    """Whether `key` names a content-addressed blob (immutable: its name is its digest)."""
    return f"/{BLOBS_DIR}/" in key


def watermark_base_key(sha256: str) -> str:
    """Where the watermark registry keeps a base model, by the sha256 of its bytes."""
    return f"{REGISTRY_ROOT}/watermarks/bases/{sha256}.onnx"
