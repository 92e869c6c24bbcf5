"""The SAGE LR schedulers (sage_inverse_sqrt, sage_linear, sage_cosine): values, statelessness, start-up errors."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

import fairseq_plugins
from fairseq_plugins.fairseq_optim import (
    FairseqAdamaxSAGE,
    FairseqAdamaxSAGEConfig,
    FairseqAdamSAGE,
    FairseqAdamSAGEConfig,
)
from fairseq_plugins.lr_scheduler import (
    SAGECosineSchedule,
    SAGEDecayScheduleConfig,
    SAGEInverseSqrtSchedule,
    SAGELinearSchedule,
    SAGEScheduleConfig,
    sage_strength,
)

fairseq_plugins.register()  # the plugin's fairseq components, for the in-process fairseq below


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]


def _optimizer(cls=FairseqAdamSAGE, lr=1e-3, **kw):
    dc = FairseqAdamaxSAGEConfig if cls is FairseqAdamaxSAGE else FairseqAdamSAGEConfig
    cfg = OmegaConf.structured(dc(lr=[lr], **kw))
    return cls(cfg, _params())


def _schedule(cls=SAGEInverseSqrtSchedule, optimizer=None, lr=1e-3, **kw):
    dc = SAGEScheduleConfig if cls is SAGEInverseSqrtSchedule else SAGEDecayScheduleConfig
    kw = {"lr": lr if isinstance(lr, list) else [lr], "max_update": 0, "log_interval": 100, **kw}
    return cls(OmegaConf.structured(dc(**kw)), optimizer or _optimizer(lr=kw["lr"][0]))


def test_inverse_sqrt_values_at_key_updates():
    s = _schedule(lr=5e-4, warmup_updates=4000, warmup_init_lr=1e-7)
    assert s.optimizer.get_lr() == pytest.approx(1e-7)  # update 1 uses warmup_init_lr (fairseq's convention)
    assert s.step_update(2000) == pytest.approx(1e-7 + 0.5 * (5e-4 - 1e-7))
    assert s.step_update(4000) == pytest.approx(5e-4)  # peak at the end of warmup
    assert s.step_update(16000) == pytest.approx(2.5e-4)  # lr * sqrt(4000 / 16000)
    assert s.optimizer.get_lr() == pytest.approx(2.5e-4)
    assert _schedule(lr=5e-4, warmup_updates=4000).lr_at(0) == 0.0  # default warmup_init_lr: 0


def test_inverse_sqrt_equals_fairseqs_own_inverse_sqrt():
    from fairseq.optim.lr_scheduler.inverse_square_root_schedule import (
        InverseSquareRootLRScheduleConfig,
        InverseSquareRootSchedule,
    )

    ours = _schedule(lr=7e-4, warmup_updates=50, warmup_init_lr=1e-6)
    cfg = OmegaConf.structured(InverseSquareRootLRScheduleConfig(warmup_updates=50, warmup_init_lr=1e-6, lr=[7e-4]))
    theirs = InverseSquareRootSchedule(cfg, _optimizer(lr=7e-4))
    for n in [0, 1, 2, 25, 49, 50, 51, 100, 1000, 123456]:
        assert ours.step_update(n) == pytest.approx(theirs.step_update(n), rel=1e-12), n


@pytest.mark.parametrize("cls", [SAGELinearSchedule, SAGECosineSchedule])
def test_decaying_schedules_values_at_key_updates(cls):
    s = _schedule(cls, lr=1e-3, warmup_updates=100, end_learning_rate=1e-5, total_num_update=1100)
    assert s.lr_at(0) == 0.0
    assert s.lr_at(50) == pytest.approx(5e-4)
    assert s.lr_at(100) == pytest.approx(1e-3)  # peak
    assert s.lr_at(600) == pytest.approx((1e-3 + 1e-5) / 2)  # half way: both shapes at the midpoint
    assert s.lr_at(1100) == pytest.approx(1e-5)
    assert s.lr_at(5000) == pytest.approx(1e-5)  # constant after total_num_update
    quarter = s.lr_at(350)
    expected = 1e-5 + (1e-3 - 1e-5) * (0.75 if cls is SAGELinearSchedule else 0.5 * (1 + math.cos(math.pi / 4)))
    assert quarter == pytest.approx(expected)
    values = [s.lr_at(n) for n in range(100, 1101, 50)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), "monotone decay"


def test_decaying_schedule_defaults_to_max_update_and_no_warmup():
    s = _schedule(SAGELinearSchedule, lr=2e-3, warmup_updates=0, max_update=200)
    assert s.lr_at(0) == pytest.approx(2e-3)
    assert s.lr_at(100) == pytest.approx(1e-3)
    assert s.lr_at(200) == 0.0


def test_alpha_ramp():
    assert [sage_strength(n, 10, 4) for n in (0, 9, 10, 11, 12, 13, 14, 15, 10**6)] == [
        0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0
    ]  # fmt: skip
    assert [sage_strength(n, 10, 0) for n in (9, 10, 11)] == [0.0, 1.0, 1.0]  # ramp 0: a jump at the start
    assert [sage_strength(n, 0, 0) for n in (0, 1)] == [1.0, 1.0]  # full SAGE from the first update

    s = _schedule(warmup_updates=4000)  # defaults: start at a quarter of the warmup, full strength at its end
    assert (s.sage_start, s.sage_ramp) == (1000, 3000)
    inner = s.optimizer.optimizer
    assert inner.sage_strength == 0.0  # the first update is plain Adam
    s.step_update(2500)
    assert inner.sage_strength == pytest.approx(0.5) and all(g["sage_strength"] == 0.5 for g in inner.param_groups)
    s.step_update(4000)
    assert inner.sage_strength == 1.0
    s = _schedule(SAGELinearSchedule, warmup_updates=0, max_update=100)  # no warmup: full SAGE from the start
    assert (s.sage_start, s.sage_ramp) == (0, 0) and s.optimizer.optimizer.sage_strength == 1.0


def test_stateless_a_fresh_scheduler_gives_the_same_values():
    kw = dict(warmup_updates=30, sage_start_updates=5, sage_ramp_updates=40)
    a = _schedule(**kw)
    for n in range(0, 200):
        lr = a.step_update(n)
        alpha = a.optimizer.optimizer.sage_strength
        if n % 37 == 0:  # as after a resume: a new scheduler, the saved state dict, then step_update(num_updates)
            b = _schedule(**kw)
            b.load_state_dict(a.state_dict())
            assert b.step_update(n) == lr and b.optimizer.optimizer.sage_strength == alpha
    assert set(a.state_dict()) == {"best"}


def test_adamax_sage_and_the_fp16_wrapper_are_accepted():
    s = _schedule(optimizer=_optimizer(FairseqAdamaxSAGE), sage_start_updates=0, sage_ramp_updates=10)
    s.step_update(5)
    assert s.optimizer.optimizer.sage_strength == 0.5

    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.optim.fp16_optimizer import MemoryEfficientFP16Optimizer

    cfg = OmegaConf.structured(FairseqConfig())
    params = _params()
    wrapped = MemoryEfficientFP16Optimizer(cfg, params, FairseqAdamSAGE(OmegaConf.structured(
        FairseqAdamSAGEConfig(lr=[1e-3])), params))  # fmt: skip
    s = _schedule(optimizer=wrapped, sage_start_updates=0, sage_ramp_updates=4)
    s.step_update(1)
    assert wrapped.optimizer.sage_strength == 0.25


def test_the_zero_sharded_optimizer_is_accepted(tmp_path):
    """--zero-sharding os wraps the SAGE optimizer in fairscale's OSS: alpha and the statistics reach it."""
    pytest.importorskip("fairscale", reason="fairscale is installed by `make setup`")
    import torch.distributed as dist
    from fairseq.optim.shard import shard_

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapper = _optimizer()
        shard_(wrapper, dist.group.WORLD)
        s = _schedule(optimizer=wrapper, sage_start_updates=0, sage_ramp_updates=4, log_interval=2)
        oss = wrapper.optimizer
        assert type(oss).__name__ == "FairseqOSS"
        for n in range(1, 3):
            for p in oss.optim.param_groups[0]["params"]:
                p.grad = torch.randn_like(p)
            wrapper.step()
            has_stats = oss.optim._sage_stats_result is not None
            s.step_update(n)
            assert has_stats == (n == 2)
        assert oss.optim.sage_strength == 0.5 and all(g["sage_strength"] == 0.5 for g in oss.param_groups)
    finally:
        dist.destroy_process_group()


def test_a_plain_optimizer_is_refused_at_start_up():
    from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

    adam = FairseqAdam(OmegaConf.structured(FairseqAdamConfig(lr=[1e-3], tpu=False)), _params())
    for cls in (SAGEInverseSqrtSchedule, SAGELinearSchedule):
        with pytest.raises(ValueError, match=r"needs a SAGE optimizer: use --optimizer adam_sage or --optimizer "):
            _schedule(cls, optimizer=adam, max_update=100)


@pytest.mark.parametrize(
    "cls, kw, message",
    [
        (SAGEInverseSqrtSchedule, {"warmup_updates": 0}, "--warmup-updates must be >= 1"),
        (SAGEInverseSqrtSchedule, {"sage_start_updates": -2}, "--sage-start-updates must be >= 0 or -1"),
        (SAGEInverseSqrtSchedule, {"sage_ramp_updates": -5}, "--sage-ramp-updates must be >= 0 or -1"),
        (SAGEInverseSqrtSchedule, {"sage_stats_interval": 0}, "--sage-stats-interval must be >= 1"),
        (SAGEInverseSqrtSchedule, {"sage_stats_samples": -1}, "--sage-stats-samples must be >= 0"),
        (
            SAGEInverseSqrtSchedule,
            {"sage_stats_samples": 0, "sage_stats_by_kind": True},
            "--sage-stats-by-kind needs the statistics: --sage-stats-samples is 0",
        ),
        (SAGEInverseSqrtSchedule, {"lr": [1e-3, 1e-4]}, "takes one --lr"),
        (SAGELinearSchedule, {"warmup_updates": 10, "max_update": 0}, "--total-num-update .* must be > "),
        (
            SAGECosineSchedule,
            {"max_update": 10, "warmup_updates": 0, "end_learning_rate": -1.0},
            "--end-learning-rate must be >= 0",
        ),
    ],
)
def test_invalid_options_name_the_option(cls, kw, message):
    with pytest.raises(ValueError, match=message):
        _schedule(cls, **kw)


def test_stats_are_requested_on_the_logging_updates_only():
    s = _schedule(sage_stats_interval=5, sage_stats_samples=64, sage_start_updates=0, sage_ramp_updates=0)
    inner = s.optimizer.optimizer
    params = [p for g in inner.param_groups for p in g["params"]]
    got = {}
    for n in range(1, 11):
        for p in params:
            p.grad = torch.randn_like(p)
        inner.step()
        got[n] = inner._sage_stats_result is not None
        s.step_update(n)  # logs and clears the statistics of update n, requests those of update n + 1 if due
    assert [n for n, has in got.items() if has] == [5, 10]


@pytest.mark.slow
def test_resume_gives_the_same_lr_alpha_statistics_and_losses(tiny_data_bin, tmp_path):
    """8 updates in one run (saving at update 5, mid-epoch) == a second run resumed from that checkpoint to 8:
    lr, alpha, multiplier statistics and losses."""
    from tests.fairseq_utils import run_cli, train_args, train_log

    extra = ["--sage-start-updates", "2", "--sage-ramp-updates", "4", "--sage-stats-interval", "1"]

    def run(save, more):
        args = train_args(tiny_data_bin, save, ["--optimizer", "adam_sage"], 8, extra + more)
        args[args.index("inverse_sqrt")] = "sage_inverse_sqrt"
        return train_log(run_cli("train", args))

    straight = run(tmp_path / "a", ["--save-interval-updates", "5"])
    resumed = run(tmp_path / "b", ["--restore-file", tmp_path / "a" / "checkpoint_1_5.pt"])
    assert [r["num_updates"] for r in resumed] == [6, 7, 8]
    keys = ["loss", "lr", "sage_alpha", "sage_r_mean", "sage_r_gt1", "sage_r_q10", "sage_r_q50", "sage_r_q90"]
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight[5:]]
    assert [r["sage_alpha"] for r in straight] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
