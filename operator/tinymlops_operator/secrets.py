"""Reading a model's signing key from the Kubernetes Secret its EdgeModel names.

On demand, not through a watch: the operator needs a key only when it builds, and
watching every Secret in the cluster would need far wider RBAC than `get` on Secrets.
The `kubernetes` client is created per call from the service account, or else from the
kubeconfig that $KUBECONFIG names at that moment (the client library reads it at import
time otherwise, before the embedded stack has set it).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any

from tinymlops import __version__
from tinymlops.errors import SignatureError, WatermarkKeyError
from tinymlops.signing import load_private_key
from tinymlops.store import atomic_write

USER_AGENT = "tinymlops-operator"  # tells the operator's requests apart (audit logs, the RBAC coverage test)


def api_client() -> Any:
    """A `kubernetes` ApiClient (in-cluster, else $KUBECONFIG) that names the operator in its user agent."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
        api = client.ApiClient()
    except config.ConfigException:
        api = config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
    api.user_agent = f"{USER_AGENT}/{__version__}"
    return api


def _core_api() -> object:
    from kubernetes import client

    return client.CoreV1Api(api_client())


def _secret_bytes(namespace: str, name: str, key: str, *, what: str, error: type[Exception]) -> bytes:
    """The base64-decoded data `key` of Secret `namespace/name`; `error` names `what` and the fault."""
    from kubernetes.client.exceptions import ApiException

    try:
        secret = _core_api().read_namespaced_secret(name, namespace)  # type: ignore[attr-defined]
    except ApiException as exc:
        reason = "does not exist" if exc.status == 404 else f"cannot be read ({exc.status} {exc.reason})"
        raise error(f"{what} {reason}") from exc
    encoded = (secret.data or {}).get(key)
    if not encoded:
        raise error(f"{what} has no key {key!r}")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise error(f"{what}: {key} is not base64") from exc


def secret_signing_key(namespace: str, name: str, key: str, *, keys_dir: Path) -> Path:
    """Write the PEM key from Secret `namespace/name` (data `key`) to a private file and return its path.

    SignatureError names the Secret and what is wrong with it; the build is retried, so
    creating the Secret after the EdgeModel is enough.
    """
    what = f"spec.signingKeySecret: Secret {namespace}/{name}"
    pem = _secret_bytes(namespace, name, key, what=what, error=SignatureError)
    load_private_key(pem, source=f"{what} key {key}")  # refuse anything that is not an Ed25519 PEM
    path = keys_dir / f"{namespace}--{name}--{key}.pem"
    atomic_write(path, pem)
    path.chmod(0o600)
    return path


WATERMARK_KEY_MIN_BYTES = 32  # as `tinymlops watermark embed --key` asks of a key file


def watermark_key(namespace: str, name: str, key: str, *, keys_dir: Path) -> Path:
    """The owner's watermark key from Secret `namespace/name` (data `key`) as a private file, for the pipeline.

    Only the path travels on (pipeline parameters name where things are): the key itself never reaches the
    store, a menu, lineage, a log line or status.  WatermarkKeyError names the Secret and what is
    wrong; the build is retried, so creating the Secret after the EdgeModel is enough.
    """
    what = f"spec.watermark.keySecretRef: Secret {namespace}/{name}"
    raw = _secret_bytes(namespace, name, key, what=what, error=WatermarkKeyError)
    if len(raw) < WATERMARK_KEY_MIN_BYTES:
        raise WatermarkKeyError(
            f"{what}: {key} holds {len(raw)} bytes; a watermark key needs at least {WATERMARK_KEY_MIN_BYTES}")
    path = keys_dir / f"{namespace}--{name}--{key}.watermark-key"
    atomic_write(path, raw)
    path.chmod(0o600)
    return path


def model_data_key(namespace: str, model: str, *, keys_dir: Path) -> Path:
    """The model's data key (from Secret `<model>-data-key`, created on first use) as a private file.

    Kept in a Secret, not in the operator, so a rebuild, a restarted operator or a new recipient
    wraps the same key and devices that already hold it need nothing new.
    """
    from kubernetes.client.exceptions import ApiException

    from tinymlops.envelope import KEY_SIZE, new_data_key

    name, field = f"{model}-data-key", "data-key"
    api = _core_api()
    try:
        secret = api.read_namespaced_secret(name, namespace)  # type: ignore[attr-defined]
        key = base64.b64decode((secret.data or {}).get(field, ""), validate=True)
        if len(key) != KEY_SIZE:
            raise SignatureError(f"Secret {namespace}/{name}: {field} is not a {KEY_SIZE}-byte key")
    except ApiException as exc:
        if exc.status != 404:
            raise SignatureError(f"Secret {namespace}/{name} cannot be read ({exc.status} {exc.reason})") from exc
        key = new_data_key()
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "tinymlops"}},
                "data": {field: base64.b64encode(key).decode()}}
        api.create_namespaced_secret(namespace, body)  # type: ignore[attr-defined]
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"Secret {namespace}/{name}: {field} is not base64") from exc
    path = keys_dir / f"{namespace}--{model}--data.key"
    atomic_write(path, key.hex().encode())
    path.chmod(0o600)
    return path



LICENSEE_KEY_LABELS = ("tinymlops.io/model", "tinymlops.io/licensee")  # whose key a licensee key Secret holds


def licensee_data_key(namespace: str, model: str, licensee: str, *, keys_dir: Path) -> Path:
    """`licensee`'s own data key for the model's watermarked menu (Secret `<model>-<licensee>-licensee-data-key`,
    created on first use) as a private file.

    Never the model's key nor another licensee's: a device holds a grant of a licensee's key only when its
    recipient names that licensee, so one licensee's copy cannot be opened on another licensee's device.  Kept
    like the model's key, so rebuilds and new recipients wrap the same key.  Names can meet (model `a-b`,
    licensee `c` and model `a`, licensee `b-c`): the Secret's labels say whose key it holds, and a Secret
    labelled for another model or licensee is refused rather than used.
    """
    from kubernetes.client.exceptions import ApiException

    from tinymlops.envelope import KEY_SIZE, new_data_key

    name, field = f"{model}-{licensee}-licensee-data-key", "data-key"
    labels = dict(zip(LICENSEE_KEY_LABELS, (model, licensee), strict=True))
    api = _core_api()
    try:
        secret = api.read_namespaced_secret(name, namespace)  # type: ignore[attr-defined]
        found = {k: (secret.metadata.labels or {}).get(k) for k in LICENSEE_KEY_LABELS}
        if found != labels:
            raise SignatureError(f"Secret {namespace}/{name} is not licensee {licensee}'s data key for model "
                                 f"{model} (its labels {LICENSEE_KEY_LABELS[0]}, {LICENSEE_KEY_LABELS[1]}: "
                                 f"{found[LICENSEE_KEY_LABELS[0]]}, {found[LICENSEE_KEY_LABELS[1]]})")
        key = base64.b64decode((secret.data or {}).get(field, ""), validate=True)
        if len(key) != KEY_SIZE:
            raise SignatureError(f"Secret {namespace}/{name}: {field} is not a {KEY_SIZE}-byte key")
    except ApiException as exc:
        if exc.status != 404:
            raise SignatureError(f"Secret {namespace}/{name} cannot be read ({exc.status} {exc.reason})") from exc
        key = new_data_key()
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "tinymlops", **labels}},
                "data": {field: base64.b64encode(key).decode()}}
        api.create_namespaced_secret(namespace, body)  # type: ignore[attr-defined]
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"Secret {namespace}/{name}: {field} is not base64") from exc
    path = keys_dir / f"{namespace}--{model}--{licensee}--licensee-data.key"
    atomic_write(path, key.hex().encode())
    path.chmod(0o600)
    return path
