from __future__ import annotations

import pytest

from tests.fairseq_utils import make_tiny_corpus, preprocess


@pytest.fixture(scope="session")
def tiny_data_bin(tmp_path_factory):
    """A fairseq data-bin (src -> tgt) of the generated tiny corpus, built once per test session."""
    root = tmp_path_factory.mktemp("tiny")
    return preprocess(make_tiny_corpus(root / "raw"), root / "data-bin")
