#!/usr/bin/env python
"""Check that the installed fairseq works here: run by `make setup` (and `make verify`).

1. every compatibility fix of sage_toolkit/install/patch_fairseq.py is in place and `import fairseq` works;
2. a translation checkpoint that pickles an ``argparse.Namespace`` (an old fairseq's ``args``) saves and loads
   through fairseq's patched, safe load (``weights_only=True`` with the allow-list of docs/checkpoints.md);
3. beam search after the load gives the same hypotheses as before it (the load used to switch the encoder to a
   BetterTransformer path that fails on new torch);
4. the plugin registers ``adam_sage`` / ``adamax_sage`` and its ``sage_*`` lr schedulers with fairseq.
Exits non-zero with the failing step named.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import torch


def fail(step: str, detail: object) -> None:
    sys.exit(f"verify_install: FAILED at {step}: {detail}")


def check_patch() -> None:
    """Step 1: the compatibility patch is in place (a child process, from the checkout's root: the package may not be
    installed yet, and python -m finds it there)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    patch = [sys.executable, "-m", "sage_toolkit.install.patch_fairseq", "--check"]
    check = subprocess.run(patch, capture_output=True, cwd=root)
    if check.returncode != 0:
        fail(
            "patch check (run: python -m sage_toolkit.install.patch_fairseq)",
            check.stdout.decode() + check.stderr.decode(),
        )


def tiny_translation_model(folder: str):
    """A 1-layer transformer of a 20-word translation task in ``folder``: its (argparse args, config, task, model)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    words = [f"w{i}" for i in range(20)]
    for lang in ("src", "tgt"):
        with open(os.path.join(folder, f"dict.{lang}.txt"), "w") as f:
            f.writelines(f"{w} 1\n" for w in words)
    arch = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1"]
    dims = ["--encoder-embed-dim", "16", "--decoder-embed-dim", "16"]
    dims += ["--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32"]
    dims += ["--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
    argv = [folder, "--task", "translation", "--source-lang", "src", "--target-lang", "tgt", *arch, *dims]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    return args, cfg, task, task.build_model(cfg.model).eval()


def save_and_load(folder: str, args, model):
    """Step 2: a checkpoint with an ``argparse.Namespace`` saved and loaded by fairseq: its (models, task)."""
    from fairseq import checkpoint_utils

    path = os.path.join(folder, "checkpoint.pt")
    history = [
        {
            "criterion_name": "CrossEntropyCriterion",
            "optimizer_name": "FairseqAdam",
            "lr_scheduler_state": {"best": None},
            "num_updates": 0,
        }
    ]
    state = {"args": args, "model": model.state_dict(), "optimizer_history": history, "extra_state": {}}
    checkpoint_utils.torch_persistent_save(state, path)
    try:
        models, _, loaded_task = checkpoint_utils.load_model_ensemble_and_task([path])
    except Exception as exc:  # noqa: BLE001 - report any load failure with its step
        fail("checkpoint load under torch " + torch.__version__, repr(exc))
    return models, loaded_task


def check_generation(cfg, task, model, loaded_task, models) -> None:
    """Step 3: beam search gives the same hypotheses before and after the load."""
    # two sentences of different lengths: the padded batch is what broke the BetterTransformer path
    pad, eos = task.src_dict.pad(), task.src_dict.eos()
    ids = [[task.src_dict.index(w) for w in sent.split()] + [eos] for sent in ("w3 w5 w7 w9", "w4 w6")]
    src = torch.tensor([[pad] * (4 - len(i) + 1) + i for i in ids])  # left-padded, as fairseq's translation
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([len(i) for i in ids])}}
    gen_cfg = cfg.generation
    gen_cfg.beam, gen_cfg.max_len_b = 2, 5
    try:
        before = task.inference_step(task.build_generator([model], gen_cfg), [model], sample)
        after = loaded_task.inference_step(loaded_task.build_generator(models, gen_cfg), models, sample)
    except Exception as exc:  # noqa: BLE001
        fail("generate after checkpoint load", repr(exc))
    if any(not torch.equal(b[0]["tokens"], a[0]["tokens"]) for b, a in zip(before, after, strict=True)):
        fail("generate after checkpoint load", "hypotheses differ before and after the load")


def check_registration() -> None:
    """Step 4: the plugin's optimizers and lr schedulers are registered with fairseq."""
    from fairseq.optim import OPTIMIZER_REGISTRY
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY

    import fairseq_plugins

    fairseq_plugins.register()

    missing = {"adam_sage", "adamax_sage"} - set(OPTIMIZER_REGISTRY)
    missing |= {"sage_inverse_sqrt", "sage_linear", "sage_cosine"} - set(LR_SCHEDULER_REGISTRY)
    if missing:
        fail("plugin registration", f"not registered: {sorted(missing)}")


def main() -> None:
    check_patch()
    import fairseq  # after the patch check: the import is what the patch makes work

    with tempfile.TemporaryDirectory() as tmp:
        args, cfg, task, model = tiny_translation_model(tmp)
        models, loaded_task = save_and_load(tmp, args, model)
        check_generation(cfg, task, model, loaded_task, models)
    check_registration()
    print(f"verify_install: ok (fairseq {fairseq.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
