"""Shared fixtures: the digits sample model, trained once per test session.

Training repeats bit for bit within a session (same machine), not across machines or seeds
(`$TINYMLOPS_DIGITS_SEED`): tests on these fixtures must not expect a particular ranking of variants.
"""

import pytest

from tests.unit import signed_build as signed
from tinymlops.model import DigitsArtifacts, prepare_digits
from tinymlops.variants import Dataset, SourceModel, load_dataset, load_source


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsArtifacts:
    return prepare_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def base(digits: DigitsArtifacts) -> SourceModel:
    return load_source(digits.model_path)


@pytest.fixture(scope="session")
def dataset(digits: DigitsArtifacts, base: SourceModel) -> Dataset:
    return load_dataset(digits.data_path, base)


@pytest.fixture(scope="session")
def signed_build(tmp_path_factory: pytest.TempPathFactory, digits: DigitsArtifacts) -> signed.Built:
    """The digits variants built and signed once per session (tests/unit/signed_build.py); copy before changing."""
    return signed.build(tmp_path_factory.mktemp("signed-store"), digits)
