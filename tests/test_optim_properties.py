"""SAGE's properties (../shared/docs/SAGE.md), hand-computed steps, options, selection and state handling."""

from __future__ import annotations

import functools
import io
import subprocess
import sys

import pytest
import torch

from fairseq_plugins.optim import AdamaxSAGE, AdamSAGE
from tests.optim_infos import cases


def _step(opt, params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()


# ---------------------------------------------------------------- the formula, computed by hand on one scalar


@pytest.mark.parametrize("bias_correction", [True, False])
def test_adam_sage_two_steps_by_hand(bias_correction):
    lr, b3, eps = 0.1, 0.75, 1e-3
    theta = torch.tensor([2.0], dtype=torch.float64)
    opt = AdamSAGE([theta], lr=lr, betas=(0.0, 0.0), eps=eps, beta3=b3, bias_correction=bias_correction)
    # betas (0, 0): m = g, v = g^2, step size = lr, so the step is lr * r * g / (|g| + eps)
    th, sens_avg = 2.0, 0.0
    for t, g in ((1, 0.5), (2, -1.0)):
        _step(opt, [theta], [torch.tensor([g], dtype=torch.float64)])
        sens = abs(th * g)
        sens_avg = b3 * sens_avg + (1 - b3) * sens
        sens_hat = sens_avg / (1 - b3**t) if bias_correction else sens_avg
        r = (abs(sens - sens_hat) + eps**2) / (sens_hat + eps**2)
        th = th - lr * r * g / (abs(g) + eps)
        assert theta.item() == pytest.approx(th, rel=1e-12, abs=1e-15), f"step {t}"
        assert opt.state[theta]["exp_avg_sens"].item() == pytest.approx(sens_avg, rel=1e-12)
    if bias_correction:
        assert abs(theta.item() - 2.0) > 1e-3  # step 2 really moved it (step 1 barely did)


def test_adamax_sage_two_steps_by_hand():
    lr, b1, b2, b3, eps, wd = 0.1, 0.9, 0.99, 0.75, 1e-3, 0.01
    theta = torch.tensor([2.0], dtype=torch.float64)
    opt = AdamaxSAGE([theta], lr=lr, betas=(b1, b2), eps=eps, beta3=b3, weight_decay=wd)
    th, m, u, sens_avg = 2.0, 0.0, 0.0, 0.0
    for g in (0.5, -1.0):
        _step(opt, [theta], [torch.tensor([g], dtype=torch.float64)])
        m = b1 * m + (1 - b1) * g
        u = max(b2 * u, abs(g) + eps)
        sens = abs(th * g)
        sens_avg = b3 * sens_avg + (1 - b3) * sens  # no bias correction by default
        r = (abs(sens - sens_avg) + eps**2) / (sens_avg + eps**2)
        th = th - lr * r * (m / (u + eps) + wd * th)
        assert theta.item() == pytest.approx(th, rel=1e-12)


# ---------------------------------------------------------------- properties


def _multipliers(bias_correction, beta3, steps=60, scale=1.0, seed=0):
    """With betas (0, 0) and a tiny eps the step is lr * r * sign(g): read r off the parameter change."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(2000, generator=gen, dtype=torch.float64) * scale
    lr = 1e-6
    opt = AdamSAGE([theta], lr=lr, betas=(0.0, 0.0), eps=1e-12, beta3=beta3, bias_correction=bias_correction)
    rs = []
    for _ in range(steps):
        g = torch.randn(2000, generator=gen, dtype=torch.float64) * (1 + torch.rand(1, generator=gen).item())
        before = theta.clone()
        _step(opt, [theta], [g])
        rs.append(((before - theta).abs() / lr).clone())
    return torch.stack(rs)


@pytest.mark.parametrize("beta3", [0.75, 0.9])
def test_multiplier_bound_without_bias_correction(beta3):
    rs = _multipliers(False, beta3)
    bound = max(1.0, beta3 / (1 - beta3))
    assert rs.max() <= bound * (1 + 1e-9)
    assert rs[0].allclose(torch.full_like(rs[0], bound), rtol=1e-9)  # r_1 = b3/(1-b3) everywhere
    assert rs[1:].max() > 0.5 * bound  # the bound is approached, so the check is not vacuous


def test_first_step_with_bias_correction_does_not_move_nonzero_entries():
    rs = _multipliers(True, 0.75, steps=3)
    assert rs[0].max() < 1e-9  # r_1 = eps^2 / (I_1 + eps^2)
    assert rs[1].mean() > 0.1


def test_multiplier_invariant_to_gradient_scale():
    gen = torch.Generator().manual_seed(3)
    theta0 = torch.randn(500, generator=gen, dtype=torch.float64)
    grads = [torch.randn(500, generator=gen, dtype=torch.float64) for _ in range(15)]
    finals, sens = [], []
    for scale in (1.0, 1024.0):  # a loss scale or a sample-size normalisation
        theta = theta0.clone()
        opt = AdamSAGE([theta], lr=1e-2, eps=1e-12, weight_decay=0.0)
        for g in grads:
            _step(opt, [theta], [g * scale])
        finals.append(theta)
        sens.append(opt.state[theta]["exp_avg_sens"] / scale)
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sens[0], sens[1], rtol=1e-8, atol=0)  # theta agrees to ~1e-9, not exactly


@pytest.mark.parametrize("info, impl", cases(impls="all"))
def test_zero_initialised_entries_train(info, impl):
    """The literal multiplier U/(Ihat+eps^2) is 0 for an entry that is exactly 0: it would never move."""
    gen = torch.Generator().manual_seed(7)
    bias = torch.zeros(10)
    weight = torch.randn(10, generator=gen)
    opt = info.optim_cls([bias, weight], lr=1e-2, impl=impl)
    for t in range(5):
        before = bias.clone()
        _step(opt, [bias, weight], [torch.randn(10, generator=gen), torch.randn(10, generator=gen)])
        assert (bias != before).all(), f"a zero-initialised entry stopped at step {t + 1}"
        if t == 0:
            # a full first step, lr * m/(|g| + eps) with multiplier 1 (I = Ibar = 0): lr (Adam), lr * (1 - beta1)
            # (Adamax), whatever the gradient; the literal formula would give 0. (Not checked after several steps:
            # where steps of both signs follow each other an entry may pass near 0 again.)
            assert bias.abs().min() > 1e-4


@pytest.mark.parametrize("info, impl", cases(impls="all"))
def test_strength_zero_is_the_plain_update_and_strength_is_settable(info, impl):
    """Strength 0 is the base optimizer (AdamW, Adamax) exactly: the multiplier is 1 + 0 * (r - 1) = 1."""
    gen = torch.Generator().manual_seed(5)
    theta0 = torch.randn(50, generator=gen, dtype=torch.float64)
    grads = [torch.randn(50, generator=gen, dtype=torch.float64) for _ in range(8)]
    a, b = theta0.clone(), theta0.clone()
    sage = info.optim_cls([a], lr=1e-2, weight_decay=0.1, impl=impl)
    sage.set_sage_strength(0.0)
    plain = info.optim_cls([{"params": [b], "sage": False}], lr=1e-2, weight_decay=0.1, impl=impl)
    for g in grads:
        _step(sage, [a], [g])
        _step(plain, [b], [g])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sage.sage_strength == 0.0
    assert sage.state[a]["exp_avg_sens"].abs().sum() > 0  # the EMA keeps running, ready for a ramp


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("info, bad", cases(errors="construction"))
def test_invalid_options_raise_value_error_naming_them(info, bad):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(bad.error_type) as err:
        info.optim_cls(model.named_parameters(), **bad.kwargs)
    message = str(err.value)
    assert message.startswith(bad.option) and bad.shown in message, message


def test_name_selection_needs_names():
    with pytest.raises(ValueError, match="named parameters"):
        AdamSAGE(torch.nn.Linear(2, 2).parameters(), sage_params="attn_ffn")


class _TinyBlock(torch.nn.Module):
    """fairseq's parameter names for one encoder layer."""

    def __init__(self):
        super().__init__()
        self.self_attn = torch.nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, name, torch.nn.Linear(4, 4))
        self.self_attn_layer_norm = torch.nn.LayerNorm(4)
        self.fc1, self.fc2 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 4)
        self.embed_tokens = torch.nn.Embedding(10, 4)


def test_attn_ffn_preset_and_regex_select_by_name():
    block = _TinyBlock()
    opt = AdamSAGE(block.named_parameters(), sage_params="attn_ffn")
    sage_names = {n for g in opt.param_groups if g["sage"] for n in g["param_names"]}
    plain_names = {n for g in opt.param_groups if not g["sage"] for n in g["param_names"]}
    assert sage_names == {
        f"self_attn.{p}.{w}" for p in ("q_proj", "k_proj", "v_proj", "out_proj") for w in ("weight", "bias")
    } | {f"fc{i}.{w}" for i in (1, 2) for w in ("weight", "bias")}
    assert plain_names == {"self_attn_layer_norm.weight", "self_attn_layer_norm.bias", "embed_tokens.weight"}

    opt = AdamSAGE(block.named_parameters(), sage_params="no_embed")
    assert {n for g in opt.param_groups if not g["sage"] for n in g["param_names"]} == {"embed_tokens.weight"}

    opt = AdamSAGE(block.named_parameters(), sage_params=r"regex:^fc1\.")
    assert {n for g in opt.param_groups if g["sage"] for n in g["param_names"]} == {"fc1.weight", "fc1.bias"}
    loss = sum(p.sum() for p in block.parameters())
    loss.backward()
    opt.step()
    sens = {
        n
        for g in opt.param_groups
        for n, p in zip(g["param_names"], g["params"], strict=True)
        if "exp_avg_sens" in opt.state[p]
    }
    assert sens == {"fc1.weight", "fc1.bias"}


# ---------------------------------------------------------------- state


@pytest.mark.parametrize("info, impl", cases(impls="all"))
def test_state_dict_round_trip_continues_identically(info, impl):
    cls = functools.partial(info.optim_cls, impl=impl)
    gen = torch.Generator().manual_seed(11)
    theta0 = [torch.randn(6, 3, generator=gen), torch.zeros(3)]
    grads = [[torch.randn(6, 3, generator=gen), torch.randn(3, generator=gen)] for _ in range(10)]
    straight = [p.clone() for p in theta0]
    opt = cls(straight, lr=1e-2, weight_decay=0.01)
    for g in grads:
        _step(opt, straight, g)

    first = [p.clone() for p in theta0]
    opt1 = cls(first, lr=1e-2, weight_decay=0.01)
    for g in grads[:5]:
        _step(opt1, first, g)
    buffer = io.BytesIO()
    torch.save({"params": first, "optim": opt1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = saved["params"]
    opt2 = cls(resumed, lr=1e-2, weight_decay=0.01)
    opt2.load_state_dict(saved["optim"])
    for g in grads[5:]:
        _step(opt2, resumed, g)
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)
        for key, value in opt.state[a].items():
            assert torch.equal(value, opt2.state[b][key]), key


def test_load_state_saved_without_newer_options():
    """States written before sage_strength/sage/impl existed, and plain torch Adam states, still load."""
    p = torch.randn(4)
    opt = AdamSAGE([p], lr=1e-2)
    _step(opt, [p], [torch.randn(4)])
    state = opt.state_dict()
    for group in state["param_groups"]:
        for key in ("sage_strength", "sage", "impl"):
            del group[key]
    fresh = AdamSAGE([p], lr=1e-2)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["sage_strength"] == 1.0 and fresh.param_groups[0]["sage"] is True
    _step(fresh, [p], [torch.randn(4)])
    assert float(fresh.state[p]["step"]) == 2

    q = torch.randn(4)
    adam = torch.optim.Adam([q], lr=1e-2)
    _step(adam, [q], [torch.randn(4)])
    from_adam = AdamSAGE([q], lr=1e-2)
    from_adam.load_state_dict(adam.state_dict())
    _step(from_adam, [q], [torch.randn(4)])
    assert from_adam.state[q]["exp_avg_sens"].abs().sum() > 0


def test_importable_without_fairseq():
    code = (
        "import sys; sys.modules['fairseq'] = None\n"
        "import torch\nfrom fairseq_plugins.optim import AdamSAGE, AdamaxSAGE\n"
        "p = torch.zeros(3, requires_grad=True); o = AdamSAGE([p]); p.grad = torch.ones(3); o.step()\n"
        "assert isinstance(o, torch.optim.Optimizer) and 'fairseq_plugins.fairseq_optim' not in sys.modules\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
