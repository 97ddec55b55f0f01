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
) -> str:
    """Fail early, naming the source, when the model or data is unusable; return the menu's `base` as JSON.

    `data_uri` may be empty: the data artifact is then empty with metadata present=False.
    """
    import json
    from pathlib import Path

    from tinymlops.variants import load_dataset, load_source, resolve_uri
    from tinymlops_pipelines.errors import reported_errors

    root = Path(store_root) if store_root else None
    with reported_errors():
        model = load_source(source_uri, root)
        load_dataset(data_uri or None, model, root)
    Path(base.path).write_bytes(model.data)
    base.metadata.update({"sha256": model.sha256, "source": model.source})
    Path(data.path).write_bytes(resolve_uri(data_uri, root) if data_uri else b"")
    data.metadata.update({"present": bool(data_uri), "source": data_uri})
    return json.dumps(model.base_info(), sort_keys=True)
