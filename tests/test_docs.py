"""The documentation as a user meets it: README.md stays a front page, every relative link of README.md and docs/
resolves to a file of the repository (and to a heading there, for an anchor), no user page points to the CI-only
``../shared`` folder, and every Python block marked runnable (``<!-- runnable -->`` on the line before its fence,
docs/contributing.md) runs as written and trains a SAGE optimizer: the README's loop, the torch LR scheduler loop and
the ``transformers.Trainer`` example of docs/pytorch.md."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from fairseq_plugins.optim.sage import _SAGEBase
from tests.fairseq_utils import PLUGIN_DIR, ROOT

README = ROOT / "README.md"
RESULTS = ROOT / "RESULTS.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
CONTRIBUTORS_PAGE = ROOT / "docs" / "contributing.md"  # the one page that may speak of CI's ../shared
RUNNABLE = "<!-- runnable -->"
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            lines.append(line)
    return lines


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation but - and _ dropped, spaces to -."""
    headings = [line.lstrip("#").strip() for line in _prose(path.read_text()) if re.match(r"#{1,6} ", line)]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def _runnable_blocks() -> list[tuple[str, str]]:
    """(``file:line``, code) of every marked block; a marker must stand right before a ```python fence."""
    blocks = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() == RUNNABLE:
                where = f"{path.relative_to(ROOT)}:{i + 1}"
                assert lines[i + 1] == "```python", f"{where}: {RUNNABLE} must stand right before a ```python fence"
                end = lines.index("```", i + 2)
                blocks.append((where, "\n".join(lines[i + 2 : end]) + "\n"))
    return blocks


BLOCKS = _runnable_blocks()


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## What it measured", "## Install", "## Train with SAGE in plain PyTorch",
        "## Train a translation model with fairseq", "## More", "## Citation",
    ]  # fmt: skip
    assert any(where.startswith("README.md:") for where, _ in BLOCKS), "the README's loop is not marked runnable"
    for command in ("make setup", "make test", "make demo", "pip install .", "fairseq-train", "--optimizer adam_sage"):
        assert command in text, command


def test_readme_fairseq_command_and_flag_table_parse():
    """The README's fairseq-train command parses with fairseq's own parser (plugin loaded), and every flag of its
    table is an option there."""
    from fairseq import options

    import fairseq_plugins

    text = README.read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if b.startswith("fairseq-train "))
    argv = shlex.split(block.replace("\\\n", " "))[1:]
    argv[argv.index("--user-dir") + 1] = str(PLUGIN_DIR)
    fairseq_plugins.register()
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    assert (args.optimizer, args.lr_scheduler, args.lr) == ("adam_sage", "sage_inverse_sqrt", [1e-3])
    section = text.split("## Train a translation model with fairseq")[1]
    table = [line for line in section.splitlines() if line.startswith("| `")]
    flags = {flag for row in table for flag in re.findall(r"`(--[a-z0-9-]+)", row)}
    assert len(flags) >= 8
    for flag in flags:
        assert hasattr(args, flag[2:].replace("-", "_")), f"README's table: fairseq-train has no {flag}"


def test_the_demo_note_gives_the_studies_result():
    """make demo's one seed shows SAGE ahead; the note under its table says that the tuned multi-seed studies have it
    behind, with their numbers, and each number is RESULTS.md's."""
    proc = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, check=True)
    note = re.search(r'--note "([^"]*)"', proc.stdout).group(1)
    results = RESULTS.read_text()
    for number in ("0.20", "1.02", "0.73", "1.46"):
        assert f"{number} " in note and f"−{number} ±" in results, number
    assert "RESULTS.md" in note and "400 updates" in note and "not evidence" in note


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path):
    for line in _prose(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            assert linked.is_relative_to(ROOT) and linked.exists(), f"{path.name}: {target} is not in the repository"
            if anchor:
                assert linked.suffix == ".md" and anchor in _anchors(linked), f"{path.name}: no heading for {target}"


@pytest.mark.parametrize("path", [p for p in DOCS if p != CONTRIBUTORS_PAGE], ids=lambda p: p.name)
def test_user_pages_do_not_point_to_ci_data(path):
    assert "../shared" not in path.read_text(), f"{path.name}: a cloner has no ../shared (use the --local-dir options)"


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_runnable_block_trains_sage(where, code, tmp_path, monkeypatch):
    """The block runs as written (in a scratch folder: the Trainer writes its output dir there) and leaves a SAGE
    optimizer whose state moved: steps taken, and a nonzero smoothed sensitivity."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    exec(compile(code, where, "exec"), namespace)
    optimizers = [value for value in namespace.values() if isinstance(value, _SAGEBase)]
    assert optimizers, f"{where} made no AdamSAGE/AdamaxSAGE"
    for opt in optimizers:
        states = [opt.state[p] for group in opt.param_groups for p in group["params"] if p in opt.state]
        assert states and all(float(s["step"]) > 0 for s in states), where
        assert any(torch.count_nonzero(s["exp_avg_sens"]) > 0 for s in states if "exp_avg_sens" in s), where
    if where.startswith("README.md:"):  # the front page's loop learns: from about 1.4 (4 classes) to about 0.1
        loss = torch.nn.functional.cross_entropy(namespace["model"](namespace["x"]), namespace["y"])
        assert loss.item() < 0.5, loss.item()
