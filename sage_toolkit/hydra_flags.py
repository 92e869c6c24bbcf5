#!/usr/bin/env python3
"""Render a Hydra config of configs/ as a plain ``fairseq-train`` command line, so the two cannot drift.

    python scripts/render_flags.py iwslt14_de_en_sage                   # the command, one flag per line
    python scripts/render_flags.py iwslt14_de_en_sage task.data=PATH    # with Hydra overrides
    python scripts/render_flags.py --list                               # the experiment configs

(``sage-render-flags`` once the project is installed; the command line is :func:`main`.)

The config is composed exactly as ``fairseq-hydra-train --config-dir configs --config-name NAME`` composes it
(fairseq's schema, Hydra 1.1 semantics); every value that the YAML files set, and every value of fairseq's typed
sections (common, dataset, optimization, checkpoint, ...) that differs from fairseq's default, becomes a flag. The
model's nested fields become fairseq's flat flags (``model.encoder.embed_dim`` -> ``--encoder-embed-dim``), its
``_name`` becomes ``--arch``. tests/test_configs.py checks that fairseq parses the rendered flags into the same
configuration as the Hydra run.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import warnings
from typing import Any

from .cli import command_parser
from .paths import CONFIG_DIR, PLUGIN_DIR

# sections whose type is Any in fairseq's schema: a registry choice (`_name`) plus that component's options
CHOICE_FLAGS = {
    "task": "--task",
    "model": "--arch",
    "criterion": "--criterion",
    "optimizer": "--optimizer",
    "lr_scheduler": "--lr-scheduler",
    "bpe": "--bpe",
    "tokenizer": "--tokenizer",
    "scoring": "--scoring",
}
# fields that exist in several typed sections (fairseq fills the copies from one flag): render them once
SKIP_TYPED = {("distributed_training", "fp16"), ("distributed_training", "memory_efficient_fp16"),
              ("distributed_training", "tpu"), ("checkpoint", "model_parallel_size"),
              ("bmuf", "distributed_world_size"), ("dataset", "train_subset"), ("dataset", "dataset_impl"),
              ("dataset", "required_seq_len_multiple")}  # fmt: skip


def list_configs() -> list[str]:
    """The experiment configs (top-level YAML files except the shared base)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "base")


def compose(name: str, overrides: list[str] = ()) -> Any:
    """The config as fairseq-hydra-train composes it (unresolved DictConfig, without the ``hydra`` node).

    ``common.user_dir`` is pinned to this checkout's plugin folder (the YAML finds it from the --config-dir that
    fairseq-hydra-train records, which the compose API does not). ``${hydra:...}`` interpolations (the save dir's
    ``${hydra:job.config_name}``) are resolved; the others stay.
    """
    with warnings.catch_warnings():  # fairseq's import-time deprecation notices (fairscale): noise on stderr
        warnings.simplefilter("ignore")
        from fairseq.dataclass.initialize import hydra_init
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    hydra_init(name)  # fairseq's schema under the config's name, as fairseq-hydra-train does
    GlobalHydra.instance().clear()
    with warnings.catch_warnings(), initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.1"):
        warnings.simplefilter("ignore")  # Hydra's notice that schema matching (fairseq's mechanism) is deprecated
        cfg = hydra_compose(name, overrides=[f"common.user_dir={PLUGIN_DIR}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        _resolve_hydra_interpolations(cfg)
    return cfg


def _resolve_hydra_interpolations(node: Any) -> None:
    """Replace ``${hydra:...}`` interpolations by their values now, while this config's Hydra config is set."""
    from omegaconf import DictConfig, OmegaConf

    for key in list(node.keys()):
        if OmegaConf.is_interpolation(node, key):
            if "${hydra:" in OmegaConf.to_container(node)[key]:
                node[key] = node[key]
        elif isinstance(node[key], DictConfig):
            _resolve_hydra_interpolations(node[key])


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _emit(flags: list[str], name: str, value: Any, default: Any = None, has_default: bool = False) -> None:
    if value is None or (has_default and value == default):
        return
    if isinstance(value, bool):
        if has_default or value:  # a typed boolean that differs from its default, or an option switched on
            flags.append(_flag(name))
        return
    flags += [_flag(name), _value(value)]


def _flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(flat name, value) of a composed section, nested keys joined by '_'; interpolated keys are left out."""
    from omegaconf import DictConfig, OmegaConf

    items = []
    for key in node:
        if key == "_name" or OmegaConf.is_interpolation(node, key):
            continue
        value = node[key]
        name = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            items += _flatten(value, f"{name}_")
        else:
            items.append((name, OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value))
    return items


def _set_in_yaml(section: str, key: str) -> bool:
    """Whether any YAML file of configs/ sets ``section.key`` (a crude but sufficient check for typed sections)."""
    import re

    pattern = re.compile(rf"^{section}:\n(?:[ #].*\n|\n)*?  {key}:", re.M)
    return any(pattern.search(p.read_text()) for p in CONFIG_DIR.rglob("*.yaml"))


@functools.cache
def _defaults() -> Any:
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf

    return OmegaConf.structured(FairseqConfig())


def render(cfg: Any) -> list[str]:
    """fairseq-train arguments (data first) for a composed config."""
    from omegaconf import OmegaConf

    defaults = _defaults()
    flags = [str(cfg.task.data)]
    for section in cfg:
        node = cfg[section]
        if section in CHOICE_FLAGS:
            if node is None:
                continue
            flags += [CHOICE_FLAGS[section], str(node._name)]
            for name, value in _flatten(node):
                if (section, name) != ("task", "data"):
                    _emit(flags, name, value)
        elif OmegaConf.is_dict(node) and section in defaults:
            for key in node:
                if key == "_name" or (section, key) in SKIP_TYPED:
                    continue
                if OmegaConf.is_interpolation(defaults[section], key) and not _set_in_yaml(section, key):
                    continue  # follows another field by default (max_tokens_valid <- max_tokens)
                value = OmegaConf.to_container(node, resolve=True)[key]
                _emit(flags, key, value, defaults[section][key], has_default=True)
    return flags


PROG = "sage-render-flags"  # the console script; also the prefix of its messages
EXAMPLES = [
    "sage-render-flags iwslt14_de_en_sage",
    "sage-render-flags demo_adam task.data=data-bin/demo optimization.max_update=100 --one-line",
    "sage-render-flags --list",
]


def build_parser() -> argparse.ArgumentParser:
    description = (
        "Print a Hydra config of configs/ as a plain fairseq-train command line: the same experiment, composed as "
        "fairseq-hydra-train --config-dir configs --config-name CONFIG composes it."
    )
    p = command_parser(PROG, description, "%(prog)s CONFIG [OVERRIDE ...] [--one-line] | %(prog)s --list", EXAMPLES)
    config = p.add_argument_group("the experiment")
    config.add_argument("config", nargs="?", help="config name in configs/ (see --list)")
    config.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. task.data=PATH optimization.max_update=10")
    output = p.add_argument_group("output")
    output.add_argument("--list", action="store_true", help="list the experiment configs")
    output.add_argument("--one-line", action="store_true", help="print the command on one line")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.list or not args.config:
        print("\n".join(list_configs()))
        return 0
    if args.config not in list_configs():
        p.error(f"unknown config {args.config!r}; one of: {', '.join(list_configs())}")
    flags = render(compose(args.config, args.overrides))
    if args.one_line:
        print(shlex.join(["fairseq-train", *flags]))
    else:
        lines, i = ["fairseq-train " + shlex.quote(flags[0])], 1
        while i < len(flags):
            j = i + 1
            while j < len(flags) and not flags[j].startswith("--"):
                j += 1
            lines.append("    " + " ".join(shlex.quote(f) for f in flags[i:j]))
            i = j
        print(" \\\n".join(lines))
    return 0
