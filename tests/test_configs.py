"""The Hydra configs in configs/: they compose, build a trainer and train one update, equal their rendered
fairseq-train flags and (IWSLT'14) the documented fairseq recipe, and Adam/SAGE variants differ only where they should.

Most checks run in-process (Hydra's compose API, fairseq's own parser and Trainer); one test runs the real
``fairseq-hydra-train`` from another working directory.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf, open_dict

import fairseq_plugins
from sage_toolkit import hydra_flags as render_flags
from tests.fairseq_utils import PLUGIN_DIR, ROOT, make_tiny_corpus, run_cli

fairseq_plugins.register()  # the plugin's fairseq components, for the in-process fairseq below


CONFIGS = render_flags.list_configs()
EXPERIMENTS = sorted({name.rsplit("_", 1)[0] for name in CONFIGS})
ADAM_ONLY = ["tatoeba_de_en_base"]  # the fine-tuning study's base model: trained with Adam, the study's starting point
PAIRED = [e for e in EXPERIMENTS if e not in ADAM_ONLY]
TYPED = ["common", "common_eval", "distributed_training", "dataset", "optimization", "checkpoint", "bmuf",
         "generation", "eval_lm", "interactive", "ema"]  # fmt: skip
CHOICES = ["task", "criterion", "optimizer", "lr_scheduler"]
OTHER_OPTIM = ["adamax_sage", "sage_cosine", "sage_linear"]  # configs/optim/ choices no top-level config uses

# the model shrunk (every config), the tiny corpus, CPU: enough to build a trainer and take an update
_SIZES = (("embed_dim", 16), ("ffn_embed_dim", 32), ("attention_heads", 2), ("layers", 1))
SMALL = [f"model.{part}.{key}={value}" for part in ("encoder", "decoder") for key, value in _SIZES]
TINY_RUN = ["task.source_lang=src", "task.target_lang=tgt", "common.cpu=true", "common.fp16=false",
            "dataset.max_tokens=300", "dataset.num_workers=0", "optimization.max_update=1"]  # fmt: skip


def test_the_expected_configs_exist():
    assert EXPERIMENTS == [
        "demo",
        "finetune_de_en",
        "iwslt14_de_en",
        "multi30k_de_en",
        "multi30k_en_de",
        "tatoeba_de_en_base",
        "wmt16_en_de_base",
        "wmt16_en_de_big",
    ]
    assert CONFIGS == [f"{e}_{o}" for e in EXPERIMENTS for o in (("adam",) if e in ADAM_ONLY else ("adam", "sage"))]


@functools.cache
def composed(name: str, overrides: tuple[str, ...] = ()):
    """render_flags.compose, cached (each composition costs about half a second): do not modify the result."""
    return render_flags.compose(name, list(overrides))


def hydra_cfg(name: str, overrides=()):
    """The config that fairseq-hydra-train hands to fairseq_cli.train.main (registry defaults added, resolved)."""
    from fairseq.dataclass.initialize import add_defaults

    cfg = copy.deepcopy(composed(name, tuple(overrides)))
    add_defaults(cfg)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    add_defaults(cfg)  # again, as fairseq_cli.train.main does (it also lifts struct mode)
    return cfg


def flags_cfg(flags: list[str]):
    """The config that fairseq-train builds from these command-line arguments."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [str(f) for f in flags])
    return convert_namespace_to_omegaconf(args)


def effective(cfg) -> dict:
    """What fairseq builds from a config: typed sections, each component's options merged with its dataclass
    defaults (as fairseq's registries do), and the model's TransformerConfig after its architecture defaults."""
    from fairseq.dataclass.utils import merge_with_parent
    from fairseq.models import ARCH_CONFIG_REGISTRY
    from fairseq.models.transformer import TransformerConfig
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    out = {s: OmegaConf.to_container(cfg[s], resolve=True) for s in TYPED}
    for section in CHOICES:
        registry = TASK_DATACLASS_REGISTRY if section == "task" else REGISTRIES[section]["dataclass_registry"]
        merged = merge_with_parent(registry[cfg[section]._name](), cfg[section])
        out[section] = OmegaConf.to_container(merged, resolve=True)
    model = copy.deepcopy(cfg.model)
    if OmegaConf.is_config(model):
        OmegaConf.set_struct(model, False)
    ARCH_CONFIG_REGISTRY[model._name](model)  # fills what the config leaves out, as TransformerModel.build_model
    tc = TransformerConfig.from_namespace(model)
    out["model"] = OmegaConf.to_container(OmegaConf.structured(tc), resolve=False)
    for part in ("encoder", "decoder", "quant_noise"):  # the flat path copies the model's `_name` in: meaningless
        out["model"][part].pop("_name", None)
    out["model"].pop("_name")  # an --arch preset's name vs `transformer` with the same values spelled out
    return out


def assert_same(a: dict, b: dict, ignore=()):
    diffs = [f"{s}.{k}: {a[s].get(k)!r} != {b[s].get(k)!r}" for s in a for k in sorted(set(a[s]) | set(b[s]))
             if (s, k) not in ignore and s not in ignore and a[s].get(k) != b[s].get(k)]  # fmt: skip
    assert not diffs, "\n".join(diffs)


@pytest.mark.parametrize("name", CONFIGS)
def test_rendered_flags_give_the_same_configuration_as_hydra(name):
    cfg = composed(name)
    flags = render_flags.render(cfg)
    assert flags[0] == str(cfg.task.data) and "--user-dir" in flags
    assert_same(effective(hydra_cfg(name)), effective(flags_cfg(flags)))


def test_render_flags_cli_prints_a_command(capsys):
    assert render_flags.main(["demo_sage", "--one-line"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("fairseq-train data-bin/demo ") and "--lr-scheduler sage_inverse_sqrt" in line, line
    assert render_flags.main(["--list"]) == 0 and capsys.readouterr().out.split() == CONFIGS


def test_iwslt14_equals_the_fairseq_recipe_field_by_field():
    """iwslt14_de_en_adam resolves to exactly the fairseq examples/translation command of ../shared/docs/SAGE.md,
    plus this project's documented additions (languages, stopping point, plugin, log format, save dir)."""
    recipe = [
        "data-bin/iwslt14.tokenized.de-en", "--arch", "transformer_iwslt_de_en", "--share-decoder-input-output-embed",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0",
        "--lr", "5e-4", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000",
        "--dropout", "0.3", "--weight-decay", "0.0001",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "4096",
    ]  # fmt: skip
    additions = ["--source-lang", "de", "--target-lang", "en", "--max-update", "50000", "--user-dir", PLUGIN_DIR,
                 "--log-format", "simple", "--save-dir", "checkpoints/iwslt14_de_en_adam"]  # fmt: skip
    ours, theirs = effective(hydra_cfg("iwslt14_de_en_adam")), effective(flags_cfg(recipe + additions))
    assert_same(ours, theirs)
    # the recipe's values, spelled out
    m = ours["model"]
    assert (m["encoder"]["embed_dim"], m["encoder"]["ffn_embed_dim"], m["encoder"]["attention_heads"]) == (512, 1024, 4)
    assert (m["decoder"]["embed_dim"], m["decoder"]["ffn_embed_dim"], m["decoder"]["attention_heads"]) == (512, 1024, 4)
    assert (m["encoder"]["layers"], m["decoder"]["layers"], m["dropout"]) == (6, 6, 0.3)
    assert m["share_decoder_input_output_embed"] and not m["share_all_embeddings"]
    assert ours["optimizer"]["adam_betas"] == "(0.9, 0.98)" and ours["optimizer"]["weight_decay"] == 0.0001
    assert ours["optimization"]["lr"] == [5e-4] and ours["optimization"]["clip_norm"] == 0.0
    assert ours["lr_scheduler"]["_name"] == "inverse_sqrt" and ours["lr_scheduler"]["warmup_updates"] == 4000
    assert ours["criterion"]["label_smoothing"] == 0.1 and ours["dataset"]["max_tokens"] == 4096


@pytest.mark.parametrize(
    "size, arch, dropout",
    [("big", "transformer_vaswani_wmt_en_de_big", "0.3"), ("base", "transformer_wmt_en_de", "0.1")],
)
def test_wmt16_equals_the_ott_et_al_recipe(size, arch, dropout):
    """The scaling_nmt command (for the base model: its arch with the base dropout of Vaswani et al.)."""
    recipe = [
        "data-bin/wmt16_en_de_bpe32k", "--arch", arch, "--share-all-embeddings",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0", "--lr", "0.0005",
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000", "--warmup-init-lr", "1e-07",
        "--dropout", dropout, "--weight-decay", "0.0", "--criterion", "label_smoothed_cross_entropy",
        "--label-smoothing", "0.1", "--max-tokens", "3584", "--fp16",
    ]  # fmt: skip
    additions = ["--source-lang", "en", "--target-lang", "de", "--max-update", "300000", "--user-dir", PLUGIN_DIR,
                 "--log-format", "simple", "--save-dir", f"checkpoints/wmt16_en_de_{size}_adam"]  # fmt: skip
    assert_same(effective(hydra_cfg(f"wmt16_en_de_{size}_adam")), effective(flags_cfg(recipe + additions)))


@pytest.mark.parametrize("experiment", PAIRED)
def test_adam_and_sage_differ_only_in_optimizer_scheduler_and_lr(experiment):
    adam, sage = effective(hydra_cfg(f"{experiment}_adam")), effective(hydra_cfg(f"{experiment}_sage"))
    assert adam["optimizer"]["_name"] == "adam" and sage["optimizer"]["_name"] == "adam_sage"
    assert adam["lr_scheduler"]["_name"] == "inverse_sqrt" and sage["lr_scheduler"]["_name"] == "sage_inverse_sqrt"
    if experiment == "demo":  # tuned on the demo's corpus and budget: each config holds its optimizer's winner
        tuning = json.loads((ROOT / "results" / "demo_tuning" / "study.json").read_text())
        for name, cfg in (("adam", adam), ("sage", sage)):
            grid = tuning["results"][name]["grid"]
            best = max(grid, key=lambda setting: grid[setting]["valid_sacrebleu"])
            assert grid[best]["overrides"] == [f"optimization.lr=[{cfg['optimization']['lr'][0]}]"]
    else:  # the authors' advice, untuned: SAGE at twice Adam's learning rate
        assert sage["optimization"]["lr"][0] == 2 * adam["optimization"]["lr"][0]
    for key in ("warmup_updates", "warmup_init_lr"):
        assert sage["lr_scheduler"][key] == adam["lr_scheduler"][key]
    for key in ("adam_betas", "adam_eps", "weight_decay"):
        assert sage["optimizer"][key] == adam["optimizer"][key]
    ignore = {"optimizer", "lr_scheduler", ("optimization", "lr"), ("checkpoint", "save_dir")}
    assert_same(adam, sage, ignore=ignore)
    assert adam["checkpoint"]["save_dir"] == f"checkpoints/{experiment}_adam"


def test_the_optimizer_is_a_composable_choice():
    assert sorted(p.stem for p in (ROOT / "configs" / "optim").glob("*.yaml")) == sorted(["adam", "sage", *OTHER_OPTIM])
    cfg = hydra_cfg("iwslt14_de_en_sage", ["optim=adamax_sage"])
    assert cfg.optimizer._name == "adamax_sage" and cfg.optimizer.sage_beta3 == 0.85
    assert cfg.lr_scheduler._name == "sage_inverse_sqrt" and cfg.optimizer.weight_decay == 0.0001
    cfg = hydra_cfg("iwslt14_de_en_sage", ["optim=sage_cosine", "lr_scheduler.end_learning_rate=1e-5"])
    assert cfg.optimizer._name == "adam_sage" and cfg.lr_scheduler._name == "sage_cosine"
    assert cfg.lr_scheduler.end_learning_rate == 1e-5 and cfg.lr_scheduler.warmup_updates == 4000


@pytest.mark.parametrize("choice", ["adam", "sage", *OTHER_OPTIM])
def test_every_option_of_the_optimizer_and_scheduler_can_be_overridden(choice):
    """Hydra overrides only keys the composed config has (``optimizer.sage_params=attn_ffn`` fails with "Could not
    override" when the YAML does not list it): each optim/ file lists every option of its optimizer and scheduler
    (those fairseq fills from another section, like ``lr``, aside), at fairseq's default unless it sets it."""
    import dataclasses

    from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_DATACLASS_REGISTRY

    cfg = composed("multi30k_de_en_sage", (f"optim={choice}",))
    for section, registry in (
        ("optimizer", OPTIMIZER_DATACLASS_REGISTRY),
        ("lr_scheduler", LR_SCHEDULER_DATACLASS_REGISTRY),
    ):
        node = cfg[section]
        fields = [f for f in dataclasses.fields(registry[node._name]) if not str(f.default).startswith("${")]
        missing = [f.name for f in fields if f.name not in node]
        assert not missing, f"configs/optim/{choice}.yaml: {section} lacks {missing}"


@pytest.fixture(scope="module")
def joined_data_bin(tmp_path_factory):
    """The tiny corpus with a joined dictionary (the WMT configs share all embeddings)."""
    root = tmp_path_factory.mktemp("tiny_joined")
    raw = make_tiny_corpus(root / "raw")
    dest = root / "data-bin"
    run_cli("preprocess", ["--source-lang", "src", "--target-lang", "tgt", "--trainpref", raw / "train",
                           "--validpref", raw / "valid", "--destdir", dest, "--workers", "1",
                           "--joined-dictionary"])  # fmt: skip
    return dest


@pytest.mark.parametrize(
    "name, choice",
    [(name, None) for name in CONFIGS] + [("iwslt14_de_en_sage", f"optim={o}") for o in OTHER_OPTIM],
)
def test_every_config_builds_a_trainer_and_trains_one_update(name, choice, joined_data_bin, tmp_path):
    import torch
    from fairseq import tasks
    from fairseq.trainer import Trainer

    overrides = [f"task.data={joined_data_bin}", f"checkpoint.save_dir={tmp_path}", *SMALL, *TINY_RUN]
    if choice in ("optim=sage_cosine", "optim=sage_linear"):
        overrides.append("lr_scheduler.total_num_update=8000")  # decays after the 4000-update warmup
    cfg = hydra_cfg(name, overrides + ([choice] if choice else []))
    torch.manual_seed(1)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    itr = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)
    log = trainer.train_step([next(itr)])
    assert trainer.get_num_updates() == 1 and math.isfinite(log["loss"])
    inner = trainer.optimizer.optimizer
    if choice:
        expected = {"optim=adamax_sage": "AdamaxSAGE/SAGEInverseSqrtSchedule",
                    "optim=sage_cosine": "AdamSAGE/SAGECosineSchedule",
                    "optim=sage_linear": "AdamSAGE/SAGELinearSchedule"}[choice]  # fmt: skip
        assert f"{type(inner).__name__}/{type(trainer.lr_scheduler).__name__}" == expected
        assert inner.sage_strength == 0.0
    elif name.endswith("_sage"):
        assert type(inner).__name__ == "AdamSAGE" and type(trainer.lr_scheduler).__name__ == "SAGEInverseSqrtSchedule"
        warmup = cfg.lr_scheduler.warmup_updates
        assert (trainer.lr_scheduler.sage_start, trainer.lr_scheduler.sage_ramp) == (warmup // 4, warmup - warmup // 4)
        assert inner.sage_strength == 0.0  # still before the ramp
    else:
        assert type(inner).__name__ == "Adam"


@pytest.mark.slow
def test_fairseq_hydra_train_from_another_directory_logs_sage(tiny_data_bin, tmp_path):
    """The 'done when' run: the IWSLT'14 SAGE config, shrunk, from a working directory outside the repository;
    common.user_dir resolves from the config folder; the log shows alpha and the multiplier statistics changing."""
    save = tmp_path / "ckpt"
    cmd = [sys.executable, "-c", "from fairseq_cli.hydra_train import cli_main; cli_main()",
           "--config-dir", str(ROOT / "configs"), "--config-name", "iwslt14_de_en_sage",
           f"task.data={tiny_data_bin}", f"checkpoint.save_dir={save}", *SMALL, *TINY_RUN[:-1],
           "optimization.max_update=12", "lr_scheduler.warmup_updates=8", "common.log_interval=2",
           "common.log_format=json", "dataset.disable_validation=true",
           f"common.tensorboard_logdir={tmp_path / 'tb'}"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert str(ROOT / "configs" / ".." / "fairseq_plugins") in proc.stdout + proc.stderr  # common.user_dir
    records = [
        {
            k: float(v) if isinstance(v, str) and v.replace(".", "").replace("-", "").isdigit() else v
            for k, v in json.loads(line.split("][INFO] - ", 1)[1]).items()
        }
        for line in (proc.stdout + proc.stderr).splitlines()
        if "][train_inner][INFO] - {" in line
    ]  # fmt: skip  (Hydra's log format; fairseq's JSON writes numbers as strings)
    assert [r["num_updates"] for r in records] == [2, 4, 6, 8, 10, 12]
    alphas = [r["sage_alpha"] for r in records]
    assert alphas == [0.0, pytest.approx(1 / 3, abs=1e-3), pytest.approx(2 / 3, abs=1e-3), 1.0, 1.0, 1.0]
    for key in ("sage_r_mean", "sage_r_gt1", "sage_r_q10", "sage_r_q50", "sage_r_q90", "sage_mult_mean"):
        values = [r[key] for r in records]
        assert all(isinstance(v, float) for v in values), (key, values)
        assert len(set(values)) > 1, f"{key} does not change: {values}"
    assert all(r["sage_r_q10"] <= r["sage_r_q50"] <= r["sage_r_q90"] for r in records)
    assert (save / ".hydra" / "config.yaml").exists() and (save / "checkpoint_last.pt").exists()
    events = b"".join(p.read_bytes() for p in (tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert b"sage_alpha" in events and b"sage_r_mean" in events  # TensorBoard got them too
    with open_dict(cfg := OmegaConf.load(save / ".hydra" / "config.yaml")):
        assert cfg.lr_scheduler._name == "sage_inverse_sqrt"
