"""watermark: a licensee's watermarked copy of the base model, from which that licensee's variants are built."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from tinymlops_pipelines.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def watermark(
    base: Input[Model],
    data: Input[Dataset],
    licensee: str,
    key_path: str,
    store_root: str,
    watermarked: Output[Model],
) -> str:
    """Embed `licensee`'s watermark in `base` (same graph, new weights) and register it in the store's watermark
    registry.  The step rides on the model it made, as metadata `watermark` = {"source_sha256",
    "watermarked_sha256", "transform"}, which build_variant writes into each variant's lineage (an artifact's
    metadata, not the task's output parameter: kfp.local 2.17 hands a ParallelFor body the loop item for an
    upstream task's parameter); the same JSON is returned for the KFP UI.

    With an empty `licensee` the base is handed on as it is and "" returned: the model's own menu.  (The
    pipeline runs this task either way: kfp.local cannot pick between two tasks' artifacts with dsl.OneOf.)
    """
    import io
    import json
    import shutil
    from pathlib import Path

    from tinymlops.errors import CalibrationDataMissingError
    from tinymlops.store import DirectoryStore, sha256_bytes
    from tinymlops_pipelines.errors import reported_errors

    if not licensee:
        shutil.copyfile(base.path, watermarked.path)
        watermarked.metadata.update(dict(base.metadata))
        return ""
    with reported_errors():
        import numpy as np

        from tinymlops.watermark import WatermarkRegistry, embed, key_from_file, lineage_transform

        if not data.metadata.get("present"):
            raise CalibrationDataMissingError(
                f"licensee {licensee}: a watermark is learnt from data; give the EdgeModel spec.data")
        model = Path(base.path).read_bytes()
        with np.load(io.BytesIO(Path(data.path).read_bytes())) as arrays:
            x = arrays["x"].astype(np.float32)
            y = arrays["y"].astype(np.int64) if "y" in arrays.files else None
        embedded = embed(model, x, y, key=key_from_file(Path(key_path)), licensee=licensee,
                         registry=WatermarkRegistry(DirectoryStore(Path(store_root))))
    Path(watermarked.path).write_bytes(embedded.model)
    digest = sha256_bytes(embedded.model)
    step = {"source_sha256": sha256_bytes(model), "watermarked_sha256": digest,
            "transform": lineage_transform(embedded.record)}
    watermarked.metadata.update({"sha256": digest, "source": str(base.metadata.get("source", "")),
                                 "licensee": licensee, "watermark": step})
    return json.dumps(step, sort_keys=True)
