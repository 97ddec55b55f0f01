"""publish_menu: gather the built variants and publish them as the signed menu (`tinymlops.publish`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from tinymlops_pipelines.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def publish_menu(
    base_info: str,
    entries: list[str],
    variants: Input[list[Model]],
    variant_ids: list[str],
    store_root: str,
    namespace: str,
    name: str,
    menu_version: int,
    signing_key_path: str,
    base: Input[Model],
    data: Input[Dataset],
    data_key_path: str = "",
    recipients: list[str] = [],  # noqa: B006  (a component default, never mutated)
    pre_uri: str = "",
    post_uri: str = "",
    licensee: str = "",
    split_parts: bool = False,
) -> str:
    """Publish the signed menu under models/<namespace>/<name>/ (a `licensee`'s: under its folder there,
    `tinymlops.layout.licensee_prefix`) and return its sha256.

    With `data_key_path`, every artifact is published encrypted under that data key and
    the key is wrapped for each recipient (X25519 public key PEM) under keys/. `base` and `data`
    (check_source's outputs) give the menu's reference drift histograms (`monitoring`), with the output
    reference of each built variant this host can run.  `pre_uri`/`post_uri`: the WebAssembly modules check_source
    checked (their digests are in `data`'s metadata and must still hold), listed in the menu and linked to every
    variant (`tinymlops.variants.modules`).  `split_parts`: each exact split point's head and tail are published
    too (`tinymlops.variants.split`), for devices that share the work with the gateway; never when encrypted.
    """
    import json
    from pathlib import Path

    from tinymlops.envelope import load_device_public
    from tinymlops.errors import SignatureError, SpecError
    from tinymlops.layout import menu_prefix
    from tinymlops.publish import publish
    from tinymlops.signing import load_private_key
    from tinymlops.store import DirectoryStore, sha256_bytes
    from tinymlops.variants import load_dataset, load_source
    from tinymlops.variants.modules import FactoryModules, attach, fetch_modules, with_raw_samples
    from tinymlops.variants.monitoring import reference_monitoring
    from tinymlops_pipelines.errors import reported_errors

    with reported_errors():
        blobs = {sha256_bytes(data): data for data in (Path(v.path).read_bytes() for v in variants) if data}
        # Parallel tasks finish in any order; the menu lists variants in the order asked for.
        results = sorted((json.loads(e) for e in entries), key=lambda e: variant_ids.index(e["id"]))
        built = [r for r in results if not r.get("not_built")]
        not_built = [{"id": r["id"], "reason": r["reason"]} for r in results if r.get("not_built")]
        data_key = bytes.fromhex(Path(data_key_path).read_text().strip()) if data_key_path else None
        public = [load_device_public(r.encode(), source=f"recipient {i}") for i, r in enumerate(recipients)
                  if data_key is not None]
        try:
            pem = Path(signing_key_path).read_bytes()
        except OSError as exc:
            raise SignatureError(f"signing key {signing_key_path}: cannot be read ({exc.strerror})") from exc
        key = load_private_key(pem, source=signing_key_path)
        source = load_source(Path(base.path))
        data_bytes = Path(data.path).read_bytes() if data.metadata.get("present") else None
        dataset = load_dataset(data_bytes, source)
        # Each variant's own output reference, from the plaintext blobs (publish encrypts after this; a
        # missing blob is publish's to name).
        monitoring = reference_monitoring(source, dataset,
                                          [(entry, blobs[entry["sha256"]]) for entry in built
                                           if entry["sha256"] in blobs])
        module_blobs = fetch_modules({"pre": pre_uri, "post": post_uri}, Path(store_root),
                                     expected=data.metadata.get("modules") or {})
        modules = FactoryModules.load(module_blobs.get("pre"), module_blobs.get("post"))
        if data_bytes is not None:
            dataset = with_raw_samples(dataset, data_bytes)
        built, blobs, module_entries = attach(modules, source, dataset, built, blobs)
        if split_parts:
            if data_key is not None:  # head + tail are the whole model in the clear
                raise SpecError("split parts cannot be published with encryption: a head and its tail are the "
                                "whole model in the clear")
            from tinymlops.variants.split import with_parts

            built, blobs = with_parts(built, blobs)
        return publish(
            DirectoryStore(Path(store_root)), menu_prefix(namespace, name, licensee), model_ref=(namespace, name),
            version=menu_version, base=json.loads(base_info), variants=built, blobs=blobs, not_built=not_built,
            signing_key=key, data_key=data_key, recipients=public, monitoring=monitoring, modules=module_entries,
        ).sha256
