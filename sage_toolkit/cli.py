"""What every ``sage-*`` command's command line shares, the way sacreBLEU's reads: the installed name in the usage
and the messages, a one-line usage, options in named groups with their defaults in the help, two or three examples
at the end, and ``--version``.

Each command module builds its parser with :func:`command_parser` in a ``build_parser()`` function;
``tests/test_commands.py`` checks every console script of ``pyproject.toml`` against these rules.
"""

from __future__ import annotations

import argparse
import textwrap
from importlib import metadata
from pathlib import Path

PROJECT = "fairseq-sage"


def installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def version_line(prog: str) -> str:
    """``sage-evaluate 0.1.0 (fairseq-sage; torch 2.13.0, fairseq 0.12.2)``: what a bug report needs."""
    versions = ", ".join(f"{name} {installed_version(name)}" for name in ("torch", "fairseq"))
    return f"{prog} {installed_version(PROJECT)} ({PROJECT}; {versions})"


def _shown(default) -> str:
    if isinstance(default, list | tuple):
        return " ".join(_shown(item) for item in default)
    return str(default) if isinstance(default, Path) else f"{default}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and the examples' line breaks, and ends every option's help with its default where
    the default is a value (not None, False or empty) and the help does not already say what it is. A switch without
    a value (``--cpu``, ``--no-valid-bleu``) shows none: its default is not to be given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if (
            switch
            or "default" in text
            or not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or (isinstance(default, str | list | tuple) and not default)
        ):
            return text
        return f"{text} (default: {_shown(default).replace('%', '%%')})"


def command_parser(prog: str, description: str, usage: str, examples: list[str]) -> argparse.ArgumentParser:
    """A parser named ``prog`` with the one-line ``usage`` (``%(prog)s`` stands for the name), the ``description``,
    ``examples`` (command lines, each starting with ``prog``) after the options, and ``--version``. Add the options
    in named groups (``parser.add_argument_group``)."""
    for example in examples:
        if not example.startswith(prog + " "):
            raise ValueError(f"{prog}'s example does not start with its name: {example!r}")
    epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples)
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=usage,
        description=textwrap.fill(description, 100),
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_line(prog), help="print the versions and exit")
    return parser


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """A usage error naming the first option of ``names`` (attribute names) given below 1; None (not given) passes."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")


def checkpoint_analysis_parser(
    prog: str, description: str, examples: list[str], *, checkpoints_help: str, out_help: str
) -> argparse.ArgumentParser:
    """The parser of a command that analyses trained checkpoints (``sage-analyze-redundancy``,
    ``sage-analyze-token-loss``): its group "models and output" (``--data-bin``, ``--checkpoints NAME=PATH ...``,
    ``--out``); add the analysis' own groups, with :func:`add_device_options` in one of them."""
    parser = command_parser(
        prog, description, "%(prog)s --data-bin DIR --checkpoints NAME=PATH [...] --out DIR [options]", examples
    )
    models = parser.add_argument_group("models and output")
    models.add_argument("--data-bin", type=Path, required=True, help="fairseq data-bin the checkpoints were trained on")
    models.add_argument("--checkpoints", nargs="+", required=True, metavar="NAME=PATH", help=checkpoints_help)
    models.add_argument("--out", type=Path, required=True, help=out_help)
    return parser


def add_device_options(group: argparse._ArgumentGroup) -> None:
    """``--max-tokens`` and ``--cpu`` of the checkpoint analyses."""
    group.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
