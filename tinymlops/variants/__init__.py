"""The variant factory: one base ONNX model in, a matrix of scored, signed variants out.

Modules: `source` (resolve and check the model and DATA.npz), `transforms`
(one strategy per step: fp16, int8, pruning), `matrix` (variant ids and the
chains of steps they stand for), `tvm` and `tvm_transform` (Apache TVM
compilation per target), `evaluate` (scoring), `cache` (digest-keyed reuse)
and `build` (one variant, or the whole matrix + menu).
"""

from tinymlops.extras import require_extra

# Before the imports below, so a missing dependency names the extra that brings it.
require_extra("pipelines", __name__, "onnx")

from tinymlops.variants.build import VariantBuild, build_variant, build_variants, tool_versions
from tinymlops.variants.matrix import VariantSpec, calibrated, parse_precision, parse_target, spec_for, variant_matrix
from tinymlops.variants.source import Dataset, SourceModel, load_dataset, load_source, resolve_uri
from tinymlops.variants.transforms import TRANSFORMS, Transform, transform_for

__all__ = [
    "TRANSFORMS",
    "Dataset",
    "SourceModel",
    "Transform",
    "VariantBuild",
    "VariantSpec",
    "build_variant",
    "build_variants",
    "calibrated",
    "load_dataset",
    "load_source",
    "parse_precision",
    "parse_target",
    "resolve_uri",
    "spec_for",
    "tool_versions",
    "transform_for",
    "variant_matrix",
]
