"""Statistics of the SAGE multiplier (fairseq_plugins/optim/diagnostics.py) and their way into fairseq's logs."""

from __future__ import annotations

import pytest
import torch

from fairseq_plugins.optim import AdamSAGE
from fairseq_plugins.optim.diagnostics import layer_kind, summarize, weighted_quantiles
from tests.fairseq_utils import run_cli, train_args, train_log
from tests.optim_infos import cases

KEYS = {"r_mean", "r_gt1", "r_q10", "r_q50", "r_q90", "mult_mean"}


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 3))


def _backward(model, seed):
    g = torch.Generator().manual_seed(seed)
    model.zero_grad()
    model(torch.randn(16, 12, generator=g)).pow(2).sum().backward()


@torch.no_grad()
def _reference_r(opt, params):
    """r of the coming step for every entry, from the state before it (the formula of ../shared/docs/SAGE.md).

    In float64 from the float32 values, as the statistics are computed: a float32 reference carries its own rounding,
    which the cancellation in |I - Ihat| magnifies where r is small, to relative errors near the 1e-6 tolerance (0.9
    of it on one machine) that depend on the inputs' last bits, and so on the machine's floating-point paths."""
    out = []
    for p in params:
        group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
        state = opt.state.get(p, {})
        b3, eps = group["beta3"], group["eps"]
        t = int(state["step"]) + 1 if state else 1
        sens = (p.double() * p.grad.double()).abs()
        smoothed = b3 * state.get("exp_avg_sens", torch.zeros_like(p)).double() + (1 - b3) * sens
        if group["bias_correction"]:
            smoothed = smoothed / (1 - b3**t)
        out.append(((sens - smoothed).abs() + eps**2) / (smoothed + eps**2))
    return torch.cat([r.flatten() for r in out])


@pytest.mark.parametrize("info, impl", cases(impls="kernels"))
def test_statistics_equal_the_formula_when_the_sample_covers_every_entry(info, impl):
    model = _model()
    params = list(model.parameters())
    opt = info.optim_cls(params, lr=1e-2, sage_strength=0.4, impl=impl)
    for step in range(1, 6):
        _backward(model, step)
        r = _reference_r(opt, params)
        opt.request_sage_stats(num_samples=10**6)  # more than the model's 303 entries: all of them
        opt.step()
        stats = opt.pop_sage_stats()
        assert set(stats) == KEYS
        # both in float64 from the same float32 values: they can differ only in the order of a sum
        assert stats["r_mean"] == pytest.approx(float(r.mean()), rel=1e-9)
        assert stats["r_gt1"] == pytest.approx(float((r > 1).double().mean()), abs=1e-12)
        sorted_r = r.sort().values
        for key, q in (("r_q10", 0.1), ("r_q50", 0.5), ("r_q90", 0.9)):
            lower = sorted_r[max(0, int(torch.ceil(torch.tensor(q * len(r)))) - 1)]
            assert stats[key] == pytest.approx(float(lower), rel=1e-9), key
        assert stats["mult_mean"] == pytest.approx(1 + 0.4 * (float(r.mean()) - 1), rel=1e-9)
        assert opt.pop_sage_stats() is None  # popped


@pytest.mark.parametrize("info, impl", cases(impls="kernels"))
def test_statistics_do_not_change_the_update_and_are_computed_only_on_request(info, impl):
    a, b = _model(), _model()
    opt_a, opt_b = (info.optim_cls(m.parameters(), lr=1e-2, impl=impl) for m in (a, b))
    for step in range(1, 8):
        _backward(a, step)
        _backward(b, step)
        if step % 3 == 0:
            opt_b.request_sage_stats(num_samples=50)
        opt_a.step()
        opt_b.step()
        assert (opt_b.pop_sage_stats() is not None) == (step % 3 == 0)
        assert opt_a.pop_sage_stats() is None
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
        assert all(torch.equal(opt_a.state[p][k], opt_b.state[q][k]) for k in opt_a.state[p])


def test_the_sample_is_fixed_proportional_and_weighted():
    model = _model()
    params = list(model.parameters())  # 240 + 20 + 60 + 3 entries
    opt = AdamSAGE(params, lr=1e-2)
    for step in range(1, 4):
        _backward(model, step)
        opt.request_sage_stats(num_samples=100)
        opt.step()
        sampler = opt._sage_samplers[(100, 0)]
        if step == 1:
            first = {k: v.clone() for k, v in sampler.index.items()}
        assert all(torch.equal(first[k], sampler.index[k]) for k in first), "indices drawn once"
    sizes = {id(p): p.numel() for p in params}
    counts = {sizes[k]: len(v) for k, v in first.items()}
    assert counts == {240: 74, 20: 16, 60: 19, 3: 3}  # proportional, at least min(numel, 16)
    assert all(len(torch.unique(v)) == len(v) for v in first.values())
    assert sum(sampler.weight[k] * len(v) for k, v in first.items()) == pytest.approx(323)


def test_unselected_tensors_are_left_out():
    model = _model()
    named = list(model.named_parameters())
    opt = AdamSAGE(named, lr=1e-2, sage_params="regex:^0\\.")  # SAGE on the first layer only
    _backward(model, 1)
    opt.step()
    _backward(model, 2)
    opt.request_sage_stats(num_samples=10**6)
    first_layer = [p for n, p in named if n.startswith("0.")]
    r = _reference_r(opt, first_layer)
    opt.step()
    assert opt.pop_sage_stats()["r_mean"] == pytest.approx(float(r.mean()), rel=1e-9)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("encoder.embed_tokens.weight", "embed"),
        ("decoder.embed_positions.weight", "embed"),
        ("decoder.output_projection.weight", "embed"),
        ("encoder.layers.0.self_attn.k_proj.weight", "attn"),
        ("decoder.layers.1.encoder_attn.out_proj.bias", "attn"),
        ("encoder.layers.0.self_attn_layer_norm.weight", "norm"),
        ("decoder.layers.0.final_layer_norm.bias", "norm"),
        ("encoder.layer_norm.weight", "norm"),
        ("encoder.layers.1.fc1.weight", "ffn"),
        ("decoder.layers.0.fc2.bias", "ffn"),
        ("bert.encoder.layer.0.attention.output.dense.weight", "attn"),
        ("bert.encoder.layer.0.attention.output.LayerNorm.weight", "norm"),
        ("bert.encoder.layer.0.output.dense.weight", "ffn"),
        ("bert.embeddings.word_embeddings.weight", "embed"),
        ("classifier.weight", "other"),
    ],
)
def test_layer_kinds_of_fairseq_and_bert_names(name, kind):
    assert layer_kind(name) == kind


NAMES = ["encoder.embed_tokens.weight", "encoder.layers.0.fc1.bias", "decoder.layers.0.self_attn.q_proj.weight",
         "decoder.layer_norm.bias"]  # fmt: skip
KINDS = ["embed", "ffn", "attn", "norm"]


def test_statistics_by_layer_kind_are_the_statistics_of_each_kinds_entries():
    model = _model()
    params = list(model.parameters())
    opt = AdamSAGE(list(zip(NAMES, params, strict=True)), lr=1e-2, sage_strength=0.4)
    for step in range(1, 4):
        _backward(model, step)
        rs = [_reference_r(opt, [p]) for p in params]
        opt.request_sage_stats(num_samples=10**6, by_kind=step != 2)
        opt.step()
        stats = opt.pop_sage_stats()
        if step == 2:  # not asked for: the overall statistics only
            assert set(stats) == KEYS
            continue
        assert set(stats) == KEYS | {f"{kind}_{key}" for kind in KINDS for key in KEYS}
        for kind, r in zip(KINDS, rs, strict=True):
            expected = summarize(r, torch.ones_like(r), 0.4)
            assert stats[f"{kind}_r_mean"] == pytest.approx(expected["r_mean"], rel=1e-9)
            assert stats[f"{kind}_r_q50"] == pytest.approx(expected["r_q50"], rel=1e-9)
            assert stats[f"{kind}_r_gt1"] == pytest.approx(expected["r_gt1"], abs=1e-12)
        assert stats["r_mean"] == pytest.approx(float(torch.cat(rs).mean()), rel=1e-9)


def test_statistics_by_kind_without_names_warn_and_give_the_overall_ones():
    model = _model()
    opt = AdamSAGE(model.parameters(), lr=1e-2)
    _backward(model, 1)
    opt.request_sage_stats(num_samples=100, by_kind=True)
    with pytest.warns(UserWarning, match="no names"):
        opt.step()
    assert set(opt.pop_sage_stats()) == KEYS
    with pytest.raises(ValueError, match="by_kind must be True or False"):
        opt.request_sage_stats(by_kind="yes")


def test_summarize_and_weighted_quantiles():
    r = torch.tensor([0.5, 2.0, 1.0, 0.1])
    stats = summarize(r, torch.tensor([1.0, 1.0, 1.0, 1.0]), alpha=0.5)
    assert stats["r_mean"] == pytest.approx(0.9) and stats["r_gt1"] == 0.25 and stats["r_q50"] == 0.5
    assert stats["mult_mean"] == pytest.approx(0.95)
    # weights: 0.1 stands for 7 entries of 10
    got = weighted_quantiles(r, torch.tensor([1.0, 1.0, 1.0, 7.0]), (0.5, 0.75, 0.9, 1.0))
    assert got == pytest.approx([0.1, 0.5, 1.0, 2.0])
    with pytest.raises(ValueError, match="num_samples"):
        AdamSAGE(_model().parameters()).request_sage_stats(num_samples=0)


@pytest.mark.slow
def test_diagnostics_appear_in_fairseqs_json_log(tiny_data_bin, tmp_path):
    args = train_args(tiny_data_bin, tmp_path / "ckpt", ["--optimizer", "adamax_sage"], max_update=6)
    args[args.index("inverse_sqrt")] = "sage_linear"
    proc = run_cli("train", args + ["--sage-start-updates", "1", "--sage-ramp-updates", "2", "--sage-stats-interval",
                                    "2", "--total-num-update", "100", "--sage-stats-by-kind"])  # fmt: skip
    records = train_log(proc)
    assert [r["num_updates"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["sage_alpha"] for r in records] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert [r["lr"] for r in records] == pytest.approx([5e-4 * n for n in range(1, 7)])  # warmup 10 of 5e-3
    for r in records:
        has = r["num_updates"] % 2 == 0  # every --sage-stats-interval updates; null between them
        assert all((r.get(f"sage_{k}") is not None) == has for k in KEYS), r
        if has:
            assert 0 <= r["sage_r_q10"] <= r["sage_r_q50"] <= r["sage_r_q90"] and 0 <= r["sage_r_gt1"] <= 1
            # --sage-stats-by-kind: the tiny transformer's embeddings, attention, feed-forward and layer norms
            for kind in ("embed", "attn", "ffn", "norm"):
                assert 0 <= r[f"sage_{kind}_r_q10"] <= r[f"sage_{kind}_r_q50"] <= r[f"sage_{kind}_r_q90"], kind
    assert records[1]["sage_mult_mean"] == 1.0  # update 2 ran with alpha 0 (set after update 1)
    assert records[3]["sage_mult_mean"] == pytest.approx(records[3]["sage_r_mean"], abs=1e-3)  # alpha 1


def test_low_precision_parameters_are_measured_in_fp32():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(50, dtype=torch.bfloat16))
    opt = AdamSAGE([p], lr=1e-2)
    for step in range(1, 4):
        p.grad = torch.randn(50, generator=torch.Generator().manual_seed(step)).to(torch.bfloat16)
        state = opt.state.get(p, {})
        sens = state.get("exp_avg_sens", torch.zeros(50))
        assert sens.dtype == torch.float32
        t = int(state["step"]) + 1 if state else 1
        sensitivity = (p.detach().float() * p.grad.float()).abs().double()
        smoothed = (0.75 * sens.double() + 0.25 * sensitivity) / (1 - 0.75**t)
        r = ((sensitivity - smoothed).abs() + 1e-16) / (smoothed + 1e-16)
        opt.request_sage_stats(num_samples=1000)
        opt.step()
        assert opt.pop_sage_stats()["r_mean"] == pytest.approx(float(r.mean()), rel=1e-5)
