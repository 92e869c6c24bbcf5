"""Every console script of pyproject.toml speaks as sacreBLEU's do (docs/toolkit.md): its ``--help`` names it as
installed, with a one-line usage, every option in a named group with a help text and its default, and examples at
the end; ``--version`` prints the versions. Run through the installed scripts themselves."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sage_toolkit import cli, hydra_flags
from sage_toolkit.evaluation import commands as evaluation_commands
from sage_toolkit.redundancy import command as redundancy_command
from sage_toolkit.runner import commands as runner_commands
from sage_toolkit.study import command as study_command
from sage_toolkit.token_loss import command as token_loss_command
from tests.fairseq_utils import ROOT

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
PARSERS = {
    "sage-evaluate": evaluation_commands.build_evaluate_parser,
    "sage-average-checkpoints": evaluation_commands.build_average_parser,
    "sage-compare": runner_commands.build_parser,
    "sage-study": study_command.build_parser,
    "sage-analyze-redundancy": redundancy_command.build_parser,
    "sage-analyze-token-loss": token_loss_command.build_parser,
    "sage-render-flags": hydra_flags.build_parser,
}
BIN = Path(sys.executable).parent


def test_every_console_script_is_checked():
    assert set(PARSERS) == set(SCRIPTS), "a console script without its parser here, or one that is gone"


def _run(name: str, *args: str) -> subprocess.CompletedProcess:
    script = BIN / name
    assert script.is_file(), f"{script} is not installed: run make setup (pip install -e .)"
    env = dict(os.environ, COLUMNS="1000")  # one line per option: argparse wraps at the terminal's width
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def _entries(help_text: str) -> list[str]:
    """The help's entries, one string each: an option's or positional's invocation with its help text (argparse
    starts an entry at indent 2 and puts a long invocation's help on the lines below it)."""
    entries = []
    for line in help_text.splitlines():
        if re.match(r"  \S", line):
            entries.append(line.strip())
        elif line.startswith("    ") and entries:
            entries[-1] += " " + line.strip()
    return entries


def _shows_default(action) -> bool:
    """Whether an option's help must show its default: a value the user may leave out (not a switch, not None)."""
    switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
    empty = action.default in (None, False, "", []) or action.default == ()
    return bool(action.option_strings) and not switch and not empty


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_names_the_installed_command_and_every_option(name):
    parser = PARSERS[name]()
    proc = _run(name, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: {name} ") and "\n" not in usage, usage  # one line, the installed name
    default_group = next(g for g in parser._action_groups if g.title in ("options", "optional arguments"))
    entries = _entries(rest.split("\nexamples:\n", 1)[0])
    for action in parser._actions:
        if action.dest in ("help", "version"):
            continue
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help text"
        assert action not in default_group._group_actions, f"{name}: {action.option_strings} is in no named group"
        invocation = action.option_strings[0] if action.option_strings else action.dest
        entry = next(e for e in entries if re.match(re.escape(invocation) + r"(?:[ ,]|$)", e))
        assert " ".join(action.help.split()) in entry, (name, entry)
        if _shows_default(action):
            assert "default" in entry, f"{name}: {invocation}'s help does not show its default: {entry}"
    examples = text.split("\nexamples:\n", 1)[1].splitlines()
    assert 2 <= len(examples) <= 3 and all(e.startswith(f"  {name} ") for e in examples), examples


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_version(name):
    proc = _run(name, "--version")
    assert proc.returncode == 0, proc.stderr
    match = re.fullmatch(rf"{name} (\S+) \(fairseq-sage; torch (\S+), fairseq (\S+)\)\n", proc.stdout)
    assert match, proc.stdout
    assert match.groups() == tuple(cli.installed_version(d) for d in ("fairseq-sage", "torch", "fairseq"))
    assert "not installed" not in proc.stdout


def test_usage_errors_name_the_installed_command():
    proc = _run("sage-evaluate", "--data-bin", "x", "--checkpoint", "y", "--beam", "0")
    assert (
        proc.returncode == 2 and proc.stderr.splitlines()[-1] == "sage-evaluate: error: --beam must be positive, got 0"
    )


def test_examples_must_start_with_the_command():
    with pytest.raises(ValueError, match="does not start with its name"):
        cli.command_parser("sage-x", "what it does", "%(prog)s [options]", ["python scripts/x.py --help"])
