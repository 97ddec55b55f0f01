"""Sample models the project ships so that demos and tests need no download."""

from tinymlops.extras import require_extra

# Before the imports below, so a missing dependency names the extra that brings it.
require_extra("pipelines", __name__, "onnx", "sklearn", "skl2onnx")

from tinymlops.model.digits import DigitsArtifacts, prepare_digits

__all__ = ["DigitsArtifacts", "prepare_digits"]
