"""Sample models the project ships so that demos and tests need no download."""

from tinymlops.model.digits import DigitsArtifacts, prepare_digits

__all__ = ["DigitsArtifacts", "prepare_digits"]
