"""One folder per component: component.py (heavy imports inside the function) and a README."""

from tinymlops_pipelines.components.build_variant.component import build_variant
from tinymlops_pipelines.components.check_source.component import check_source
from tinymlops_pipelines.components.publish_menu.component import publish_menu
from tinymlops_pipelines.components.watermark.component import watermark

__all__ = ["build_variant", "check_source", "publish_menu", "watermark"]
