"""The install step: the fairseq compatibility patch is in place, idempotent, and does what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sage_toolkit.install import patch_fairseq
from tests.fairseq_utils import data_bin_variant, run_cli, train_args

ROOT = Path(__file__).resolve().parents[1]


def test_installed_fairseq_is_patched_and_patching_again_changes_nothing():
    check = [sys.executable, "-m", "sage_toolkit.install.patch_fairseq", "--check"]
    assert subprocess.run(check, capture_output=True, cwd=ROOT).returncode == 0
    assert patch_fairseq.pending_changes(patch_fairseq.fairseq_root()) == {}


def test_dataclass_defaults_become_factories():
    text = (
        "from dataclasses import dataclass\n"
        "@dataclass\nclass C:\n"
        "    common: CommonConfig = CommonConfig()\n"
        "    quant: QuantConfig = field(default=QuantConfig())\n"
        "    other: int = 3\n"
    )
    fixed = patch_fairseq._fix_dataclass_defaults(text)
    assert "common: CommonConfig = field(default_factory=CommonConfig)\n" in fixed
    assert "quant: QuantConfig = field(default_factory=QuantConfig)" in fixed
    assert "from dataclasses import field, dataclass" in fixed and "other: int = 3" in fixed
    assert patch_fairseq._fix_dataclass_defaults(fixed) == fixed


def test_fairseq_config_builds_on_this_python():
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.dataclass.initialize import hydra_init

    hydra_init("fairseq_sage_test_config")  # reads the dataclass defaults through the patched factories
    cfg = FairseqConfig()
    assert cfg.common is not FairseqConfig().common  # one instance per config, not a shared mutable default


@pytest.mark.slow
def test_fairseq_names_an_empty_split(tiny_data_bin, tmp_path):
    """Patch 7: fairseq-train on a data-bin whose train split has no sentences stops with the .bin file's name, not
    numpy's "cannot mmap an empty file" and a second error from __del__."""
    empty = data_bin_variant(tiny_data_bin, tmp_path / "bin", empty_split="train")
    proc = run_cli("train", train_args(empty, tmp_path / "ckpt", ["--optimizer", "adam"], 1), check=False)
    assert proc.returncode != 0
    assert proc.stderr.splitlines()[-1] == (
        f"ValueError: {empty / 'train.src-tgt.src.bin'} is empty: this split has no sentences "
        "(fairseq-preprocess was given an empty text file)"
    ), proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr


def test_the_patch_applies_to_fairseqs_text_and_upgrades_an_earlier_patch(tmp_path):
    """Each literal edit whose old text has alternatives (fairseq 0.12.2's, then what an earlier version of the patch
    made of it: e.g. the ``weights_only=False`` loads) gives today's installed text from either, once."""
    installed = patch_fairseq.fairseq_root()
    for variant in (0, 1):
        root = tmp_path / str(variant) / "fairseq"
        expected = {}
        for rel, olds, new in patch_fairseq._LITERAL_EDITS:
            path = Path(os.path.normpath(root / rel))
            if path not in expected:
                expected[path] = Path(os.path.normpath(installed / rel)).read_text(encoding="utf-8")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(expected[path], encoding="utf-8")
            olds = (olds,) if isinstance(olds, str) else olds
            path.write_text(path.read_text(encoding="utf-8").replace(new, olds[min(variant, len(olds) - 1)], 1))
        assert patch_fairseq.pending_changes(root) == expected, variant
