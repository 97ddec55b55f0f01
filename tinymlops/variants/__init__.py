"""The variant factory: one base ONNX model in, a matrix of scored, signed variants out.

Modules: `source` (resolve and check the model and DATA.npz), `transforms`
(one strategy per precision), `evaluate` (onnxruntime scoring), `cache`
(digest-keyed reuse) and `build` (one variant, or the whole matrix + menu).
"""

from tinymlops.variants.build import VariantBuild, build_variant, build_variants, check_precisions, tool_versions
from tinymlops.variants.source import Dataset, SourceModel, load_dataset, load_source, resolve_uri
from tinymlops.variants.transforms import TRANSFORMS, Transform, transform_for

__all__ = [
    "TRANSFORMS",
    "Dataset",
    "SourceModel",
    "Transform",
    "VariantBuild",
    "build_variant",
    "build_variants",
    "check_precisions",
    "load_dataset",
    "load_source",
    "resolve_uri",
    "tool_versions",
    "transform_for",
]
