"""Each licensee's menu opens only on that licensee's devices: its own data key, granted to its own recipients.

The spec is read by the operator's logic, the data keys come from `secrets` (an in-memory Secrets API), the
menus are published by `build_variants` (the publish the pipeline's publish_menu calls), and devices install
with `agent install`'s `install_from_dir`, as a device holding its key would.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops import errors
from tinymlops.agent.install import install_from_dir
from tinymlops.envelope import device_key_pem, device_public_pem, fingerprint, generate_device_key, load_device_public
from tinymlops.errors import IntegrityError
from tinymlops.kube.schema import load_crds
from tinymlops.model import DigitsArtifacts
from tinymlops.signing import public_key_pem
from tinymlops.store import DirectoryStore
from tinymlops.variants import build_variants
from tinymlops_operator import secrets
from tinymlops_operator.config import Settings
from tinymlops_operator.logic import edgemodel as model_logic
from tinymlops_operator.runtime import pipeline_build_fn

ROOT = Path(__file__).resolve().parents[2]
SIGNER = Ed25519PrivateKey.generate()
ACME, GLOBEX, LAB = generate_device_key(), generate_device_key(), generate_device_key()  # device-group keys
LICENSEES = ("acme", "globex")


def recipient(name: str, key: Any, licensee: str = "") -> dict[str, str]:
    return {"name": name, "publicKey": device_public_pem(key.public_key()).decode(),
            **({"licensee": licensee} if licensee else {})}


SPEC: dict[str, Any] = {
    "source": {"uri": "store://m.onnx"}, "data": {"uri": "store://d.npz"},
    "watermark": {"keySecretRef": {"name": "owner-key"}, "licensees": list(LICENSEES)},
    "encryption": {"recipients": [recipient("acme-pi", ACME, "acme"), recipient("globex-pi", GLOBEX, "globex"),
                                  recipient("lab", LAB)]},
}


def request(spec: dict[str, Any] = SPEC) -> model_logic.BuildRequest:
    return model_logic.build_request(spec, namespace="ns", name="m", generation=1, previous_menu_version=0)


class FakeSecrets:
    """The Secrets part of CoreV1Api the operator uses (get, create), in memory."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        if (namespace, name) not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        body = self.secrets[(namespace, name)]
        return SimpleNamespace(data=body["data"], metadata=SimpleNamespace(labels=body["metadata"].get("labels")))

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.secrets[(namespace, body["metadata"]["name"])] = body


# --- the spec -------------------------------------------------------------------------------------


def test_recipients_are_split_by_the_licensee_they_name() -> None:
    built = request()
    assert built.encrypted
    assert built.recipients_of("") == built.recipients == (SPEC["encryption"]["recipients"][2]["publicKey"],)
    assert built.recipients_of("acme") == (SPEC["encryption"]["recipients"][0]["publicKey"],)
    assert built.recipients_of("globex") == (SPEC["encryption"]["recipients"][1]["publicKey"],)


def test_the_schema_takes_a_recipient_licensee_as_a_dns_label() -> None:
    crds = load_crds(ROOT / "crds")
    body = {"apiVersion": "tinymlops.io/v1alpha1", "kind": "EdgeModel", "metadata": {"name": "m"}, "spec": SPEC}
    assert crds.validate(crds.apply_defaults(body)) == []
    bad = json.loads(json.dumps(body))
    bad["spec"]["encryption"]["recipients"][0]["licensee"] = "Acme Corp"
    problems = crds.validate(crds.apply_defaults(bad))
    assert problems and problems[0].startswith("spec.encryption.recipients[0].licensee")


@pytest.mark.parametrize(("recipients", "message"), [
    ([recipient("a", ACME, "initech"), recipient("g", GLOBEX, "globex")],
     r"spec.encryption.recipients\[0\].licensee: 'initech' is not a licensee of this model "
     r"\(spec.watermark.licensees: acme, globex\)"),
    ([recipient("a", ACME, "acme"), recipient("lab", LAB)], "no recipient names licensee globex"),
    ([recipient("lab", LAB)], "no recipient names licensee acme, globex"),
])
def test_a_recipient_of_no_listed_licensee_or_a_licensee_without_one_is_refused(
        recipients: list[dict[str, str]], message: str) -> None:
    with pytest.raises(errors.SpecError, match=message):
        request({**SPEC, "encryption": {"recipients": recipients}})


def test_without_a_watermark_a_recipient_naming_a_licensee_is_refused() -> None:
    spec = {"source": SPEC["source"], "encryption": {"recipients": [recipient("a", ACME, "acme")]}}
    with pytest.raises(errors.SpecError, match="'acme' is not a licensee of this model .*: none"):
        request(spec)


def test_unencrypted_licensee_menus_say_what_that_costs_attribution() -> None:
    menu = {"version": 1, "variants": [{"id": "fp32", "accepted": True, "metrics": {}}]}
    entry = {"licensee": "acme", "menuSha256": "a" * 64, "menuVersion": 1, "variants": 1, "accepted": 1}
    clear = model_logic.ready_status({}, menu, "b" * 64, 1, licensees=[entry], encrypted=False)
    sealed = model_logic.ready_status({}, menu, "b" * 64, 1, licensees=[entry], encrypted=True)
    assert model_logic.UNENCRYPTED_LICENSEE_MENUS in clear["conditions"][0]["message"]
    assert "not encrypted" not in sealed["conditions"][0]["message"]
    assert not request({**SPEC, "encryption": None}).encrypted


# --- the data keys --------------------------------------------------------------------------------


def test_each_licensee_gets_its_own_data_key_kept_in_a_labelled_secret(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    core = FakeSecrets()
    monkeypatch.setattr(secrets, "_core_api", lambda: core)
    model = secrets.model_data_key("ns", "m", keys_dir=tmp_path).read_text()
    acme = secrets.licensee_data_key("ns", "m", "acme", keys_dir=tmp_path).read_text()
    globex = secrets.licensee_data_key("ns", "m", "globex", keys_dir=tmp_path).read_text()
    assert len({model, acme, globex}) == 3
    assert secrets.licensee_data_key("ns", "m", "acme", keys_dir=tmp_path).read_text() == acme  # kept, reused
    path = secrets.licensee_data_key("ns", "m", "acme", keys_dir=tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    labels = core.secrets[("ns", "m-acme-licensee-data-key")]["metadata"]["labels"]
    assert labels["tinymlops.io/model"] == "m" and labels["tinymlops.io/licensee"] == "acme"


def test_a_licensee_key_secret_of_another_model_is_refused_not_used(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    core = FakeSecrets()
    monkeypatch.setattr(secrets, "_core_api", lambda: core)
    secrets.licensee_data_key("ns", "a", "b-c", keys_dir=tmp_path)  # Secret a-b-c-licensee-data-key
    with pytest.raises(errors.SignatureError, match="is not licensee c's data key for model a-b"):
        secrets.licensee_data_key("ns", "a-b", "c", keys_dir=tmp_path)


def test_the_operator_builds_each_menu_with_its_own_key_for_its_own_recipients(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tinymlops_pipelines.runner as runner

    core, calls = FakeSecrets(), []
    monkeypatch.setattr(secrets, "_core_api", lambda: core)
    monkeypatch.setattr(secrets, "watermark_key", lambda *a, keys_dir: keys_dir / "owner.key")
    monkeypatch.setattr(runner, "build_variants",
                        lambda **arguments: calls.append(arguments) or SimpleNamespace(
                            menu={"licensee": arguments["licensee"]}, run=SimpleNamespace(as_status=dict)))
    (tmp_path / "signing.pem").write_bytes(b"")
    settings = Settings(store_root=tmp_path / "store", signing_key=tmp_path / "signing.pem", gateway_url=None,
                        kfp_host=None, pipeline_root=tmp_path / "runs", cache_dir=tmp_path / "cache")
    (tmp_path / "model-keys").mkdir()
    built = pipeline_build_fn(settings)(request())
    assert set(built.licensees) == set(LICENSEES)
    by_licensee = {call["licensee"]: call for call in calls}
    assert len({str(call["data_key_path"]) for call in calls}) == 3
    assert by_licensee["acme"]["recipients"] == [SPEC["encryption"]["recipients"][0]["publicKey"]]
    assert by_licensee["globex"]["recipients"] == [SPEC["encryption"]["recipients"][1]["publicKey"]]
    assert by_licensee[""]["recipients"] == [SPEC["encryption"]["recipients"][2]["publicKey"]]


# --- devices --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> dict[str, Path]:
    """The model's own menu and each licensee's, published as the operator asks: own key, own recipients."""
    from tinymlops.layout import menu_prefix

    root = tmp_path_factory.mktemp("licensee-keys")
    built, core = request(), FakeSecrets()
    out: dict[str, Path] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(secrets, "_core_api", lambda: core)
        for licensee in ("", *LICENSEES):
            key_file = (secrets.licensee_data_key("ns", "m", licensee, keys_dir=root) if licensee
                        else secrets.model_data_key("ns", "m", keys_dir=root))
            prefix = menu_prefix("ns", "m", licensee)
            build_variants(digits.model_path, digits.data_path, DirectoryStore(root / "store"), prefix,
                           signing_key=SIGNER, model_ref=("ns", "m"), precisions=["fp32"],
                           data_key=bytes.fromhex(key_file.read_text()),
                           recipients=[load_device_public(p.encode(), source="spec")
                                       for p in built.recipients_of(licensee)])
            out[licensee or "model"] = root / "store" / prefix
    return out


def install(folder: Path, device: Any, state: Path) -> str:
    result = install_from_dir(folder, state, pubkey_pem=public_key_pem(SIGNER.public_key()),
                              device_key_pem=device_key_pem(device))
    return result.variant_id


def test_a_licensee_device_installs_its_own_menu_and_no_other(folders: dict[str, Path], tmp_path: Path) -> None:
    assert install(folders["acme"], ACME, tmp_path / "acme") == "fp32"
    assert install(folders["globex"], GLOBEX, tmp_path / "globex") == "fp32"
    acme_device = f"no data key is wrapped for this device \\({fingerprint(ACME.public_key())}\\)"
    with pytest.raises(IntegrityError, match=acme_device):
        install(folders["globex"], ACME, tmp_path / "acme")  # globex's copy, on an acme device
    with pytest.raises(IntegrityError, match=acme_device):
        install(folders["model"], ACME, tmp_path / "acme")  # nor the unwatermarked one, which names no one
    assert install(folders["model"], LAB, tmp_path / "lab") == "fp32"


def test_each_menu_is_encrypted_under_its_own_key_and_granted_to_its_recipients_only(
        folders: dict[str, Path]) -> None:
    key_ids = {}
    for name, folder in folders.items():
        menu = json.loads((folder / "menu.json").read_text())
        key_ids[name] = {v["encryption"]["key_id"] for v in menu["variants"]}
        assert len(key_ids[name]) == 1
    assert len(set.union(*key_ids.values())) == len(folders)
    grants = {name: sorted(p.stem for p in (folder / "keys").iterdir()) for name, folder in folders.items()}
    assert grants == {"model": [fingerprint(LAB.public_key())], "acme": [fingerprint(ACME.public_key())],
                      "globex": [fingerprint(GLOBEX.public_key())]}
