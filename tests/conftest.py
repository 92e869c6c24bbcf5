from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fairseq_utils import ROOT, make_tiny_corpus, preprocess


@pytest.fixture(scope="session")
def tiny_data_bin(tmp_path_factory):
    """A fairseq data-bin (src -> tgt) of the generated tiny corpus, built once per test session."""
    root = tmp_path_factory.mktemp("tiny")
    return preprocess(make_tiny_corpus(root / "raw"), root / "data-bin")


@pytest.fixture(scope="session")
def demo_bin(tmp_path_factory):
    """The embedded Tatoeba corpus, prepared the way `make demo` does (data_prep.demo), at a tiny size."""
    dest = tmp_path_factory.mktemp("demo") / "bin"
    sizes = ["--train-size", "1000", "--valid-size", "30", "--test-size", "30", "--spm-size", "400"]
    subprocess.run([sys.executable, "-m", "data_prep.demo", "--dest", str(dest), *sizes], check=True, cwd=ROOT,
                   capture_output=True)  # fmt: skip
    return dest
