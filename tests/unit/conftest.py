"""Shared fixtures: the digits sample model, trained once per test session.

Training repeats bit for bit within a session (same machine), not across machines or seeds
(`$TINYMLOPS_DIGITS_SEED`): tests on these fixtures must not expect a particular ranking of variants.
"""

import pytest

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
