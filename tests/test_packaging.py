"""The project as a package: what pyproject.toml ships, the layering of its packages, and a non-editable install
(``pip install .``) running a tiny comparison from another folder, with the configs and the plugin of the install."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from sage_toolkit.evaluation import facts
from tests.fairseq_utils import ROOT

LIBRARY = ("sage_toolkit", "fairseq_plugins")  # what data_prep may use; they never import data_prep


def _modules(*packages: str):
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_pyproject_lists_every_package_of_the_checkout():
    from setuptools import find_packages

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_packages(where=ROOT, include=["fairseq_plugins*", "data_prep*", "sage_toolkit*"])
    assert sorted(set(setuptools["packages"]) - {"sage_toolkit.configs"}) == sorted(found)
    assert setuptools["package-dir"] == {"sage_toolkit.configs": "configs"}


def test_the_library_never_imports_data_prep():
    """data_prep uses the toolkit (its errors, atomic output, locks, the facts evaluation reads); never the reverse."""
    imports = []
    for path, tree in _modules(*LIBRARY):
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            imports += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "data_prep"]
    assert imports == []


def test_the_library_starts_no_script_by_its_path():
    """Children are ``python -m MODULE`` of the installed package: no path into the checkout's scripts/."""
    paths = []
    for path, tree in _modules(*LIBRARY):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and not any(c.isspace() for c in node.value)
            ):
                if node.value == "scripts" or node.value.startswith("scripts/"):
                    paths.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert paths == []


def test_the_facts_of_old_preparations_are_what_their_dataset_modules_record():
    """prep.json files from before the facts were recorded are read with :data:`facts.LEGACY_DATASETS`: the values of
    the dataset modules that wrote them."""
    from data_prep import demo, iwslt14, multi30k, wmt16

    recorded = {m.NAME: (m.LOWERCASED, m.BLEU_TOK_KIND) for m in (demo, iwslt14, multi30k, wmt16)}
    assert facts.LEGACY_DATASETS == recorded


def _install_copy(target: Path, scratch: Path) -> None:
    """``pip install .`` (not editable) of a copy of the checkout into ``target``, offline: no dependencies, the
    build backend of this environment."""
    source = scratch / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("configs", "sage_toolkit", "fairseq_plugins", "data_prep"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
           "--disable-pip-version-check", "--target", str(target), str(source)]  # fmt: skip
    proc = subprocess.run(pip, capture_output=True, text=True, cwd=scratch, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_a_non_editable_install_compares_from_another_folder(tmp_path):
    site = tmp_path / "site"
    _install_copy(site, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    code = "import sage_toolkit.paths as p; print(p.__file__, p.CONFIG_DIR)"
    where = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env,
                           check=True).stdout.split()  # fmt: skip
    assert where == [str(site / "sage_toolkit" / "paths.py"), str(site / "sage_toolkit" / "configs")]
    assert not Path(where[0]).is_relative_to(ROOT)

    # the embedded corpus as installed, 5 test sentences: an untrained model translates each to fairseq's maximum length
    sizes = ["--train-size", "300", "--valid-size", "10", "--test-size", "5", "--spm-size", "300"]
    prepare = [sys.executable, "-m", "data_prep.demo", "--dest", "bin", *sizes]
    subprocess.run(prepare, capture_output=True, cwd=elsewhere, env=env, check=True)
    compare = [str(site / "bin" / "sage-compare"), "--configs", "demo_sage", "--data", "bin", "--out", "cmp",
               "--cpu", "--no-valid-bleu", "--beam", "1", "optimization.max_update=2",
               "dataset.max_tokens=1024"]  # fmt: skip
    runner = subprocess.Popen(compare, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=elsewhere,
                              env=env)  # fmt: skip
    try:
        output, _ = runner.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        runner.terminate()  # the runner stops its children (their own process groups) before it exits
        output, _ = runner.communicate(timeout=120)
        pytest.fail(f"sage-compare took more than 10 minutes:\n{output[-3000:]}")
    assert runner.returncode == 0, output[-5000:]
    [run] = json.loads((elsewhere / "cmp" / "results.json").read_text())["runs"]
    assert run["config"] == "demo_sage" and run["updates"] == 2 and 0 <= run["bleu_tok"] <= 100
    trained = yaml.safe_load((elsewhere / "cmp" / "demo_sage" / "seed1" / ".hydra" / "config.yaml").read_text())
    assert trained["common"]["user_dir"] == str(site / "fairseq_plugins")  # the installed plugin, not the checkout's
