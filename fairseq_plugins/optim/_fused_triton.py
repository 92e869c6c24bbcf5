"""Fused Triton kernels of AdamW-SAGE and Adamax-SAGE for CUDA: one pass per entry over chunks of many tensors.

Per entry the kernel reads the parameter, the gradient and the three state tensors once and writes the parameter and
the state once (the foreach path makes about fifteen multi-tensor passes). One launch covers every tensor of a call
that shares a device and the parameter and gradient dtypes: each program takes one chunk of ``CHUNK`` entries of one
tensor, found through a chunk table (tensor, begin, end; built once per set of sizes and cached) and an address table
(five addresses per tensor). Arithmetic runs in fp32 for fp16/bf16/fp32 parameters (fp32 state, IEEE division and
square root, as torch's kernels) and in fp64 for fp64 parameters; the result is rounded once into the parameter's
dtype (round to nearest even). Where every address is a multiple of 16 bytes the whole blocks use vector accesses.

Every number that changes between steps (each tensor's step count, lr, alpha) reaches the kernel as tensor contents,
in one of two ways (the constexpr ``PLAN``):

- the list path (``step``, the functional API's): per call, the host computes each tensor's step size and sensitivity
  bias correction from its counter (on the CPU) and one float64 table travels to the device with the addresses in a
  single (blocking) copy;
- a launch plan (``PlanLaunch``, the optimizers' path, built by ``_plan``): the tables stay on the device between
  steps, the kernel reads each tensor's float32 counter on the device and computes its bias corrections in float64
  (``beta ** t`` as ``exp(t * log(beta))``, ``log(beta)`` from the host), so a step needs no host read and can be
  captured in a CUDA graph.

No argument is a Python number, so nothing is specialised on a value and the kernel compiles once per (parameter
dtype, gradient dtype, optimizer, SAGE or plain, aligned or not, path). fairseq's flat parameters (``--fp16`` hands
the optimizer one fp32 tensor of every weight), empty and one-element tensors need nothing special; tensors that are
not dense are updated through contiguous copies written back after.

Triton is imported on first use only (importing ``fairseq_plugins`` never imports it). CUDA tensors run the compiled
kernel; CPU tensors run Triton's interpreter when ``TRITON_INTERPRET=1`` is set (the tests do so: the interpreter
executes the same kernel source with numpy, slowly) and are refused otherwise.
"""

from __future__ import annotations

import functools
import importlib
import math
import operator
import os
import threading
from collections import OrderedDict, defaultdict
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # only for the annotation: _functional imports this module
    from ._functional import StepOptions

# bound by _load(): the kernel below is plain Python until Triton compiles (or interprets) it
triton: Any = None
tl: Any = None

BLOCK = 1024  # entries per vector operation of a program
CHUNK = 16 * BLOCK  # entries per program (one chunk of one tensor)
_ADDRESS_COLUMNS = 5  # per tensor: parameter, gradient, exp_avg, second moment, exp_avg_sens (0 when plain)
_PLAN_COLUMNS = 4  # a plan's table: parameter, exp_avg, second moment, exp_avg_sens (0 when plain); gradients apart
# a plan's float64 scalars, in the kernel's order (it reads them by position); log(0) = -inf gives 0 ** t = 0
PLAN_SLOTS = ("lr", "weight_decay", "beta1", "beta2", "beta3", "eps", "strength", "log_beta1", "log_beta2",
              "log_beta3", "bias_correction")  # fmt: skip
_CALL_SCALARS = 8  # scalars[0:8] below; then (step size, bc3, bc3 * eps^2) per tensor
_STATE_DTYPE = {torch.float32: torch.float32, torch.float16: torch.float32, torch.bfloat16: torch.float32,
                torch.float64: torch.float64}  # fmt: skip


def _sage_kernel(tensors, grads, chunks, scalars, counters, PARAM, GRAD, STATE, ADAMAX: tl.constexpr,
                 SAGE: tl.constexpr, FP64: tl.constexpr, BF16: tl.constexpr, ALIGNED: tl.constexpr,
                 PLAN: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """One chunk of one tensor. ``chunks``: int64 (tensor, begin, end) per program. PARAM, GRAD and STATE are
    one-element tensors that only carry the dtypes (never read).

    ``PLAN`` False (the list path, ``step``): ``tensors`` holds ``_ADDRESS_COLUMNS`` int64 addresses per tensor,
    ``scalars`` float64, ``_CALL_SCALARS`` then three per tensor (``_scalars``); ``grads`` and ``counters`` are unused.
    ``PLAN`` True (a launch plan, ``PlanLaunch``): ``tensors`` holds ``_PLAN_COLUMNS`` addresses per tensor, ``grads``
    the gradients' addresses, ``counters`` the float32 step counters (already advanced for this step), ``scalars`` the
    group's options (``PLAN_SLOTS``): each tensor's bias corrections are computed here, in float64."""
    chunk = tl.program_id(0)
    t = tl.load(chunks + 3 * chunk)
    begin = tl.load(chunks + 3 * chunk + 1)
    end = tl.load(chunks + 3 * chunk + 2)
    ctype = STATE.dtype.element_ty  # the compute dtype is the state's: fp32, or fp64 for fp64 parameters
    if PLAN:
        row = tensors + 4 * t  # _PLAN_COLUMNS (a kernel reads no global but constexprs)
        p_ptr = tl.load(row).to(PARAM.dtype)  # an address -> a pointer to the parameter's dtype
        g_ptr = tl.load(grads + t).to(GRAD.dtype)
        m_ptr = tl.load(row + 1).to(STATE.dtype)
        v_ptr = tl.load(row + 2).to(STATE.dtype)
        s_ptr = tl.load(row + 3).to(STATE.dtype)
        # PLAN_SLOTS, in float64 as the list path computes them on the host (beta ** t as exp(t * log(beta)))
        lr = tl.load(scalars + 0)
        weight_decay = tl.load(scalars + 1)
        beta1 = tl.load(scalars + 2)
        beta2 = tl.load(scalars + 3)
        beta3 = tl.load(scalars + 4)
        eps64 = tl.load(scalars + 5)
        strength = tl.load(scalars + 6)
        log_beta1 = tl.load(scalars + 7)
        log_beta2 = tl.load(scalars + 8)
        log_beta3 = tl.load(scalars + 9)
        corrected = tl.load(scalars + 10)  # 1 with the sensitivity's bias correction, else 0
        count = tl.load(counters + t).to(tl.float64)
        bc3_64 = tl.where(corrected != 0.0, 1.0 - tl.exp(count * log_beta3), 1.0)
        if ADAMAX:
            size64 = lr
            decay64 = weight_decay
        else:
            size64 = lr * tl.sqrt(1.0 - tl.exp(count * log_beta2)) / (1.0 - tl.exp(count * log_beta1))
            decay64 = 1.0 - lr * weight_decay
        w1 = (1.0 - beta1).to(ctype)
        b2 = beta2.to(ctype)
        w2 = (1.0 - beta2).to(ctype)
        w3 = (1.0 - beta3).to(ctype)
        eps = eps64.to(ctype)
        decay = decay64.to(ctype)
        alpha = strength.to(ctype)
        one_minus_alpha = (1.0 - strength).to(ctype)
        step_size = size64.to(ctype)
        bc3 = bc3_64.to(ctype)
        floor = (bc3_64 * eps64 * eps64).to(ctype)
    else:
        row = tensors + 5 * t  # _ADDRESS_COLUMNS
        p_ptr = tl.load(row).to(PARAM.dtype)
        g_ptr = tl.load(row + 1).to(GRAD.dtype)
        m_ptr = tl.load(row + 2).to(STATE.dtype)
        v_ptr = tl.load(row + 3).to(STATE.dtype)
        s_ptr = tl.load(row + 4).to(STATE.dtype)
        w1 = tl.load(scalars + 0).to(ctype)  # 1 - beta1
        b2 = tl.load(scalars + 1).to(ctype)
        w2 = tl.load(scalars + 2).to(ctype)  # 1 - beta2
        w3 = tl.load(scalars + 3).to(ctype)  # 1 - beta3
        eps = tl.load(scalars + 4).to(ctype)
        decay = tl.load(scalars + 5).to(ctype)  # AdamW: 1 - lr * weight_decay; Adamax: weight_decay
        alpha = tl.load(scalars + 6).to(ctype)
        one_minus_alpha = tl.load(scalars + 7).to(ctype)
        # per tensor, after the _CALL_SCALARS: the step size (AdamW: lr * sqrt(bc2) / bc1; Adamax: lr), bc3, bc3*eps^2
        step_size = tl.load(scalars + 8 + 3 * t).to(ctype)
        bc3 = tl.load(scalars + 8 + 3 * t + 1).to(ctype)
        floor = tl.load(scalars + 8 + 3 * t + 2).to(ctype)
    if ALIGNED:  # every address a multiple of 16 bytes (the host checked): vector loads and stores
        p_ptr = tl.multiple_of(p_ptr, 16)
        g_ptr = tl.multiple_of(g_ptr, 16)
        m_ptr = tl.multiple_of(m_ptr, 16)
        v_ptr = tl.multiple_of(v_ptr, 16)
        s_ptr = tl.multiple_of(s_ptr, 16)
    begin = tl.multiple_of(begin, BLOCK)  # chunks start at multiples of CHUNK
    full_end = begin + (end - begin) // BLOCK * BLOCK
    for TAIL in tl.static_range(2):  # the whole blocks without a mask, then the last partial block with one
        if TAIL:
            lo = full_end
            hi = end
        else:
            lo = begin
            hi = full_end
        for start in tl.range(lo, hi, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            if TAIL:
                mask = idx < end
            else:  # a constant mask: the loads and stores stay vectorised
                mask = tl.full([BLOCK], 1, tl.int1)
            g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(ctype)
            p = tl.load(p_ptr + idx, mask=mask, other=0.0).to(ctype)
            m = tl.load(m_ptr + idx, mask=mask, other=0.0)
            v = tl.load(v_ptr + idx, mask=mask, other=1.0)  # 1 in the masked lanes: no 0/0 there
            m = m + w1 * (g - m)
            if ADAMAX:
                decayed = b2 * v
                grad_floor = tl.abs(g) + eps
                # a NaN stays NaN (as torch.maximum): a comparison with NaN is false
                v = tl.where((decayed > grad_floor) | (decayed != decayed), decayed, grad_floor)
                if FP64:
                    update = m / (v + eps) + decay * p
                else:
                    update = tl.div_rn(m, v + eps) + decay * p
            else:
                v = b2 * v + w2 * g * g
                if FP64:
                    update = m / (tl.sqrt(v) + eps)
                else:
                    update = tl.div_rn(m, tl.sqrt_rn(v) + eps)
            if SAGE:
                # r = (|bc3 * I - Ibar| + bc3 * eps^2) / (Ibar + bc3 * eps^2), I = |p * g|: as _functional
                s = tl.load(s_ptr + idx, mask=mask, other=1.0)
                sens = tl.abs(p * g)
                s = s + w3 * (sens - s)
                if FP64:
                    r = (tl.abs(bc3 * sens - s) + floor) / (s + floor)
                else:
                    r = tl.div_rn(tl.abs(bc3 * sens - s) + floor, s + floor)
                update = update * (alpha * r + one_minus_alpha)
                tl.store(s_ptr + idx, s, mask=mask)
            tl.store(m_ptr + idx, m, mask=mask)
            tl.store(v_ptr + idx, v, mask=mask)
            if ADAMAX:
                p = p - step_size * update
            else:
                p = p * decay - step_size * update
            if BF16:  # round to nearest even by hand, NaN stays NaN (as torch; the interpreter's cast truncates)
                bits = p.to(tl.uint32, bitcast=True)
                rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
                bits = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, (bits >> 16) | 0x40, rounded)
                tl.store(p_ptr + idx, bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
            else:
                tl.store(p_ptr + idx, p.to(PARAM.dtype.element_ty), mask=mask)


_lock = threading.Lock()
_kernels: dict[bool, Any] = {}  # interpreted? -> the kernel
_import_error: str | None = None


def _load(interpret: bool) -> Any:
    """The kernel wrapped by Triton's interpreter (CPU tensors) or its JIT compiler (CUDA tensors: whatever
    TRITON_INTERPRET says, since the interpreter cannot read device memory through the address table)."""
    global triton, tl
    with _lock:
        if interpret not in _kernels:
            import triton as triton_module
            import triton.language as language

            triton, tl = triton_module, language
            if interpret:
                from triton.runtime.interpreter import InterpretedFunction

                _kernels[interpret] = InterpretedFunction(_sage_kernel)
            else:  # the type carriers are never dereferenced: their alignment must not make variants
                from triton.runtime.jit import JITFunction

                _kernels[interpret] = JITFunction(_sage_kernel, do_not_specialize=["PARAM", "GRAD", "STATE"])
        return _kernels[interpret]


def interpreting() -> bool:
    """TRITON_INTERPRET is on: CPU tensors then run the kernel in Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def error() -> str | None:
    """Why the kernel cannot run here, or None: Triton is missing, or there is neither a CUDA device nor
    TRITON_INTERPRET (``_functional``'s ``unavailable`` for ``impl="triton"``)."""
    global _import_error
    if _import_error is None and triton is None:
        try:
            importlib.import_module("triton")
        except ImportError as exc:
            _import_error = f"Triton is not installed ({exc}); pip install triton (CUDA builds of torch bring it)"
    if _import_error is not None:
        return _import_error
    if not torch.cuda.is_available() and not interpreting():
        return "it runs on CUDA tensors and there is no CUDA device (TRITON_INTERPRET=1 runs it on CPU tensors)"
    return None


def available() -> bool:
    return error() is None


_carriers: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _carrier(dtype: torch.dtype, device: torch.device) -> Tensor:
    """A one-element tensor whose only use is to hand the kernel a pointer type."""
    key = (device, dtype)
    if key not in _carriers:
        _carriers[key] = torch.zeros(1, dtype=dtype, device=device)
    return _carriers[key]


_CHUNK_CACHE_SIZE = 16
_chunk_tables: OrderedDict[tuple, Tensor] = OrderedDict()


def _chunk_table(device: torch.device, numels: list[int]) -> Tensor:
    """int64 (tensor, begin, end) per chunk on ``device``; it follows from the sizes alone, so it is built once per
    group of tensors and reused at every step."""
    key = (device, tuple(numels))
    table = _chunk_tables.get(key)
    if table is None:
        rows = [(t, begin, min(begin + CHUNK, n)) for t, n in enumerate(numels) for begin in range(0, n, CHUNK)]
        table = _chunk_tables[key] = _to_device(torch.tensor(rows, dtype=torch.int64).reshape(-1), device)
        if len(_chunk_tables) > _CHUNK_CACHE_SIZE:
            _chunk_tables.popitem(last=False)
    _chunk_tables.move_to_end(key)
    return table


def _scalars(steps: list[Tensor], adamax: bool, options: StepOptions) -> list[float]:
    """The call's scalars, then per tensor (step size, bc3, bc3 * eps^2) from its step count: in Python doubles, as
    the fused CPU path computes them (the counters live on the CPU; one stack, one read)."""
    o = options
    try:
        counts = torch.stack(steps).reshape(-1).tolist()  # one op for the usual 0-dim step counters
    except RuntimeError:  # counters of several shapes or devices
        counts = [float(s) for s in steps]
    per_count = {}  # step count -> its three scalars: tensors usually share a count
    for t in set(counts):
        bc3 = 1.0 - o.beta3**t if o.bias_correction else 1.0
        size = o.lr if adamax else o.lr * math.sqrt(1.0 - o.beta2**t) / (1.0 - o.beta1**t)
        per_count[t] = (size, bc3, bc3 * o.eps * o.eps)
    decay = o.weight_decay if adamax else 1.0 - o.lr * o.weight_decay
    values = [1.0 - o.beta1, o.beta2, 1.0 - o.beta2, 1.0 - o.beta3, o.eps, decay, o.strength, 1.0 - o.strength]
    for t in counts:
        values.extend(per_count[t])
    return values


def _launch_table(scalars: list[float], columns: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor, bool]:
    """The scalars and the address table (``_ADDRESS_COLUMNS`` int64 per tensor) in one buffer, copied to ``device``
    in one transfer; returned as two views of it (float64 scalars, int64 addresses), and whether every address is a
    multiple of 16 bytes (the kernel then uses vector accesses)."""
    addresses = torch.tensor(columns, dtype=torch.int64).t().reshape(-1)
    aligned = not bool(torch.any(addresses % 16))
    head = torch.tensor(scalars, dtype=torch.float64).view(torch.int64)
    pad = head.new_zeros(head.numel() % 2)  # the addresses start 16-byte aligned
    buffer = torch.cat([head, pad, addresses]).to(device)
    start = head.numel() + pad.numel()
    return buffer[: head.numel()].view(torch.float64), buffer[start:], aligned


def _dense(tensors: list[Tensor], written_back: list[tuple[Tensor, Tensor]] | None) -> list[Tensor]:
    """The tensors, each replaced by a contiguous copy where it is not contiguous (recorded in ``written_back`` when
    the kernel writes it, to be copied back after)."""
    if all(map(Tensor.is_contiguous, tensors)):
        return tensors
    out = []
    for t in tensors:
        copy = t if t.is_contiguous() else t.contiguous()
        if copy is not t and written_back is not None:
            written_back.append((t, copy))
        out.append(copy)
    return out


def _check_group(i: int, members: list[list[Tensor]], device: torch.device, state_dtype: torch.dtype | None) -> None:
    """The last line before raw addresses (callers check earlier, with parameter names): every tensor of the group on
    one device, the state in the compute dtype, and the kernel able to run there."""
    p = members[0][0]
    if state_dtype is None:
        raise ValueError(f"triton SAGE step: tensor {i} is {p.dtype}; the kernel takes fp16, bf16, fp32 and fp64")
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"the triton SAGE kernel runs on CUDA tensors; tensor {i} is on {device} (TRITON_INTERPRET=1 runs it in "
            "Triton's interpreter, for tests)"
        )
    for k, tensors in enumerate(members[1:]):
        if {t.device for t in tensors} != {device} or (k > 0 and {t.dtype for t in tensors} != {state_dtype}):
            raise ValueError(
                f"triton SAGE step: the tensors of {p.dtype} parameters on {device} need their gradients there and "
                f"their state in {state_dtype} there (list {k + 1} has {[(t.dtype, t.device) for t in tensors][:3]})"
            )


def _launch(kernel: Any, grid: tuple[int], args: tuple, constants: dict[str, Any]) -> None:
    """The one kernel launch (a function of its own so that tests can see every launch's arguments)."""
    kernel[grid](*args, **constants)


def _constants(adamax: bool, sage: bool, dtype: torch.dtype, aligned: bool, plan: bool) -> dict[str, Any]:
    """The kernel's constexprs: the variant it compiles (the dtypes come as the carriers' pointer types)."""
    return dict(ADAMAX=bool(adamax), SAGE=bool(sage), FP64=_STATE_DTYPE[dtype] == torch.float64,
                BF16=dtype == torch.bfloat16, ALIGNED=bool(aligned), PLAN=bool(plan), BLOCK=BLOCK)  # fmt: skip


def _to_device(host: Tensor, device: torch.device) -> Tensor:
    """A CPU tensor copied to ``device`` without a host-device synchronisation: from pinned memory, asynchronously
    (torch keeps the pinned block until the copy is done)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device, copy=True)


def _log(beta: float) -> float:
    """log(beta) for the kernel's beta ** t = exp(t * log(beta)); beta = 0 gives -inf, so 0 ** t = 0 for t >= 1."""
    return math.log(beta) if beta > 0.0 else -math.inf


class PlanLaunch:
    """One launch of a launch plan (``_plan``): the tensors of one (device, parameter dtype, gradient dtype) of a
    param group, with everything that does not change between steps resident on the device and built once: the
    address table (parameter, or its dense copy where the parameter is not dense; the state), the chunk table, the
    float32 step counters (``members.counters``, advanced by the caller) and the group's options (``PLAN_SLOTS``,
    rewritten only where one changed: one ``fill_``, or a ``copy_`` from a tensor ``lr`` or strength). A step uploads
    the gradients' addresses only where they changed, and never reads a device value on the host."""

    def __init__(self, members: Any, adamax: bool):
        self.device = device = members.device
        self.members = members
        n = len(members.params)
        columns = [members.kernel_params, members.exp_avgs, members.seconds]
        addresses = [list(map(Tensor.data_ptr, column)) for column in columns]
        addresses.append(list(map(Tensor.data_ptr, members.sens)) if members.sens is not None else [0] * n)
        rows = [address for row in zip(*addresses, strict=True) for address in row]
        self.table = _to_device(torch.tensor(rows, dtype=torch.int64), device)
        self.state_aligned = not any(address % 16 for address in rows)
        self.chunks = _chunk_table(device, [p.numel() for p in members.params])
        self.grid = (self.chunks.numel() // 3,)
        self.grads = torch.zeros(n, dtype=torch.int64, device=device)
        self.grad_ptrs: list[int] | None = None
        self.grads_aligned = True
        self.scalars = torch.zeros(len(PLAN_SLOTS), dtype=torch.float64, device=device)
        self.slots = self.scalars.unbind()  # 0-dim views, one per option
        self.values: list[Any] = [None] * len(PLAN_SLOTS)  # the Python number each slot holds; None: unknown
        self.options_key: tuple | None = None  # the options other than lr and strength that the slots hold
        dtype, grad_dtype = members.dtype, members.grad_dtype
        state_dtype = _STATE_DTYPE[dtype]
        self.carriers = (_carrier(dtype, device), _carrier(grad_dtype, device), _carrier(state_dtype, device))
        sage = members.sens is not None
        self.constants = {aligned: _constants(adamax, sage, dtype, aligned, plan=True) for aligned in (False, True)}
        self.kernel = _load(device.type != "cuda")
        self.shadows = members.shadows  # (parameter, its dense copy) where a parameter is not dense

    def set_grads(self, grads: list[Tensor], pointers: list[int], capturing: bool) -> None:
        """The gradients' addresses on the device, uploaded only where they changed since the last step."""
        if pointers == self.grad_ptrs:
            return
        if capturing:
            raise RuntimeError(
                "SAGE capturable=True: the gradients are not where they were in the step before the capture; a "
                "captured step replays with the addresses it was captured with, so the gradients must be static "
                "tensors (as for torch's capturable optimizers): run one step with them before capturing"
            )
        host = torch.tensor(pointers, dtype=torch.int64)
        if self.device.type == "cuda":
            self.grads.copy_(host.pin_memory(), non_blocking=True)
        else:
            self.grads.copy_(host)
        self.grad_ptrs = pointers
        self.grads_aligned = functools.reduce(operator.or_, pointers, 0) % 16 == 0

    def set_options(self, group: dict[str, Any], capturing: bool) -> None:
        """The group's options into their slots, where they changed (a tensor lr or strength: copied at every step,
        as its value may have changed in place)."""
        key = (group["weight_decay"], *group["betas"], group["beta3"], group["eps"], group["bias_correction"])
        if key != self.options_key:  # rarely: these options stay as they are in a run
            weight_decay, beta1, beta2, beta3, eps, corrected = key
            fixed = {"weight_decay": weight_decay, "beta1": beta1, "beta2": beta2, "beta3": beta3, "eps": eps,
                     "log_beta1": _log(beta1), "log_beta2": _log(beta2), "log_beta3": _log(beta3),
                     "bias_correction": 1.0 if corrected else 0.0}  # fmt: skip
            for name, value in fixed.items():
                self._put(PLAN_SLOTS.index(name), name, value, capturing)
            self.options_key = key
        self._put(0, "lr", group["lr"], capturing)
        self._put(6, "sage_strength", group["sage_strength"], capturing)

    def _put(self, slot: int, name: str, value: Any, capturing: bool) -> None:
        if isinstance(value, Tensor):
            if value.device.type != "cpu" or self.device.type == "cpu":
                self.slots[slot].copy_(value.reshape(()))  # on the device: no host read
                self.values[slot] = None
                return
            if capturing:
                raise RuntimeError(
                    f"SAGE capturable=True: {name} is a CPU tensor, which a captured step cannot read; put it on "
                    f"{self.device} (a tensor there is read by the step, also when it is replayed)"
                )
            value = float(value)  # a CPU tensor: read on the host, no device synchronisation
        if value != self.values[slot]:
            self.slots[slot].fill_(value)  # a Python number: a kernel argument, no copy (captured as it is)
            self.values[slot] = value

    def launch(self) -> None:
        """The kernel over every chunk (the caller has advanced the counters and set gradients and options)."""
        if self.shadows:
            torch._foreach_copy_([s for _, s in self.shadows], [p for p, _ in self.shadows])
        if self.grid[0]:
            args = (self.table, self.grads, self.chunks, self.scalars, self.members.counters, *self.carriers)
            constants = self.constants[self.state_aligned and self.grads_aligned]
            if self.device.type == "cuda" and torch.cuda.current_device() != self.device.index:
                with torch.cuda.device(self.device):  # Triton launches on the current device
                    _launch(self.kernel, self.grid, args, constants)
            else:
                _launch(self.kernel, self.grid, args, constants)
        if self.shadows:
            torch._foreach_copy_([p for p, _ in self.shadows], [s for _, s in self.shadows])


def step(params, grads, exp_avgs, seconds, exp_avg_sens, steps, /, *, adamax: bool, options: StepOptions) -> None:
    """One AdamW-SAGE (``adamax`` False) or Adamax-SAGE update of every tensor, by ``_functional``'s calling
    convention: aligned lists, ``seconds`` the ``exp_avg_sq`` or ``exp_inf`` tensors, ``exp_avg_sens`` None for the
    plain update (multiplier 1), ``steps`` already incremented, scalars in ``options`` (a ``StepOptions``). One launch
    per (device, parameter dtype, gradient dtype); every tensor is checked before the first launch."""
    n = len(params)
    lists = [params, grads, exp_avgs, seconds] + ([exp_avg_sens] if exp_avg_sens is not None else [])
    if any(len(items) != n for items in [*lists, steps]):
        raise ValueError(f"triton SAGE step: lists of {[len(x) for x in [*lists, steps]]} items for {n} parameters")
    numels = list(map(Tensor.numel, params))  # map over the method: the per-tensor Python cost is the host's
    for k, tensors in enumerate(lists[1:]):
        sizes = list(map(Tensor.numel, tensors))
        if sizes != numels:
            i = next(i for i, (a, b) in enumerate(zip(sizes, numels, strict=True)) if a != b)
            raise ValueError(f"triton SAGE step: tensor {i} has {numels[i]} entries, list {k + 1} holds {sizes[i]}")
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, (p, g, numel) in enumerate(zip(params, grads, numels, strict=True)):
        if numel:  # empty tensors: nothing to do
            buckets[(p.device, p.dtype, g.dtype)].append(i)
    groups = []
    for (device, dtype, grad_dtype), idx in buckets.items():
        members = lists if len(idx) == n else [[tensors[i] for i in idx] for tensors in lists]
        _check_group(idx[0], members, device, _STATE_DTYPE.get(dtype))
        groups.append((device, dtype, grad_dtype, idx, members))
    for device, dtype, grad_dtype, idx, members in groups:
        written_back: list[tuple[Tensor, Tensor]] = []  # (tensor, the contiguous copy the kernel updates)
        dense = [_dense(tensors, None if k == 1 else written_back) for k, tensors in enumerate(members)]
        columns = [list(map(Tensor.data_ptr, tensors)) for tensors in dense]
        if exp_avg_sens is None:
            columns.append([0] * len(idx))
        chunks = _chunk_table(device, [numels[i] for i in idx])
        group_steps = steps if len(idx) == n else [steps[i] for i in idx]
        scalars, addresses, aligned = _launch_table(_scalars(group_steps, adamax, options), columns, device)
        state_dtype = _STATE_DTYPE[dtype]
        carriers = (_carrier(dtype, device), _carrier(grad_dtype, device), _carrier(state_dtype, device))
        constants = _constants(adamax, exp_avg_sens is not None, dtype, aligned, plan=False)
        args = (addresses, addresses, chunks, scalars, scalars, *carriers)  # no gradient or counter table here
        if device.type == "cuda":
            with torch.cuda.device(device):  # Triton launches on the current device
                _launch(_load(False), (chunks.numel() // 3,), args, constants)
        else:
            _launch(_load(True), (chunks.numel() // 3,), args, constants)
        for t, copy in written_back:
            t.copy_(copy)


def adam_sage(params, grads, exp_avgs, exp_avg_sqs, exp_avg_sens, steps, /, *, options: StepOptions) -> None:
    """AdamW-SAGE through the fused kernel (``_functional``'s ``Kernel`` convention)."""
    step(params, grads, exp_avgs, exp_avg_sqs, exp_avg_sens, steps, adamax=False, options=options)


def adamax_sage(params, grads, exp_avgs, exp_infs, exp_avg_sens, steps, /, *, options: StepOptions) -> None:
    """Adamax-SAGE through the fused kernel (``_functional``'s ``Kernel`` convention)."""
    step(params, grads, exp_avgs, exp_infs, exp_avg_sens, steps, adamax=True, options=options)
