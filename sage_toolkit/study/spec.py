"""The study spec: a YAML file naming the data-bin, a Hydra config per optimizer and, per optimizer, a grid of settings
(each a list of Hydra overrides); studies/multi30k_de_en.yaml is the one RESULTS.md reports.

Keys (defaults in brackets): ``data``, ``seeds`` and ``optimizers`` (``NAME: {config: CONFIG, grid: {SETTING:
[OVERRIDE, ...]}}``) are required; ``out`` (the default of --out), ``jobs`` [1], ``beam`` [5], ``tune_seed`` [the
first seed], ``lenpens`` [[1.0]], ``test_subsets`` [[test]], ``subset_names`` [{}] (how a subset is shown in the
tables), ``overrides`` [[]] (for every run), ``validate_every`` [0], ``valid_bleu`` [true], ``description``,
``average_last`` [0]: evaluate the average of each run's last N interval checkpoints (the fairseq recipes' way; the
model every decision and table uses), the last checkpoint reported beside it (0: the last checkpoint only),
``record`` [none]: a folder (relative to the repository root) that keeps each finished run's small outputs, to be
committed, so that the study resumes on another machine without retraining (see :mod:`.record`),
``redundancy`` [none]: options of the redundancy analysis (``scripts/analyze_redundancy.py``; keys: those of
:data:`REDUNDANCY_OPTIONS`) run on each run's final model as soon as it is trained (a run's checkpoints may be gone
when the seeds are known); the study merges the analyses of the seed runs into ``redundancy/`` (see
:mod:`.analyses`),
``token_loss`` [none]: options of the token-loss analysis (``scripts/analyze_token_loss.py``; keys: those of
:data:`TOKEN_LOSS_OPTIONS`) run the same way on each run's final model and, for its ``multiplier_batches``, its last
checkpoint (the one with the optimizer state); merged into ``token_loss/``,
``base`` [none]: a fine-tuning study's pretrained model, ``{checkpoint: FILE, sha256: HEX}`` (FILE relative to the
repository root; see :mod:`.base_model`): every run starts from it (fairseq's ``checkpoint.finetune_from_model``), the
study refuses to start if the file's sha256 is not the declared one, every run's record keeps the hash and a record of
another base is refused; the base itself is evaluated like a run (study.json's ``base``),
``extra_tests`` [{}]: other data-bins each final model translates (length penalty 1.0), e.g. the base model's own
domain to measure forgetting: ``{NAME: {data: DATA_BIN, subset: SUBSET}}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sage_toolkit.errors import ToolkitError
from sage_toolkit.paths import CONFIG_DIR

# the redundancy analysis' options a spec may set (analyze_redundancy.py's flags, with _ for -)
REDUNDANCY_OPTIONS = {"batches": int, "sparsities": list, "by_layer_type": bool, "bleu": bool, "beam": int,
                      "max_len_a": float, "max_len_b": int, "max_tokens": int, "seed": int}  # fmt: skip
# the token-loss analysis' options a spec may set (analyze_token_loss.py's flags, with _ for -)
TOKEN_LOSS_OPTIONS = {"subsets": list, "edges": list, "max_sentences": int, "max_tokens": int,
                      "multiplier_batches": int, "seed": int}  # fmt: skip
SPEC_KEYS = {"data", "out", "jobs", "beam", "tune_seed", "seeds", "lenpens", "test_subsets", "subset_names",
             "optimizers", "overrides", "validate_every", "valid_bleu", "description", "average_last",
             "record", "redundancy", "token_loss", "base", "extra_tests"}  # fmt: skip
SHA256_HEX = 64


@dataclass
class OptimizerSpec:
    """One optimizer of the study: its Hydra config (a name in configs/) and its grid, setting -> Hydra overrides."""

    config: str
    grid: dict[str, list[str]]


@dataclass
class StudySpec:
    """A checked study spec (see the module's documentation for the keys)."""

    source: Path  # the spec file, as given (study.json records it)
    data: str  # the data-bin, relative to the repository root unless absolute
    seeds: list[int]
    optimizers: dict[str, OptimizerSpec]
    tune_seed: int
    out: str | None = None
    jobs: int = 1
    beam: int = 5
    lenpens: list[float] = field(default_factory=lambda: [1.0])
    test_subsets: list[str] = field(default_factory=lambda: ["test"])
    subset_names: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    validate_every: int = 0
    valid_bleu: bool = True
    description: str = "Adam vs SAGE"
    average_last: int = 0
    record: str | None = None
    redundancy: dict | None = None
    token_loss: dict | None = None
    base: dict | None = None
    extra_tests: dict[str, dict] = field(default_factory=dict)
    # the spec as read, defaults added, in the file's order: what study.json records as "spec"
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


def _check_base(base, source: Path) -> None:
    """``base``: exactly ``checkpoint`` (a file name) and ``sha256`` (64 lowercase hex digits)."""
    if not isinstance(base, dict) or set(base) != {"checkpoint", "sha256"}:
        raise ToolkitError(f"study spec {source}: base must be a mapping with exactly 'checkpoint' and 'sha256', got "
                           f"{base!r}")  # fmt: skip
    if not isinstance(base["checkpoint"], str) or not base["checkpoint"].strip():
        raise ToolkitError(f"study spec {source}: base.checkpoint must be a file name, got {base['checkpoint']!r}")
    digest = base["sha256"]
    if not (isinstance(digest, str) and len(digest) == SHA256_HEX and all(c in "0123456789abcdef" for c in digest)):
        raise ToolkitError(f"study spec {source}: base.sha256 must be 64 lowercase hexadecimal digits, got {digest!r}")


def _check_extra_tests(tests, taken: list[str], source: Path) -> None:
    """``extra_tests``: NAME -> {data, subset}, names that are not subsets of the study's own data-bin."""
    if not isinstance(tests, dict):
        raise ToolkitError(f"study spec {source}: extra_tests must be a mapping NAME: {{data, subset}}, got {tests!r}")
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


def load_spec(path: Path) -> StudySpec:
    """Read and check a spec file (YAML; JSON is YAML). ToolkitError names the file and the key at fault."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"study spec {path}: no such file")
    return parse_spec(OmegaConf.to_container(OmegaConf.load(path), resolve=True), path)


def parse_spec(raw: dict, source: Path) -> StudySpec:
    """Check a spec read from ``source`` (a spec file, or study.json's record of one) and fill in its defaults."""
    source = Path(source)
    spec = dict(raw)
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ToolkitError(f"study spec {source}: unknown key(s) {unknown}; known: {sorted(SPEC_KEYS)}")
    for key in ("data", "optimizers", "seeds"):
        if key not in spec:
            raise ToolkitError(f"study spec {source}: '{key}' is missing")
    spec.setdefault("jobs", 1)
    spec.setdefault("beam", 5)
    spec.setdefault("lenpens", [1.0])
    spec.setdefault("test_subsets", ["test"])
    spec.setdefault("subset_names", {})
    spec.setdefault("overrides", [])
    spec.setdefault("validate_every", 0)
    spec.setdefault("valid_bleu", True)
    for key, minimum in (("jobs", 1), ("beam", 1), ("validate_every", 0)):
        value = spec[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ToolkitError(f"study spec {source}: {key} must be an integer >= {minimum}, got {value!r}")
    for key, kinds in (("seeds", (int,)), ("lenpens", (int, float)), ("test_subsets", (str,))):
        values = spec[key]
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, kinds) and not isinstance(v, bool) for v in values)
            or len(set(values)) != len(values)
        ):
            what = "strings" if kinds == (str,) else "integers" if kinds == (int,) else "numbers"
            raise ToolkitError(f"study spec {source}: {key} must be a non-empty list of distinct {what}: {values!r}")
    spec.setdefault("tune_seed", spec["seeds"][0])
    if spec["tune_seed"] not in spec["seeds"]:
        raise ToolkitError(f"study spec {source}: tune_seed {spec['tune_seed']} is not one of seeds {spec['seeds']}")
    average_last = spec.get("average_last", 0)
    if not isinstance(average_last, int) or isinstance(average_last, bool) or average_last < 0 or average_last == 1:
        raise ToolkitError(
            f"study spec {source}: average_last must be 0 (off) or a number of checkpoints >= 2, got {average_last!r}"
        )
    if "record" in spec and not (isinstance(spec["record"], str) and spec["record"].strip()):
        raise ToolkitError(f"study spec {source}: record must be a folder name, got {spec['record']!r}")
    if spec.get("redundancy") is not None:
        from sage_toolkit.redundancy.command import parse_args

        _check_analysis("redundancy", spec["redundancy"], REDUNDANCY_OPTIONS, parse_args, source)
    if spec.get("token_loss") is not None:
        from sage_toolkit.token_loss.command import parse_args

        _check_analysis("token_loss", spec["token_loss"], TOKEN_LOSS_OPTIONS, parse_args, source)
    if spec.get("base") is not None:
        _check_base(spec["base"], source)
    # (no default written into the spec: study.json's record of a spec without the key stays as it was)
    _check_extra_tests(spec.get("extra_tests", {}), ["valid", *spec["test_subsets"]], source)
    if 1.0 not in spec["lenpens"]:
        raise ToolkitError(
            f"study spec {source}: lenpens {spec['lenpens']} must include 1.0 (the grid's and the baseline)"
        )
    for name, opt in spec["optimizers"].items():
        if not isinstance(opt, dict) or "config" not in opt or not opt.get("grid"):
            raise ToolkitError(f"study spec {source}: optimizers.{name} needs 'config' and a non-empty 'grid'")
        if not (CONFIG_DIR / f"{opt['config']}.yaml").exists():
            raise ToolkitError(f"study spec {source}: optimizers.{name}.config: no {CONFIG_DIR / opt['config']}.yaml")
        for setting, overrides in opt["grid"].items():
            if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
                raise ToolkitError(
                    f"study spec {source}: optimizers.{name}.grid.{setting} must be a list of Hydra overrides KEY=VALUE"
                )
    sizes = {len(opt["grid"]) for opt in spec["optimizers"].values()}
    if len(sizes) != 1:
        raise ToolkitError(
            f"study spec {source}: every optimizer needs a grid of the same size (found {sorted(sizes)})"
        )
    optimizers = {name: OptimizerSpec(opt["config"], dict(opt["grid"])) for name, opt in spec["optimizers"].items()}
    fields = {key: value for key, value in spec.items() if key != "optimizers"}
    return StudySpec(source=source, optimizers=optimizers, as_read=spec, **fields)
