"""The fairseq wrapper in-process: config parsing, parameter names under fairseq's fp16 wrappers, optimizer_config."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from fairseq_plugins import fairseq_optim
from fairseq_plugins.fairseq_optim import (
    FairseqAdamaxSAGE,
    FairseqAdamaxSAGEConfig,
    FairseqAdamSAGE,
    FairseqAdamSAGEConfig,
    _parse_betas,
)
from fairseq_plugins.optim import AdamaxSAGE, AdamSAGE


class _Layer(torch.nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.self_attn = torch.nn.Module()
        self.self_attn.q_proj = torch.nn.Linear(4, 4).to(dtype)
        self.fc1 = torch.nn.Linear(4, 6).to(dtype)
        self.layer_norm = torch.nn.LayerNorm(6).to(dtype)


def _cfg(config_class=FairseqAdamSAGEConfig, **overrides):
    return OmegaConf.structured(config_class(lr=[1e-3], **overrides))


def _build(cls, cfg, params, named):
    token = fairseq_optim._NAMED_PARAMS.set(named)  # what the Trainer hook does around _build_optimizer
    try:
        return cls(cfg, params)
    finally:
        fairseq_optim._NAMED_PARAMS.reset(token)


def test_betas_from_cli_string_and_yaml_list():
    assert _parse_betas("(0.9, 0.98)") == (0.9, 0.98)
    assert _parse_betas(OmegaConf.create({"b": [0.9, 0.98]}).b) == (0.9, 0.98)
    for bad in ("(0.9)", "0.9, 0.98, 0.99", "betas"):
        with pytest.raises(ValueError, match="--adam-betas"):
            _parse_betas(bad)


def test_optimizer_config_rebuilds_the_same_inner_optimizer():
    """fairseq's FP16/AMP/OSS wrappers rebuild the inner optimizer from param groups + optimizer_config."""
    layer = _Layer()
    cfg = _cfg(adam_betas="(0.9, 0.98)", weight_decay=0.01, sage_beta3=0.8, sage_params="attn_ffn")
    wrapper = _build(FairseqAdamSAGE, cfg, list(layer.parameters()), list(layer.named_parameters()))
    inner = wrapper.optimizer
    assert isinstance(inner, AdamSAGE)
    rebuilt = type(inner)(inner.param_groups, **wrapper.optimizer_config)
    for a, b in zip(inner.param_groups, rebuilt.param_groups, strict=True):
        assert {k: v for k, v in a.items() if k != "params"} == {k: v for k, v in b.items() if k != "params"}
    assert [g["sage"] for g in inner.param_groups] == [True, False]
    assert wrapper.optimizer_config["betas"] == (0.9, 0.98) and wrapper.optimizer_config["beta3"] == 0.8
    assert wrapper.supports_flat_params and wrapper.supports_memory_efficient_fp16
    assert isinstance(
        _build(FairseqAdamaxSAGE, _cfg(FairseqAdamaxSAGEConfig), list(layer.parameters()), None).optimizer, AdamaxSAGE
    )


def test_names_by_identity_and_by_position():
    layer = _Layer()
    named = list(layer.named_parameters())
    params = [p for _, p in named]
    assert fairseq_optim._param_names(params) is None  # outside fairseq's optimizer construction
    token = fairseq_optim._NAMED_PARAMS.set(named)
    try:
        assert fairseq_optim._param_names(params) == [n for n, _ in named]
        copies = [p.detach().float().clone() for p in params]  # --fp16-no-flatten-grads: fp32 copies in order
        assert fairseq_optim._param_names(copies) == [n for n, _ in named]
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        assert fairseq_optim._param_names([flat]) is None
    finally:
        fairseq_optim._NAMED_PARAMS.reset(token)
    token = fairseq_optim._NAMED_PARAMS.set([("_fsdp_wrapped_module.flat_param_0", flat)])  # FSDP's own names
    try:
        assert fairseq_optim._param_names([flat]) is None
    finally:
        fairseq_optim._NAMED_PARAMS.reset(token)


def _fp16_wrapper_cfg(sage_params, no_flatten):
    from fairseq.dataclass.configs import FairseqConfig

    cfg = OmegaConf.structured(FairseqConfig())
    cfg.common.fp16, cfg.common.fp16_no_flatten_grads = True, no_flatten
    cfg.optimizer = _cfg(sage_params=sage_params)
    cfg.optimizer._name = "adam_sage"
    return cfg


@pytest.mark.parametrize("sage_params", ["all", "attn_ffn"])
@pytest.mark.parametrize("no_flatten", [False, True])
def test_name_selection_under_fairseqs_fp16_optimizer(sage_params, no_flatten, monkeypatch):
    from fairseq.optim import FP16Optimizer

    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)  # fairseq keys flat masters by it; CPU: None

    layer = _Layer(torch.float16)
    named = list(layer.named_parameters())
    cfg = _fp16_wrapper_cfg(sage_params, no_flatten)
    token = fairseq_optim._NAMED_PARAMS.set(named)
    try:
        if sage_params != "all" and not no_flatten:
            with pytest.raises(ValueError) as err:
                FP16Optimizer.build_optimizer(cfg, [p for _, p in named])
            for alternative in ("--memory-efficient-fp16", "--fp16-no-flatten-grads", "--sage-params all"):
                assert alternative in str(err.value)
            return
        wrapper = FP16Optimizer.build_optimizer(cfg, [p for _, p in named])
    finally:
        fairseq_optim._NAMED_PARAMS.reset(token)
    inner = wrapper.optimizer
    flags = [g["sage"] for g in inner.param_groups]
    assert flags == ([True] if sage_params == "all" else [True, False])
    assert all(p.dtype == torch.float32 for g in inner.param_groups for p in g["params"])  # fp32 master copies
