"""The plugin through fairseq's real command-line tools, with ``--user-dir fairseq_plugins``, on a tiny corpus."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from fairseq_plugins.optim.selection import PRESETS
from tests.fairseq_utils import (
    PLUGIN_DIR,
    ROOT,
    UNUSED_BT_COPIES,
    assert_same_training_state,
    run_cli,
    train_args,
    train_log,
)

pytestmark = pytest.mark.slow

SAGE_OPTIMIZERS = {
    "adam_sage": ["--optimizer", "adam_sage", "--adam-betas", "(0.9, 0.98)", "--weight-decay", "0.0001"],
    "adamax_sage": ["--optimizer", "adamax_sage", "--adam-betas", "(0.9, 0.98)", "--sage-beta3", "0.85"],
}


# The keys' bias adds the same q.b_k to every attention score of a query, which the softmax ignores: its gradient is 0
# up to rounding, and whether (and where) that noise moves it depends on the machine's floating-point paths.
KEY_BIAS = re.compile(r"\.k_proj\.bias$")


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


# fairseq-train --help with these options: every SAGE component at least once, and fairseq's own (fixed is the default
# lr scheduler); the first is the README's command
HELP_CASES = [
    ["--user-dir", str(PLUGIN_DIR), "--optimizer", "adam_sage"],
    ["--user-dir", str(PLUGIN_DIR), "--optimizer", "adamax_sage", "--lr-scheduler", "sage_inverse_sqrt"],
    ["--user-dir", str(PLUGIN_DIR), "--optimizer", "adam_sage", "--lr-scheduler", "sage_linear"],
    ["--user-dir", str(PLUGIN_DIR), "--optimizer", "adamax_sage", "--lr-scheduler", "sage_cosine"],
    ["--user-dir", str(PLUGIN_DIR), "--optimizer", "adam", "--lr-scheduler", "inverse_sqrt", "--arch", "transformer"],
]
# `fairseq-train ARGS --help` for each case in one process (the console script fairseq-train calls cli_main): one
# fairseq start-up instead of five
HELP_SCRIPT = """
import contextlib, io, json, sys
from fairseq_cli.train import cli_main
results = []
for case in json.loads(sys.argv[1]):
    sys.argv, out, code = ["fairseq-train", *case, "--help"], io.StringIO(), "no exit"
    with contextlib.redirect_stdout(out):
        try:
            cli_main()
        except SystemExit as exc:
            code = exc.code
    results.append([code, out.getvalue()])
print(json.dumps(results))
"""


def _dataclass_options(dc: type) -> dict[str, str]:
    """{flag: help text} of the options fairseq generates from a component's config dataclass."""
    options = {}
    for f in dataclasses.fields(dc):
        interpolated = isinstance(f.default, str) and f.default.startswith("${")
        if f.name == "_name" or (interpolated and not f.metadata.get("help")):
            continue  # e.g. lr: II("optimization.lr"), filled from another option, no flag of its own
        assert f.metadata.get("help"), f"{dc.__name__}.{f.name} is an option without help text"
        options["--" + f.name.replace("_", "-")] = f.metadata["help"]
    return options


def test_help_lists_the_chosen_optimizer_and_lr_scheduler_options():
    """fairseq 0.12.2 printed --help before adding the chosen components' options (patch_fairseq.py, fix 5)."""
    # COLUMNS: one line per option (argparse would wrap help texts, also at hyphens)
    env = dict(os.environ, COLUMNS="10000", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-c", HELP_SCRIPT, json.dumps(HELP_CASES)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) as proc:
        import fairseq_plugins  # meanwhile, the expected options from the config dataclasses

        fairseq_plugins.register()
        from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY
        from fairseq.optim.lr_scheduler import LR_SCHEDULER_DATACLASS_REGISTRY

        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-5000:]
    results = json.loads(stdout.splitlines()[-1])
    for case, (code, help_text) in zip(HELP_CASES, results, strict=True):
        assert code == 0, (case, code, help_text[-2000:])
        text = " ".join(help_text.split())
        choices = {
            flag: set(re.search(rf"{flag} \{{([^}}]*)\}}", text).group(1).split(","))
            for flag in ("--optimizer", "--lr-scheduler")
        }
        assert {"adam_sage", "adamax_sage"} <= choices["--optimizer"], case
        assert {"sage_inverse_sqrt", "sage_linear", "sage_cosine"} <= choices["--lr-scheduler"], case
        optimizer = case[case.index("--optimizer") + 1]
        scheduler = case[case.index("--lr-scheduler") + 1] if "--lr-scheduler" in case else "fixed"
        expected = _dataclass_options(OPTIMIZER_DATACLASS_REGISTRY[optimizer])
        expected |= _dataclass_options(LR_SCHEDULER_DATACLASS_REGISTRY[scheduler])
        assert "--adam-betas" in expected and "--warmup-updates" in expected
        for flag, flag_help in expected.items():
            # "--sage-beta3 SAGE_BETA3 EMA coefficient ...", "--sage-no-bias-correction do not divide ..."
            pattern = re.escape(flag) + r"(?: [A-Z0-9_\[\]]+)? " + re.escape(" ".join(flag_help.split()))
            assert re.search(pattern, text), (case, flag, flag_help)
        assert set(re.findall(r"--sage-[a-z0-9-]+", text)) == {f for f in expected if f.startswith("--sage-")}, case
    model_help = " ".join(results[-1][1].split())
    assert "--encoder-layers ENCODER_LAYERS encoder: number of layers" in model_help  # and the --arch's options


@pytest.mark.parametrize("name", sorted(SAGE_OPTIMIZERS))
def test_train_then_generate(name, tiny_data_bin, tmp_path):
    save = tmp_path / "ckpt"
    proc = run_cli("train", train_args(tiny_data_bin, save, SAGE_OPTIMIZERS[name], max_update=40))
    losses = [r["loss"] for r in train_log(proc)]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, f"loss did not fall: {first:.3f} -> {last:.3f}"

    gen = run_cli(
        "generate",
        [tiny_data_bin, "--user-dir", PLUGIN_DIR, "--path", save / "checkpoint_last.pt", "--gen-subset", "test",
         "--beam", "2", "--batch-size", "8", "--cpu"],
    )  # fmt: skip
    hypotheses = [line for line in gen.stdout.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == 20
    assert re.search(r"BLEU4? = [0-9.]+", gen.stdout + gen.stderr)


def test_every_tensor_of_a_transformer_moves_within_three_updates(tiny_data_bin, tmp_path):
    """fairseq initialises some tensors to zero; the literal SAGE formula would never move them."""
    from fairseq import optim, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_plugins

    fairseq_plugins.register()  # already imported (above): fairseq's --user-dir would skip it
    argv = train_args(tiny_data_bin, tmp_path, SAGE_OPTIMIZERS["adam_sage"], max_update=3)
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), list(map(str, argv)))
    )
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    torch.manual_seed(1)
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    initial = {n: p.detach().clone() for n, p in named}
    assert any((p == 0).all() for p in initial.values()), "expected zero-initialised tensors in a fairseq transformer"
    optimizer = optim.build_optimizer(cfg.optimizer, [p for _, p in named])
    batches = task.get_batch_iterator(task.dataset("train"), max_tokens=400, seed=1).next_epoch_itr(shuffle=False)
    model.train()
    for _ in range(3):
        loss, _, _ = criterion(model, next(batches))
        optimizer.zero_grad()
        optimizer.backward(loss)
        optimizer.step()
    for name, p in named:
        if p.grad is None:
            assert UNUSED_BT_COPIES.search(name), f"{name} got no gradient"
            continue
        if KEY_BIAS.search(name):
            continue
        changed = (p.detach() != initial[name]).float().mean().item()
        assert changed > 0, f"{name} never moved"
        if "embed" not in name:  # embedding rows of tokens absent from these batches get no gradient
            assert changed > 0.5, f"only {changed:.0%} of {name} moved"


def test_resume_mid_epoch_gives_identical_losses_parameters_and_state(tiny_data_bin, tmp_path):
    opt = SAGE_OPTIMIZERS["adam_sage"] + ["--sage-params", "attn_ffn"]
    straight = run_cli("train", train_args(tiny_data_bin, tmp_path / "straight", opt, max_update=12))
    run_cli("train", train_args(tiny_data_bin, tmp_path / "resumed", opt, max_update=5))
    resumed = run_cli("train", train_args(tiny_data_bin, tmp_path / "resumed", opt, max_update=12))

    a = {int(r["num_updates"]): r for r in train_log(straight)}
    b = {int(r["num_updates"]): r for r in train_log(resumed)}
    assert sorted(b) == list(range(6, 13))
    assert int(a[5]["epoch"]) == 1 and int(a[6]["epoch"]) == 1, "the interruption must fall mid-epoch"
    assert int(a[12]["epoch"]) == 2, "the resumed run should cross into the next epoch"
    for update in b:
        assert (a[update]["loss"], a[update]["gnorm"]) == (b[update]["loss"], b[update]["gnorm"]), update

    ca, cb = _load(tmp_path / "straight/checkpoint_last.pt"), _load(tmp_path / "resumed/checkpoint_last.pt")
    assert [g["sage"] for g in ca["last_optimizer_state"]["param_groups"]] == [True, False]
    assert_same_training_state(ca, cb)


@pytest.mark.parametrize("preset", ["attn_ffn", "no_embed"])
def test_a_preset_selection_through_the_cli(preset, tiny_data_bin, tmp_path):
    opt = SAGE_OPTIMIZERS["adam_sage"] + ["--sage-params", preset]
    run_cli("train", train_args(tiny_data_bin, tmp_path, opt, max_update=2))
    ckpt = _load(tmp_path / "checkpoint_last.pt")
    groups, state = ckpt["last_optimizer_state"]["param_groups"], ckpt["last_optimizer_state"]["state"]
    pattern = re.compile(PRESETS[preset])
    # the model's parameters: the state dict without its buffers and the output projection (tied to the decoder's
    # embedding by --share-decoder-input-output-embed: one parameter, two names)
    skip = (".version", "._float_tensor", "decoder.output_projection.weight")
    names = [name for name in ckpt["model"] if not name.endswith(skip)]
    expected = sum(1 for name in names if pattern.search(name))
    assert groups[0]["sage"] and len(groups[0]["params"]) == expected > 0
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(names)
    assert not groups[1]["sage"]
    # fairseq 0.12's encoder layer also holds copies for its inference fast path (layers.N.in_proj_weight, fc1_weight,
    # ...) that never get a gradient, so never a state; every other SAGE tensor has its smoothed sensitivity
    unused = re.compile(r"\.layers\.\d+\.(in_proj|out_proj|fc1|fc2)_(weight|bias)$")
    trained = sum(1 for name in names if pattern.search(name) and not unused.search(name))
    assert sum(1 for i in groups[0]["params"] if "exp_avg_sens" in state.get(i, {})) == trained > 0
    assert not any("exp_avg_sens" in state.get(i, {}) for i in groups[1]["params"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sage-beta3", "1.5"], "beta3 must be in [0.0, 1.0), got 1.5"),
        (["--adam-betas", "(0.9,)"], "--adam-betas must be a pair"),
        (["--sage-params", "regex:no_such_tensor"], "--sage-params='regex:no_such_tensor' matches no parameter"),
    ],
)
def test_invalid_options_fail_at_start_up(flags, message, tiny_data_bin, tmp_path):
    proc = run_cli("train", train_args(tiny_data_bin, tmp_path, ["--optimizer", "adam_sage", *flags], 5), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not train_log(proc), "no update may run with an invalid option"


def test_switching_from_an_adam_checkpoint(tiny_data_bin, tmp_path):
    adam = run_cli("train", train_args(tiny_data_bin, tmp_path, ["--optimizer", "adam"], max_update=4))
    sage = SAGE_OPTIMIZERS["adam_sage"]
    refused = run_cli("train", train_args(tiny_data_bin, tmp_path, sage, max_update=8), check=False)
    assert refused.returncode != 0
    assert "Optimizer does not match; please reset the optimizer (--reset-optimizer)" in refused.stderr
    assert "fairseq_plugins" not in refused.stderr, "the refusal must come from fairseq, not a trace in our code"

    resumed = run_cli("train", train_args(tiny_data_bin, tmp_path, sage, max_update=8, extra=["--reset-optimizer"]))
    log = train_log(resumed)  # fairseq restarts the update count with the optimizer, and keeps the weights
    assert [int(r["num_updates"]) for r in log] == list(range(1, 9))
    assert log[0]["loss"] < train_log(adam)[0]["loss"] - 0.1, "the Adam-trained weights were not loaded"
    state = _load(tmp_path / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["optimizer_name"] == "FairseqAdamSAGE"
