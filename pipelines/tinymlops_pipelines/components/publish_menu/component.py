"""publish_menu: gather the built variants, sign the menu, publish blobs then menu to the store."""

from kfp import dsl
from kfp.dsl import Input, Model

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
) -> str:
    """Publish the signed menu under models/<namespace>/<name>/ and return its sha256."""
    import json
    from pathlib import Path

    from tinymlops.errors import SignatureError
    from tinymlops.menu import assemble_menu, write_menu
    from tinymlops.signing import load_private_key
    from tinymlops.store import DirectoryStore, model_prefix, sha256_bytes
    from tinymlops_pipelines.errors import reported_errors

    with reported_errors():
        blobs = {sha256_bytes(data): data for data in (Path(v.path).read_bytes() for v in variants) if data}
        # Parallel tasks finish in any order; the menu lists variants in the order asked for.
        results = sorted((json.loads(e) for e in entries), key=lambda e: variant_ids.index(e["id"]))
        built = [r for r in results if not r.get("not_built")]
        not_built = [{"id": r["id"], "reason": r["reason"]} for r in results if r.get("not_built")]
        menu = assemble_menu(model_ref=(namespace, name), version=menu_version,
                             base=json.loads(base_info), variants=built, not_built=not_built)
        try:
            pem = Path(signing_key_path).read_bytes()
        except OSError as exc:
            raise SignatureError(f"signing key {signing_key_path}: cannot be read ({exc.strerror})") from exc
        key = load_private_key(pem, source=signing_key_path)
        return write_menu(DirectoryStore(Path(store_root)), model_prefix(namespace, name), menu, blobs, key)
