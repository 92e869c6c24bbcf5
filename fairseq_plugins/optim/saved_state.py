"""Saving, copying and loading a SAGE optimizer's state: the mixin behind ``load_state_dict``, ``__getstate__``
and ``__setstate__`` of :class:`~.sage.AdamSAGE` and :class:`~.sage.AdamaxSAGE`. A loaded state is checked whole before
anything changes (its selection of SAGE tensors, its options, every tensor's shape); a torch.optim.Adam/AdamW state
converts into an AdamSAGE one (docs/optimizer-state.md)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _functional as F
from .options import RANGES, check_options, describe_param, real_number
from .selection import selector


class SelectionChangedError(ValueError):
    """A saved state was made with another choice of SAGE tensors (``sage_params``) than this optimizer's."""


# ---------------------------------------------------------------- saved states of other optimizers
# Which convert, and into what: docs/optimizer-state.md. A SAGE state's groups carry ``beta3``; a group of
# torch.optim.Adam/AdamW (and fairseq's adam) carries ``amsgrad``.
STATE_DOC = "docs/optimizer-state.md"
_OPTIONS_NEEDED = ("lr", "betas", "eps", "weight_decay")  # every group of a state this package loads has them

# torch's options that choose how torch computes the update, not what it computes: dropped on conversion. SAGE runs
# its own kernel (``impl``), has its own ``capturable`` (the constructor's, as ``impl``) and steps outside autograd
# (what ``differentiable`` records); the trajectory of the converted state is the same either way.
_TORCH_HOW_OPTIONS = ("foreach", "fused", "capturable", "differentiable")

# torch's options that change what is optimized: (option, the value SAGE implements, why another is refused)
_TORCH_WHAT_OPTIONS = (
    ("amsgrad", False, "SAGE has no AMSGrad variant: its max_exp_avg_sq would be dropped and the steps would change"),
    ("maximize", False, "SAGE minimizes: to maximize, negate the loss"),
)


def _convert_torch_adam_group(owner: str, g: int, saved: dict[str, Any]) -> None:
    """A torch.optim.Adam/AdamW group as an AdamSAGE group, in place (``saved`` is the loader's copy); ValueError
    naming the option where the saved optimizer computed something AdamSAGE does not."""
    where = f"{owner}.load_state_dict: the saved state (a torch.optim.Adam/AdamW one, param_groups[{g}])"
    for key, implemented, why in _TORCH_WHAT_OPTIONS:
        if saved.get(key, implemented) != implemented:
            raise ValueError(f"{where} was made with {key}={saved[key]!r}; {why}. {F.START_AFRESH}")
    decoupled = saved.get("decoupled_weight_decay")
    decay = saved.get("weight_decay", 0.0)
    if decoupled is not True and real_number(decay, tensor_ok=True) != 0.0:
        if decoupled is None:
            raise ValueError(
                f"{where} has weight_decay={decay!r} and does not say whether it is decoupled (AdamW's, as "
                "AdamSAGE's) or an L2 term added to the gradient (Adam's): torch releases before "
                "decoupled_weight_decay existed do not record it. If the state is torch.optim.AdamW's (or fairseq's "
                f"adam), set decoupled_weight_decay=True in each of its param_groups and load it again; else "
                f"{F.START_AFRESH}"
            )
        raise ValueError(
            f"{where} has weight_decay={decay!r} with decoupled_weight_decay=False (torch.optim.Adam: an L2 term "
            "added to the gradient); AdamSAGE's weight decay is decoupled (AdamW's), so the run would optimize "
            f"another objective. Convert a torch.optim.AdamW state, or {F.START_AFRESH}"
        )
    for key in (*(k for k, _, _ in _TORCH_WHAT_OPTIONS), "decoupled_weight_decay", *_TORCH_HOW_OPTIONS):
        saved.pop(key, None)


class SavedStateMixin:
    """The state-dict, pickling and copying half of ``_SAGEBase`` (which holds ``_second_moment``,
    ``_converts_torch_adam``, ``_named`` and ``_warned_no_grad``)."""

    def __getstate__(self) -> dict[str, Any]:
        """torch's (defaults, state, groups), plus what a copy needs of the rest: the once-only warning's flag and the
        tensors' names from ``name_parameters``, by position (a copy's tensors are new objects)."""
        state = super().__getstate__()
        state["_warned_no_grad"] = self._warned_no_grad
        by_id = getattr(self, "_names_by_id", None)
        if by_id:
            state["_names_by_position"] = [[by_id.get(id(p)) for p in g["params"]] for g in self.param_groups]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling and copying (``state`` from ``__getstate__``), and torch's load_state_dict (state and groups
        only): what ``__init__`` derived from the options is rebuilt where missing, never overwritten."""
        names = state.pop("_names_by_position", None)
        super().__setstate__(state)
        for group in self.param_groups:  # states saved before these options existed
            group.setdefault("sage_strength", 1.0)
            group.setdefault("sage", True)
            group.setdefault("impl", "auto")
            group.setdefault("capturable", False)
        self._plans = None  # copies, pickles and loaded states build their own (the tensors are others)
        if "_selects" not in self.__dict__:
            self._sage_params = self.defaults.setdefault("sage_params", "all")
            self._selects = selector(self._sage_params)  # a function: pickles do not carry it
            self._all_names = [n for g in self.param_groups for n in g.get("param_names", ())]
        self.__dict__.setdefault("_warned_no_grad", False)
        if names is not None:
            self._names_by_id = {
                id(p): n
                for group, group_names in zip(self.param_groups, names, strict=True)
                for p, n in zip(group["params"], group_names, strict=True)
                if n is not None
            }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load (the saved options are restored), after checks that nothing in the saved state can misfit:
        the choice of SAGE tensors must be the one the state was saved with (``SelectionChangedError``), every saved
        tensor must have its parameter's shape, and a state of another optimizer loads only where it converts
        (``STATE_DOC``: a torch.optim.Adam/AdamW state into ``AdamSAGE``; ``ValueError`` naming the key or option
        otherwise). Nothing is changed when a check fails, and the caller's dict is not modified (as in torch, its
        tensors become the state where their dtype and device fit). One exception to torch: ``impl`` stays this
        optimizer's (it names this machine's kernel, not part of the training). Loaded state tensors are in the
        compute dtype (torch would cast them to fp16/bf16 parameters, and fp16 flushes the second moment to zero),
        step counters are float32 0-dim tensors on the CPU (a triton step moves them to the parameters' device, as
        torch's fused and capturable optimizers keep them). ``capturable`` also stays this optimizer's."""
        saved_groups = [dict(g) for g in state_dict.get("param_groups", [])]
        saved_state = state_dict.get("state", {})
        self._check_selection(saved_groups)
        self._convert_saved_groups(saved_groups)
        self._check_saved_state(saved_groups, saved_state)
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            for key in ("sage_strength", "sage", "bias_correction", "beta3", "sage_params"):
                saved.setdefault(key, group[key])
            saved["impl"], saved["capturable"] = group["impl"], group["capturable"]
        super().load_state_dict({**state_dict, "param_groups": saved_groups})
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            for saved_id, p in zip(saved["params"], group["params"], strict=True):
                state = self.state.get(p)
                if not state:
                    continue
                dtype = F.compute_dtype(p.dtype)
                for key in ("exp_avg", self._second_moment, "exp_avg_sens"):
                    if key in state:  # from the saved tensor, not from torch's cast to the parameter's dtype
                        state[key] = saved_state[saved_id][key].to(device=p.device, dtype=dtype)
                state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)  # an int in older states
                if group["sage"] and "exp_avg_sens" not in state:  # from a plain-Adam state: start the EMA
                    state["exp_avg_sens"] = torch.zeros_like(p, dtype=dtype)

    def _convert_saved_groups(self, saved_groups: list[dict[str, Any]]) -> None:
        """Each saved group as a group of this optimizer, in place (the loader's copies): a SAGE group as it is, a
        torch.optim.Adam/AdamW one converted where this class converts it; anything else is refused. Then the
        options every group needs are there and in range."""
        owner = type(self).__name__
        for g, saved in enumerate(saved_groups):
            if "beta3" not in saved:
                if not (self._converts_torch_adam and "amsgrad" in saved):
                    takes = "only torch.optim.Adam/AdamW states" if self._converts_torch_adam else "no other one"
                    options = ", ".join(sorted(str(k) for k in saved if k != "params"))
                    raise ValueError(
                        f"{owner}.load_state_dict: the saved state is another optimizer's, not a SAGE state (its "
                        f"param_groups[{g}] has no beta3; its options: {options}). {owner} converts {takes} "
                        f"({STATE_DOC}): {F.START_AFRESH}"
                    )
                _convert_torch_adam_group(owner, g, saved)
            where = f"{owner}.load_state_dict: the saved param_groups[{g}]"
            missing = [key for key in _OPTIONS_NEEDED if key not in saved]
            if missing:
                raise ValueError(f"{where} has no {', '.join(missing)}: not a state this optimizer loads ({STATE_DOC})")
            try:
                check_options({k: v for k, v in saved.items() if k in (*RANGES, "betas")})
            except ValueError as exc:
                raise ValueError(f"{where} does not fit: {exc}. {F.START_AFRESH}") from None

    def _check_saved_state(self, saved_groups: list[dict[str, Any]], saved_state: dict[Any, Any]) -> None:
        """Every saved per-tensor state holds this optimizer's keys (a state saved by another optimizer lacks or adds
        some), a numeric step, and tensors of its parameter's shape."""
        owner = type(self).__name__
        needed = {"step", "exp_avg", self._second_moment}
        kept = sorted(needed | {"exp_avg_sens"})
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            for i, (saved_id, (name, p)) in enumerate(zip(saved["params"], self._named(group), strict=True)):
                entry = saved_state.get(saved_id, {})
                if not entry:
                    continue
                where = f"{owner}.load_state_dict: the saved state of {describe_param(name, f'group {g}, index {i}')}"
                unknown = sorted(set(map(str, entry)) - set(kept))
                missing = sorted(needed - set(entry))
                if unknown or missing:
                    found = [f"has {', '.join(unknown)}"] if unknown else []
                    found += [f"lacks {', '.join(missing)}"] if missing else []
                    raise ValueError(
                        f"{where} {' and '.join(found)}: it was saved by another optimizer ({owner} keeps "
                        f"{', '.join(kept)} per tensor; {STATE_DOC}). {F.START_AFRESH}"
                    )
                for key, value in entry.items():
                    if key == "step" and real_number(value, tensor_ok=True) is None:
                        raise ValueError(f"{where}: its step is {value!r}, not a number. {F.RESET_REMEDY}")
                    if not isinstance(value, Tensor) or key == "step":
                        continue
                    if value.shape != p.shape:
                        raise ValueError(
                            f"{where} does not fit: its {key} has shape {tuple(value.shape)}, the parameter needs "
                            f"shape {tuple(p.shape)}. The state was saved for another model or another parameter "
                            f"order: {F.RESET_REMEDY}"
                        )

    def _check_selection(self, saved_groups: list[dict[str, Any]]) -> None:
        groups = self.param_groups
        saved_choice = [g.get("sage_params") for g in saved_groups]
        mine = [g["sage_params"] for g in groups]
        layout = [(len(g["params"]), g["sage"]) for g in groups]
        saved_layout = [(len(g["params"]), g.get("sage")) for g in saved_groups]  # no "sage": a torch Adam state
        fits = len(saved_layout) == len(layout) and all(
            n == m and flag in (None, want) and choice in (None, current)
            for (n, flag), (m, want), choice, current in zip(saved_layout, layout, saved_choice, mine, strict=True)
        )
        if not fits:
            choice = next((c for c in saved_choice if c is not None), None)
            was = f"sage_params={choice!r}" if choice is not None else "another selection or model"
            raise SelectionChangedError(
                f"the saved optimizer state was made with {was}: groups (tensors, SAGE) {saved_layout}; this optimizer "
                f"has sage_params={mine[0]!r}: {layout}. A changed selection cannot be resumed: keep the selection "
                f"(to stop SAGE mid-run, keep it and set sage_strength 0), or {F.START_AFRESH}"
            )
