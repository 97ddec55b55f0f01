"""check_source: resolve the source model and DATA.npz, validate them, hand them on as artifacts."""

from kfp import dsl
from kfp.dsl import Dataset, Model, Output

from tinymlops_pipelines.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def check_source(
    source_uri: str,
    data_uri: str,
    store_root: str,
    base: Output[Model],
    data: Output[Dataset],
    pre_uri: str = "",
    post_uri: str = "",
) -> str:
    """Fail early, naming the source, when the model or data is unusable; return the menu's `base` as JSON.

    `data_uri` may be empty: the data artifact is then empty with metadata present=False.
    With a pre module (`pre_uri`), DATA.npz holds raw inputs: the data artifact holds what the module makes of
    them (`x`) and the raw samples (`x_raw`), so every build task calibrates and scores with the real
    preprocessing; the modules' digests go in its metadata (`modules`) for publish_menu to hold them to.
    """
    import json
    from pathlib import Path

    from tinymlops.store import sha256_bytes
    from tinymlops.variants import load_dataset, load_source, resolve_uri
    from tinymlops.variants.modules import FactoryModules, fetch_modules, preprocessed_data
    from tinymlops_pipelines.errors import reported_errors

    root = Path(store_root) if store_root else None
    with reported_errors():
        model = load_source(source_uri, root)
        blobs = fetch_modules({"pre": pre_uri, "post": post_uri}, root)
        modules = FactoryModules.load(blobs.get("pre"), blobs.get("post"))
        preprocess = modules.preprocess if modules is not None and "pre" in blobs else None
        dataset = load_dataset(data_uri or None, model, root, preprocess=preprocess)
        raw = resolve_uri(data_uri, root) if data_uri else b""
        if preprocess is not None and modules is not None:
            raw = preprocessed_data(modules, dataset, raw)
    Path(base.path).write_bytes(model.data)
    base.metadata.update({"sha256": model.sha256, "source": model.source})
    Path(data.path).write_bytes(raw)
    data.metadata.update({"present": bool(data_uri), "source": data_uri,
                          "modules": {role: sha256_bytes(blob) for role, blob in blobs.items()}})
    return json.dumps(model.base_info(), sort_keys=True)
