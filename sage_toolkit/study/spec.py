"""The study spec: a YAML file naming the data-bin, a Hydra config per optimizer and, per optimizer, a grid of settings
(each a list of Hydra overrides); studies/multi30k_de_en.yaml is the one RESULTS.md reports, docs/experiments.md
describes the studies.

The keys, their types and their defaults are the fields of :class:`SpecFile`, read as an OmegaConf structured config
(an unknown key, a missing required one or a value of the wrong type is refused, naming the file and the key); a
field's ``must`` states a rule on its value alone, and the few rules that span keys are in :func:`parse_spec`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sage_toolkit.errors import ToolkitError
from sage_toolkit.paths import CONFIG_DIR

# the redundancy analysis' options a spec may set (analyze_redundancy.py's flags, with _ for -)
REDUNDANCY_OPTIONS = {"batches": int, "sparsities": list, "by_layer_type": bool, "bleu": bool, "beam": int,
                      "max_len_a": float, "max_len_b": int, "max_tokens": int, "seed": int}  # fmt: skip
# the token-loss analysis' options a spec may set (analyze_token_loss.py's flags, with _ for -)
TOKEN_LOSS_OPTIONS = {"subsets": list, "edges": list, "max_sentences": int, "max_tokens": int,
                      "multiplier_batches": int, "seed": int}  # fmt: skip
SHA256_HEX = 64


def _distinct(values) -> bool:
    return bool(values) and len(set(values)) == len(values)


def key(default=MISSING, *, must: tuple | None = None, check=None, recorded: bool = False, factory=None):
    """A key of the spec file: its default (none: required), ``must`` = (test of its value, what the error says it must
    be; ``{value!r}`` is the value), ``check(name, value, source)``: a check of its value that raises ToolkitError
    (run before the type check), ``recorded``: study.json's record of the spec gets the default when the file has no
    value (the keys it always recorded)."""
    metadata = {"must": must, "check": check, "recorded": recorded}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class OptimizerSpec:
    """One optimizer of the study: its Hydra config (a name in configs/) and its grid, setting -> Hydra overrides."""

    config: str = MISSING
    grid: dict[str, list[str]] = MISSING


def _integer_at_least(minimum: int) -> tuple:
    return (lambda value: value >= minimum, f"must be an integer >= {minimum}, got {{value!r}}")


def _check_optimizers(name: str, optimizers, source: Path) -> None:
    """``optimizers``: NAME -> {config (a config of configs/), grid: {SETTING: [KEY=VALUE ...]}}, grids of one size."""
    if not isinstance(optimizers, dict) or not optimizers:
        raise ToolkitError(f"study spec {source}: {name} must be a mapping NAME: {{config, grid}}, got {optimizers!r}")
    for optimizer, opt in optimizers.items():
        if not isinstance(opt, dict) or "config" not in opt or not opt.get("grid"):
            raise ToolkitError(f"study spec {source}: {name}.{optimizer} needs 'config' and a non-empty 'grid'")
        if not (CONFIG_DIR / f"{opt['config']}.yaml").exists():
            raise ToolkitError(f"study spec {source}: {name}.{optimizer}.config: no {CONFIG_DIR / opt['config']}.yaml")
        for setting, overrides in opt["grid"].items():
            if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
                raise ToolkitError(
                    f"study spec {source}: {name}.{optimizer}.grid.{setting} must be a list of Hydra overrides "
                    "KEY=VALUE"
                )
    sizes = {len(opt["grid"]) for opt in optimizers.values()}
    if len(sizes) != 1:
        raise ToolkitError(
            f"study spec {source}: every optimizer needs a grid of the same size (found {sorted(sizes)})"
        )


def _check_redundancy(name: str, options, source: Path) -> None:
    from sage_toolkit.redundancy.command import parse_args

    _check_analysis(name, options, REDUNDANCY_OPTIONS, parse_args, source)


def _check_token_loss(name: str, options, source: Path) -> None:
    from sage_toolkit.token_loss.command import parse_args

    _check_analysis(name, options, TOKEN_LOSS_OPTIONS, parse_args, source)


def analysis_flags(options: dict) -> list[str]:
    """The command-line flags of an analysis (scripts/analyze_redundancy.py, analyze_token_loss.py) for a spec's
    options of it."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def _check_analysis(key: str, options, known: dict, parse_args, source: Path) -> None:
    """A spec's options of an analysis: a mapping of known options of the right types, which the analysis' own parser
    accepts (now rather than after the first run trained: a sparsity outside [0, 1), a batch count < 1 ...);
    ToolkitError naming the spec, the key and the option."""
    import contextlib
    import io

    if not isinstance(options, dict):
        raise ToolkitError(f"study spec {source}: {key} must be a mapping of analysis options, got {options!r}")
    for option, value in options.items():
        kind = known.get(option)
        if kind is None:
            raise ToolkitError(f"study spec {source}: {key}.{option}: unknown option; known: {sorted(known)}")
        accepted = (int, float) if kind is float else kind  # an int is a float here; a bool is never a number
        if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
            raise ToolkitError(f"study spec {source}: {key}.{option} must be a {kind.__name__}, got {value!r}")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            placeholders = ["--data-bin", "unused", "--checkpoints", "unused=unused", "--out", "unused"]
            parse_args([*placeholders, *analysis_flags(options)])
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
        raise ToolkitError(f"study spec {source}: {key}: {message}") from None


def _check_base(name: str, base, source: Path) -> None:
    """``base``: exactly ``checkpoint`` (a file name) and ``sha256`` (64 lowercase hex digits)."""
    if not isinstance(base, dict) or set(base) != {"checkpoint", "sha256"}:
        raise ToolkitError(f"study spec {source}: base must be a mapping with exactly 'checkpoint' and 'sha256', got "
                           f"{base!r}")  # fmt: skip
    if not isinstance(base["checkpoint"], str) or not base["checkpoint"].strip():
        raise ToolkitError(f"study spec {source}: base.checkpoint must be a file name, got {base['checkpoint']!r}")
    digest = base["sha256"]
    if not (isinstance(digest, str) and len(digest) == SHA256_HEX and all(c in "0123456789abcdef" for c in digest)):
        raise ToolkitError(f"study spec {source}: base.sha256 must be 64 lowercase hexadecimal digits, got {digest!r}")


def _check_extra_tests_mapping(name: str, tests, source: Path) -> None:
    if not isinstance(tests, dict):
        raise ToolkitError(f"study spec {source}: {name} must be a mapping NAME: {{data, subset}}, got {tests!r}")


def _check_extra_tests(tests: dict, taken: list[str], source: Path) -> None:
    """``extra_tests``: NAME -> {data, subset}, names that are not subsets of the study's own data-bin."""
    for name, test in tests.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum() or name in taken:
            raise ToolkitError(
                f"study spec {source}: extra_tests: {name!r} must be a name of letters, digits, - and _ that is not "
                f"a subset of the study's data ({', '.join(taken)})"
            )
        if not isinstance(test, dict) or set(test) != {"data", "subset"}:
            raise ToolkitError(f"study spec {source}: extra_tests.{name} must be {{data: DATA_BIN, subset: SUBSET}}")
        for key in ("data", "subset"):
            if not isinstance(test[key], str) or not test[key].strip():
                raise ToolkitError(f"study spec {source}: extra_tests.{name}.{key} must be a string, got {test[key]!r}")


@dataclass
class SpecFile:
    """The keys of a spec file, their types and defaults (none: required); the studies they make:
    docs/experiments.md, the command: docs/toolkit.md."""

    data: str = key()  # the data-bin, relative to the repository root unless absolute
    # every optimizer's winning setting is trained with each seed
    seeds: list[int] = key(must=(_distinct, "must be a non-empty list of distinct integers: {value!r}"))
    # NAME: {config: a config in configs/, grid: {SETTING: [Hydra override, ...]}}, grids of one size
    optimizers: dict[str, OptimizerSpec] = key(check=_check_optimizers)
    out: str | None = key(None)  # the default of --out
    jobs: int = key(1, must=_integer_at_least(1), recorded=True)  # trainings/evaluations at a time (--jobs)
    beam: int = key(5, must=_integer_at_least(1), recorded=True)  # of every evaluation
    # the length penalties swept on validation (1.0 among them: the grid's)
    lenpens: list[float] = key(
        must=(_distinct, "must be a non-empty list of distinct numbers: {value!r}"),
        recorded=True,
        factory=lambda: [1.0],
    )
    # the test sets, translated only after every decision
    test_subsets: list[str] = key(
        must=(_distinct, "must be a non-empty list of distinct strings: {value!r}"), recorded=True,
        factory=lambda: ["test"],
    )  # fmt: skip
    subset_names: dict[str, str] = key(recorded=True, factory=dict)  # how a test subset is shown in the tables
    overrides: list[str] = key(recorded=True, factory=list)  # Hydra overrides of every run
    validate_every: int = key(0, must=_integer_at_least(0), recorded=True)  # also validate every N updates
    valid_bleu: bool = key(True, recorded=True)  # validate with greedy BLEU as well as the loss
    tune_seed: int | None = key(None, recorded=True)  # the grid's seed (default: the first of seeds)
    description: str = key("Adam vs SAGE")  # study.md's title
    # evaluate the average of each run's last N checkpoints (the model of every decision), the last one beside it
    average_last: int = key(
        0, must=(lambda v: v == 0 or v >= 2, "must be 0 (off) or a number of checkpoints >= 2, got {value!r}")
    )
    # a folder (relative to the repository root) keeping each finished run's small outputs (:mod:`.record`)
    record: str | None = key(None, must=(lambda v: bool(v and v.strip()), "must be a folder name, got {value!r}"))
    redundancy: dict[str, Any] | None = key(None, check=_check_redundancy)  # analyze_redundancy.py's options
    token_loss: dict[str, Any] | None = key(None, check=_check_token_loss)  # analyze_token_loss.py's options
    base: dict[str, Any] | None = key(None, check=_check_base)  # a fine-tuning study's {checkpoint, sha256}
    # NAME: {data, subset}: other data-bins every model translates
    extra_tests: dict[str, Any] = key(factory=dict, check=_check_extra_tests_mapping)


@dataclass
class StudySpec(SpecFile):
    """A checked study spec: the file's keys, the file, and the spec as study.json records it."""

    source: Path = Path()  # the spec file, as given (study.json records it)
    # the spec as read, the recorded keys' defaults added, in the file's order: what study.json records as "spec"
    as_read: dict = field(default_factory=dict, repr=False, compare=False)

    def redundancy_flags(self) -> list[str]:
        """The redundancy analysis' command-line flags for the spec's ``redundancy`` options."""
        return analysis_flags(self.redundancy or {})

    def token_loss_flags(self) -> list[str]:
        """The token-loss analysis' command-line flags for the spec's ``token_loss`` options."""
        return analysis_flags(self.token_loss or {})

    @property
    def checkpoint_kinds(self) -> list[str]:
        """The checkpoints each run is evaluated with, the model of the decisions and tables first: ``avgN`` (the
        average of the last N) and ``last``, or ``last`` alone."""
        return [f"avg{self.average_last}", "last"] if self.average_last else ["last"]

    def shown(self, subset: str) -> str:
        """A test subset's name in the tables."""
        return self.subset_names.get(subset, subset)


def load_spec(path: Path) -> StudySpec:
    """Read and check a spec file (YAML; JSON is YAML). ToolkitError names the file and the key at fault."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"study spec {path}: no such file")
    return parse_spec(OmegaConf.to_container(OmegaConf.load(path), resolve=True), path)


def parse_spec(raw: dict, source: Path) -> StudySpec:
    """Check a spec read from ``source`` (a spec file, or study.json's record of one) and fill in its defaults."""
    source, keys = Path(source), {f.name: f for f in dataclasses.fields(SpecFile)}
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise ToolkitError(f"study spec {source}: unknown key(s) {unknown}; known: {sorted(keys)}")
    for name, f in keys.items():
        if f.default is MISSING and name not in raw:
            raise ToolkitError(f"study spec {source}: '{name}' is missing")
    config = OmegaConf.structured(SpecFile)
    for name, value in raw.items():
        config = _merge_key(config, keys[name], value, source)
    spec = StudySpec(**vars(OmegaConf.to_object(config)), source=source, as_read=_as_read(raw))
    if spec.tune_seed is None:
        spec.tune_seed = spec.seeds[0]
    _check_across_keys(spec, raw)
    return spec


def _merge_key(config, key_field: dataclasses.Field, value, source: Path):
    """``config`` with the file's ``value`` of a key merged in, checked: its own check, then its type (OmegaConf's, and
    :func:`_fits`: "5" is no integer here), then its rule; ToolkitError naming the file and the key."""
    name, must, check = key_field.name, key_field.metadata["must"], key_field.metadata["check"]
    if check is not None:
        check(name, value, source)
    wrong = None
    try:
        config = OmegaConf.merge(config, {name: value})
        if not _fits(value, typing.get_type_hints(SpecFile)[name]):
            wrong = f"must be a {_type_name(key_field)}, got {value!r}"
    except OmegaConfBaseException as error:
        wrong = f"must be a {_type_name(key_field)}, got {value!r}"
        if getattr(error, "full_key", None) not in (None, "", name):  # where inside the value
            wrong += f" ({error.full_key}: {str(error).splitlines()[0]})"
    if must is not None and (wrong is not None or not must[0](value)):
        raise ToolkitError(f"study spec {source}: {name} " + must[1].format(value=value))
    if wrong is not None:
        raise ToolkitError(f"study spec {source}: {name} {wrong}")
    return config


def _fits(value, hint) -> bool:
    """Whether ``value``, as the file gives it, is of the type ``hint`` (an integer is a number): OmegaConf converts
    some values ("5" to 5, 1 to true) and lets some through (a list as a dict's string value)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return isinstance(value, dict) and all(_fits(v, hints[k]) for k, v in value.items() if k in hints)
    if hint is float:
        return type(value) in (int, float)
    return type(value) is hint


def _type_name(key_field: dataclasses.Field) -> str:
    return str(key_field.type).replace(" | None", "")


def _as_read(raw: dict) -> dict:
    """study.json's record of the spec: the file's keys in its order, then the default of each recorded key it lacks
    (tune_seed's: the first seed)."""
    spec = dict(raw)
    for f in dataclasses.fields(SpecFile):
        if f.metadata["recorded"] and f.name not in spec:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            spec[f.name] = raw["seeds"][0] if f.name == "tune_seed" else default
    return spec


def _check_across_keys(spec: StudySpec, raw: dict) -> None:
    """The rules that span keys: tune_seed among the seeds, the length penalty 1.0 in the sweep, and extra tests named
    apart from the study's own subsets."""
    source = spec.source
    if spec.tune_seed not in spec.seeds:
        raise ToolkitError(f"study spec {source}: tune_seed {spec.tune_seed} is not one of seeds {spec.seeds}")
    _check_extra_tests(raw.get("extra_tests", {}), ["valid", *spec.test_subsets], source)
    if 1.0 not in spec.lenpens:
        raise ToolkitError(
            f"study spec {source}: lenpens {raw['lenpens']} must include 1.0 (the grid's and the baseline)"
        )
