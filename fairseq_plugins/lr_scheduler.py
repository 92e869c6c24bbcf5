"""fairseq LR schedulers for the SAGE optimizers: the global learning rate and the SAGE strength alpha(t).

Three registered names, one per shape of the global learning rate; all of them also drive alpha and log the
SAGE diagnostics:

* ``sage_inverse_sqrt``: fairseq's ``inverse_sqrt`` exactly (linear warmup from ``--warmup-init-lr`` to ``--lr`` over
  ``--warmup-updates``, then ``lr * sqrt(warmup_updates / num_updates)``);
* ``sage_linear``: the same warmup, then linear decay to ``--end-learning-rate`` at ``--total-num-update``
  (default ``--max-update``), constant afterwards;
* ``sage_cosine``: the same warmup, then half a cosine down to ``--end-learning-rate`` at ``--total-num-update``.

The SAGE strength: the applied multiplier is ``1 + alpha * (r - 1)``; alpha is 0 (the plain Adam/Adamax update) up to
``--sage-start-updates``, rises linearly to 1 over ``--sage-ramp-updates``, and stays 1. By default (-1) SAGE starts
at a quarter of the warmup and reaches full strength at its end (1000 and 3000 updates for the 4000-update warmup of
the IWSLT'14 and WMT'16 recipes). The reason for a late, gradual start: a model trained from scratch has random
weights, so the early sensitivities ``|theta * g|`` rank entries by their random initial values rather than by what
they have learnt, and with bias correction the first multipliers are 0 (``r_1 = eps^2 / (I_1 + eps^2)``): full SAGE
from update 1 would hold back the start of training. These defaults are this project's choice (the authors' NMT
schedule is not public). Without warmup (``sage_linear``/``sage_cosine`` with ``--warmup-updates 0``) the defaults
give full SAGE from the first update.

Like fairseq's own schedulers, everything is a function of ``num_updates`` (the state dict holds only ``best``), so
a resumed run gets exactly the learning rate and alpha of an uninterrupted one. ``step_update(n)`` runs after update
``n`` and sets the values that update ``n + 1`` uses (``step_update(0)``: the first update).

Diagnostics: every ``--sage-stats-interval`` updates (default: ``--log-interval``) the scheduler asks the optimizer
for statistics of the multiplier ``r`` on its next step, computed on a fixed random sample of
``--sage-stats-samples`` entries (0: off), and logs them through fairseq's metrics (progress bar, JSON log,
TensorBoard) beside ``sage_alpha``, which is logged every update like ``lr``.
"""

# no `from __future__ import annotations`: fairseq reads the config dataclasses' field types at run time

import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import List, Optional  # noqa: UP035

from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II

logger = logging.getLogger(__name__)


def sage_strength(num_updates: int, start_updates: int, ramp_updates: int) -> float:
    """alpha after ``num_updates`` updates: 0 until ``start_updates``, linear to 1 over ``ramp_updates``, then 1."""
    if num_updates <= start_updates:
        return 0.0 if ramp_updates > 0 or num_updates < start_updates else 1.0
    if num_updates >= start_updates + ramp_updates:
        return 1.0
    return (num_updates - start_updates) / ramp_updates


def _check(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{option} {message}")


@dataclass
class SAGEScheduleConfig(FairseqDataclass):
    warmup_updates: int = field(
        default=4000, metadata={"help": "warm the learning rate up linearly over the first N updates"}
    )
    warmup_init_lr: float = field(
        default=-1, metadata={"help": "learning rate at update 0 of the warmup; default 0 (--lr without warmup)"}
    )
    sage_start_updates: int = field(
        default=-1,
        metadata={"help": "SAGE strength alpha is 0 (plain Adam/Adamax) up to this update (-1: a quarter of "
                  "--warmup-updates); from scratch, early sensitivities reflect the random initialisation"},
    )  # fmt: skip
    sage_ramp_updates: int = field(
        default=-1,
        metadata={"help": "alpha then rises linearly from 0 to 1 over this many updates (0: a jump; -1: to the end "
                  "of the warmup)"},
    )  # fmt: skip
    sage_stats_interval: Optional[int] = field(  # noqa: UP045 - fairseq parses typing.Optional
        default=None,
        metadata={"help": "compute the multiplier statistics every N updates (default: --log-interval)"},
    )
    sage_stats_samples: int = field(
        default=8192,
        metadata={"help": "entries in the fixed random sample for the multiplier statistics (0: no statistics)"},
    )
    sage_stats_by_kind: bool = field(
        default=False,
        metadata={"help": "also log the multiplier statistics per layer type (embed, attn, ffn, norm, other), e.g. "
                  "sage_embed_r_q50; needs --sage-stats-samples > 0"},
    )  # fmt: skip
    # no help text: no flag of their own, fairseq fills them from --lr, --max-update and --log-interval
    lr: List[float] = II("optimization.lr")  # noqa: UP006 - fairseq parses typing.List
    max_update: int = II("optimization.max_update")
    log_interval: int = II("common.log_interval")


@dataclass
class SAGEDecayScheduleConfig(SAGEScheduleConfig):
    warmup_updates: int = field(
        default=4000, metadata={"help": "warm the learning rate up linearly over the first N updates (0: none)"}
    )
    end_learning_rate: float = field(default=0.0, metadata={"help": "learning rate at the end of the decay"})
    total_num_update: Optional[int] = field(  # noqa: UP045
        default=None,
        metadata={"help": "update at which the decay reaches --end-learning-rate (default: --max-update)"},
    )


class _SAGESchedule(FairseqLRScheduler):
    """Base: warmup, alpha(t), the optimizer check and the diagnostics; subclasses give the decay after warmup."""

    name: str

    def __init__(self, cfg, optimizer):
        super().__init__(cfg, optimizer)
        self._sage = self._sage_optimizer(optimizer)
        # tell the fairseq optimizer (inside fairseq's fp16/AMP wrappers) that the strength is scheduled: on resume
        # it then leaves the strength to this schedule instead of applying --sage-strength
        fairseq_optimizer = getattr(optimizer, "fp32_optimizer", None) or getattr(optimizer, "wrapped_optimizer", None)
        (fairseq_optimizer or optimizer).strength_scheduler = self.name
        self._check_config(cfg)
        if isinstance(cfg.lr, Collection) and len(cfg.lr) > 1:
            raise ValueError(f"--lr-scheduler {self.name} takes one --lr, got {list(cfg.lr)}")
        self.peak_lr = float(cfg.lr[0] if isinstance(cfg.lr, Collection) else cfg.lr)
        _check(cfg.warmup_updates >= 0, "--warmup-updates", f"must be >= 0, got {cfg.warmup_updates}")
        _check(
            cfg.sage_start_updates >= -1, "--sage-start-updates", f"must be >= 0 or -1, got {cfg.sage_start_updates}"
        )
        _check(cfg.sage_ramp_updates >= -1, "--sage-ramp-updates", f"must be >= 0 or -1, got {cfg.sage_ramp_updates}")
        warmup = max(cfg.warmup_updates, 0)
        self.sage_start = cfg.sage_start_updates if cfg.sage_start_updates >= 0 else warmup // 4
        self.sage_ramp = cfg.sage_ramp_updates if cfg.sage_ramp_updates >= 0 else max(warmup - self.sage_start, 0)
        _check(cfg.sage_stats_samples >= 0, "--sage-stats-samples", f"must be >= 0, got {cfg.sage_stats_samples}")
        _check(
            not (cfg.sage_stats_by_kind and cfg.sage_stats_samples == 0),
            "--sage-stats-by-kind",
            "needs the statistics: --sage-stats-samples is 0",
        )
        self.stats_interval = cfg.sage_stats_interval if cfg.sage_stats_interval is not None else cfg.log_interval
        _check(self.stats_interval >= 1, "--sage-stats-interval", f"must be >= 1, got {self.stats_interval}")
        if cfg.warmup_init_lr < 0:
            self.warmup_init_lr = 0.0 if cfg.warmup_updates > 0 else self.peak_lr
        else:
            self.warmup_init_lr = float(cfg.warmup_init_lr)
        initial = self._sage.sage_strength
        if initial != 1.0:
            logger.warning(
                f"--sage-strength {initial} is overridden: --lr-scheduler {self.name} sets the SAGE strength "
                f"(0 until update {self.sage_start}, then a ramp to 1 over {self.sage_ramp} updates)"
            )
        full = self.sage_start + self.sage_ramp
        stats = (
            f"multiplier statistics every {self.stats_interval} updates on {cfg.sage_stats_samples} sampled entries"
            + (", also per layer type" if cfg.sage_stats_by_kind else "")
            if cfg.sage_stats_samples
            else "no multiplier statistics"
        )
        logger.info(
            f"{self.name}: peak lr {self.peak_lr} after {cfg.warmup_updates} warmup updates; SAGE strength 0 until "
            f"update {self.sage_start}, 1 from update {full}; {stats}"
        )
        if cfg.max_update and full > cfg.max_update:
            logger.warning(
                f"SAGE never reaches full strength: alpha reaches 1 at update {full} "
                f"(--sage-start-updates + --sage-ramp-updates) but --max-update is {cfg.max_update}"
            )
        self.step_update(0)

    @classmethod
    def _sage_optimizer(cls, optimizer):
        """The inner torch optimizer (also inside fairseq's FP16/MemoryEfficientFP16 wrappers), checked for SAGE."""
        inner = getattr(optimizer, "optimizer", None) if optimizer is not None else None
        if inner is not None and hasattr(getattr(inner, "optim", None), "set_sage_strength"):
            return _ShardedSAGE(inner)  # --zero-sharding os: fairscale's OSS around this rank's SAGE optimizer
        if inner is None or not hasattr(inner, "set_sage_strength"):
            got = type(inner if inner is not None else optimizer).__name__
            raise ValueError(
                f"--lr-scheduler {cls.name} sets the SAGE strength and needs a SAGE optimizer: use "
                f"--optimizer adam_sage or --optimizer adamax_sage (got the optimizer {got}), or a plain "
                "scheduler such as --lr-scheduler inverse_sqrt"
            )
        return inner

    def _check_config(self, cfg) -> None:
        """Checks of the subclass's own options, after the optimizer check."""

    # --- the schedule: pure functions of num_updates ---
    def lr_at(self, num_updates: int) -> float:
        warmup = self.cfg.warmup_updates
        if num_updates < warmup:
            return self.warmup_init_lr + num_updates * (self.peak_lr - self.warmup_init_lr) / warmup
        return self._decay(num_updates)

    def _decay(self, num_updates: int) -> float:
        raise NotImplementedError

    def alpha_at(self, num_updates: int) -> float:
        return sage_strength(num_updates, self.sage_start, self.sage_ramp)

    # --- fairseq's hooks ---
    def step(self, epoch, val_loss=None):
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()  # per-update schedule: nothing changes at epoch boundaries

    def step_update(self, num_updates):
        """Set lr and alpha for update ``num_updates + 1``; log alpha and any statistics of update ``num_updates``."""
        lr = self.lr_at(num_updates)
        alpha = self.alpha_at(num_updates)
        self.optimizer.set_lr(lr)
        self._sage.set_sage_strength(alpha)
        metrics.log_scalar("sage_alpha", alpha, weight=0, priority=310, round=4)
        self._log_stats()
        samples, interval = self.cfg.sage_stats_samples, self.stats_interval
        if samples > 0 and (num_updates + 1) % interval == 0:
            self._sage.request_sage_stats(num_samples=samples, by_kind=self.cfg.sage_stats_by_kind)
        return lr

    def _log_stats(self) -> None:
        stats = self._sage.pop_sage_stats()
        if not stats:
            return
        for key, value in stats.items():
            metrics.log_scalar(f"sage_{key}", value, weight=1, priority=320, round=4)


class _ShardedSAGE:
    """The SAGE interface of fairscale's OSS (``--zero-sharding os``): the strength goes into OSS's own param groups,
    which it copies to this rank's optimizer before each step; the statistics are those of this rank's share of the
    tensors (fairseq logs rank 0's)."""

    def __init__(self, oss):
        self.oss = oss

    @property
    def sage_strength(self) -> float:
        return self.oss.optim.sage_strength

    def set_sage_strength(self, alpha: float) -> None:
        self.oss.optim.set_sage_strength(alpha)
        for group in self.oss.param_groups:
            group["sage_strength"] = float(alpha)

    def request_sage_stats(self, **kwargs) -> None:
        self.oss.optim.request_sage_stats(**kwargs)

    def pop_sage_stats(self):
        return self.oss.optim.pop_sage_stats()


@register_lr_scheduler("sage_inverse_sqrt", dataclass=SAGEScheduleConfig)
class SAGEInverseSqrtSchedule(_SAGESchedule):
    """fairseq's ``inverse_sqrt`` learning rate, plus the SAGE strength ramp and diagnostics."""

    name = "sage_inverse_sqrt"

    def _check_config(self, cfg) -> None:
        _check(
            cfg.warmup_updates >= 1,
            "--warmup-updates",
            f"must be >= 1 for --lr-scheduler sage_inverse_sqrt (lr = peak * sqrt(warmup / t)), got "
            f"{cfg.warmup_updates}",
        )

    def _decay(self, num_updates: int) -> float:
        return self.peak_lr * math.sqrt(self.cfg.warmup_updates / num_updates)


class _SAGEDecaySchedule(_SAGESchedule):
    def _check_config(self, cfg) -> None:
        total = self.total_num_update = cfg.total_num_update if cfg.total_num_update is not None else cfg.max_update
        _check(
            total is not None and total > cfg.warmup_updates,
            "--total-num-update",
            f"(default --max-update) must be > --warmup-updates {cfg.warmup_updates} for --lr-scheduler "
            f"{self.name}, got {total}",
        )
        _check(cfg.end_learning_rate >= 0, "--end-learning-rate", f"must be >= 0, got {cfg.end_learning_rate}")

    def _progress(self, num_updates: int) -> float:
        warmup, total = self.cfg.warmup_updates, self.total_num_update
        return min(1.0, (num_updates - warmup) / (total - warmup))


@register_lr_scheduler("sage_linear", dataclass=SAGEDecayScheduleConfig)
class SAGELinearSchedule(_SAGEDecaySchedule):
    """Linear warmup, then linear decay to ``--end-learning-rate``; plus the SAGE strength ramp and diagnostics."""

    name = "sage_linear"

    def _decay(self, num_updates: int) -> float:
        end = self.cfg.end_learning_rate
        return end + (self.peak_lr - end) * (1.0 - self._progress(num_updates))


@register_lr_scheduler("sage_cosine", dataclass=SAGEDecayScheduleConfig)
class SAGECosineSchedule(_SAGEDecaySchedule):
    """Linear warmup, then half a cosine to ``--end-learning-rate``; plus the SAGE strength ramp and diagnostics."""

    name = "sage_cosine"

    def _decay(self, num_updates: int) -> float:
        end = self.cfg.end_learning_rate
        return end + (self.peak_lr - end) * 0.5 * (1.0 + math.cos(math.pi * self._progress(num_updates)))
