"""Mixed precision with SAGE through fairseq's own optimizer wrappers, on CPU, and the overflow skip.

fairseq keeps fp32 master weights (`FP16Optimizer`, `--fp16`/`--bf16`, flat by default) or updates the fp16/bf16
weights in place (`MemoryEfficientFP16Optimizer`, `--memory-efficient-fp16/bf16`). Either way the SAGE arithmetic and
state must be fp32 and the result must track an fp32 run. (fairseq 0.12.2's CLI `--bf16` implies `--tpu`, so bf16 is
reachable from the command line only with torch_xla; the wrappers themselves are exercised here with bf16 tensors.)
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import fairseq_plugins.fairseq_optim  # noqa: F401 - registers adam_sage and adamax_sage with fairseq
from tests.fairseq_utils import train_args
from tests.optim_infos import LOW_PRECISION, cases


def _params(dtype):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 8, generator=gen) * 0.3
    return [weight.to(dtype).requires_grad_(), torch.zeros(16, dtype=dtype, requires_grad=True)]  # a zero bias too


def _grads(step, dtype):
    gen = torch.Generator().manual_seed(100 + step)
    return [(torch.randn(16, 8, generator=gen) * 1e-2).to(dtype), (torch.randn(16, generator=gen) * 1e-2).to(dtype)]


def _fairseq_optimizer(info):
    """The fairseq wrapper class of ``info``'s optimizer and its configuration (lr 1e-2, weight decay 0.01)."""
    from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY, OPTIMIZER_REGISTRY

    config = OmegaConf.structured(OPTIMIZER_DATACLASS_REGISTRY[info.fairseq_name](lr=[1e-2], weight_decay=0.01))
    return OPTIMIZER_REGISTRY[info.fairseq_name], config


def _cfg(info, dtype, memory_efficient):
    from fairseq.dataclass.configs import FairseqConfig

    cfg = OmegaConf.structured(FairseqConfig())
    half = "bf16" if dtype == torch.bfloat16 else "fp16"
    cfg.common[half] = True
    cfg.common[f"memory_efficient_{half}"] = memory_efficient
    cfg.optimizer = _fairseq_optimizer(info)[1]
    cfg.optimizer._name = info.fairseq_name
    return cfg


STEPS = 15


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["fp32-master", "memory-efficient"])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("info", cases())
def test_fairseq_fp16_wrappers(info, dtype, memory_efficient, monkeypatch):
    """The same half-precision gradients through fairseq's wrapper (with its loss scaling) and without it.

    With fp32 master weights the result must equal an fp32 run; updating half-precision weights in place must equal
    our optimizer applied to the same half-precision weights directly (it loses steps below half an ulp, which is
    why fairseq's default --fp16 keeps fp32 masters).
    """
    from fairseq.optim import FP16Optimizer, MemoryEfficientFP16Optimizer

    # fairseq's flat fp32 masters are keyed by torch.cuda.current_device(), and gradients are matched to them by
    # p.device.index, which is None on CPU: answer None so the real flattening code runs here
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)
    optimizer_cls, config = _fairseq_optimizer(info)
    direct = [p.detach().clone().requires_grad_() for p in _params(dtype)]
    if not memory_efficient:
        direct = [p.detach().float().requires_grad_() for p in direct]
    direct_opt = optimizer_cls(config, direct)

    params = _params(dtype)
    wrapper_cls = MemoryEfficientFP16Optimizer if memory_efficient else FP16Optimizer
    wrapper = wrapper_cls.build_optimizer(_cfg(info, dtype, memory_efficient), params)
    for step in range(STEPS):
        grads = _grads(step, dtype)
        wrapper.zero_grad()  # as fairseq's Trainer does first: it also arms the unscaling by 1/loss_scale
        # d(loss)/dp = g exactly; backward() multiplies the loss by the loss scale (a power of two: exact)
        wrapper.backward(sum((p.float() * g.float()).sum() for p, g in zip(params, grads, strict=True)))
        wrapper.clip_grad_norm(0.0)  # raises OverflowError on inf/nan
        wrapper.step()
        for q, g in zip(direct, grads, strict=True):
            q.grad = g.to(q.dtype)
        direct_opt.step()

    states = [s for s in wrapper.optimizer.state.values() if s]
    assert states and all(s[k].dtype == torch.float32 for s in states for k in info.state_keys)
    assert (params[1] != 0).all(), "the zero-initialised bias trains"
    if memory_efficient:
        for p, q in zip(params, direct, strict=True):
            assert torch.equal(p, q)
    else:
        flat = torch.cat([q.detach().reshape(-1) for q in direct])
        masters = wrapper.fp32_params  # one flat tensor (fp16), or a list per tensor (fairseq does not flatten bf16)
        master = masters[None] if isinstance(masters, dict) else torch.cat([m.reshape(-1) for m in masters])
        torch.testing.assert_close(master.detach().reshape(-1), flat, rtol=1e-6, atol=1e-8)
        for p, q in zip(params, direct, strict=True):
            assert torch.equal(p, q.detach().to(dtype)), "half weights are the rounded fp32 masters"


def test_gradient_overflow_skips_the_update_and_training_goes_on(tiny_data_bin, tmp_path, monkeypatch):
    """With --memory-efficient-fp16, an inf gradient makes fairseq skip the update: parameters and SAGE state stay."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    if not torch.cuda.is_available():  # fairseq's overflow branch does torch.tensor(0.0).cuda(); keep it on CPU
        monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    extra = ["--memory-efficient-fp16", "--fp16-init-scale", "128", "--dropout", "0"]
    argv = train_args(tiny_data_bin, tmp_path, ["--optimizer", "adam_sage"], max_update=6, extra=extra)
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), list(map(str, argv)))
    )
    task = tasks.setup_task(cfg.task)
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    batches = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)

    target = trainer.model.decoder.layers[0].fc1.weight
    poisoned = {"now": False}
    target.register_hook(lambda g: torch.full_like(g, float("inf")) if poisoned["now"] else g)

    def snapshot():
        inner = trainer.optimizer.optimizer
        state = {id(p): {k: v.clone() for k, v in inner.state[p].items()} for p in inner.state}
        return [p.detach().clone() for p in trainer.model.parameters()], state

    for i in range(6):
        poisoned["now"] = i == 3
        before_updates, (params, state) = trainer.get_num_updates(), snapshot()
        scale = trainer.optimizer.scaler.loss_scale
        trainer.train_step([next(batches)])
        after_params, after_state = snapshot()
        if poisoned["now"]:
            assert trainer.get_num_updates() == before_updates, "the overflowing update must be skipped"
            assert trainer.optimizer.scaler.loss_scale == scale / 2
            assert all(torch.equal(a, b) for a, b in zip(params, after_params, strict=True))
            assert state.keys() == after_state.keys()
            for key, entry in state.items():
                assert all(torch.equal(v, after_state[key][k]) for k, v in entry.items())
            assert torch.isfinite(target).all()
        else:
            assert trainer.get_num_updates() == before_updates + 1
            if i > 0:  # the first update runs at the warm-up's initial lr of 0
                assert any(not torch.equal(a, b) for a, b in zip(params, after_params, strict=True))
    assert trainer.get_num_updates() == 5
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_gpu_precision_check_script_runs_its_cpu_modes(tmp_path):
    """The GPU check script's plumbing, on the modes fairseq can run on a CPU (a GPU runs all of them)."""
    import json

    from sage_toolkit.gpu import precision as script

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run the script itself")
    with pytest.raises(SystemExit):
        script.main(["--out", str(tmp_path)])  # refuses without a GPU unless asked
    script.main(["--out", str(tmp_path), "--updates", "3", "--train-lines", "200", "--allow-cpu"])
    results = json.loads((tmp_path / "precision.json").read_text())
    assert results["device"] == "cpu" and set(results["modes"]) == {"fp32", "memory_efficient_fp16"}
    assert all(len(m["losses"]) == 3 and m["trained_on"] == "cpu" for m in results["modes"].values())
    assert "max_abs_diff_vs_fp32" in results["modes"]["memory_efficient_fp16"]
    assert (tmp_path / "precision.png").stat().st_size > 0


def test_fairseq_processes_see_the_gpu_only_when_asked(monkeypatch):
    """The tiny runs hide the GPU (the test suite's runs), the GPU checks' runs must not: the first run of
    check_precision.py on an H200 trained every mode on the CPU because they did."""
    import subprocess

    from sage_toolkit import tiny_fairseq

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(kwargs["env"].get("CUDA_VISIBLE_DEVICES"))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(tiny_fairseq.subprocess, "run", fake_run)
    tiny_fairseq.run_cli("train", ["--help"])
    tiny_fairseq.run_cli("train", ["--help"], cuda=True)
    assert seen == ["", "3"]


def test_trained_on_reads_the_device_from_fairseqs_log():
    import subprocess

    from sage_toolkit.tiny_fairseq import trained_on

    banner = (
        "2026-12-04 15:59:01 | INFO | fairseq.utils | ***********************CUDA enviroments for all 1 workers****\n"
        "2026-12-04 15:59:01 | INFO | fairseq.utils | rank   0: capabilities =  9.0  ; total memory = 139.811 GB ; "
        "name = NVIDIA H200                             \n"
    )
    assert trained_on(subprocess.CompletedProcess([], 0, "", banner)) == "NVIDIA H200"
    cpu_log = "| INFO | fairseq_cli.train | training on 1 devices (GPUs/TPUs)"
    assert trained_on(subprocess.CompletedProcess([], 0, cpu_log, "")) == "cpu"
