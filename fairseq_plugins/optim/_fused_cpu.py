"""Fused CPU kernels of AdamW-SAGE and Adamax-SAGE: one pass per entry, no temporaries.

Per entry the kernel reads the parameter, the gradient, the two moments and the smoothed sensitivity once and writes the
parameter and the three state values once (9 memory passes; fused AdamW makes 7). Arithmetic runs in registers in fp32
for fp16/bf16/fp32 parameters (fp32 state) and in fp64 for fp64 parameters. All tensors of a call are cut into chunks
that OpenMP threads share, so one call covers a whole parameter group.

The kernel is a few lines of C++ with a plain C interface (no torch headers): it is compiled with the system C++
compiler on first use (about a second) into a per-user cache directory and loaded with ctypes, which releases the GIL
during the call. Every scalar (bias corrections, lr, step counts) is an argument, so nothing is recompiled when they
change. ``FAIRSEQ_SAGE_CACHE`` sets the cache directory, ``CXX`` the compiler. When no compiler is available,
``load()`` returns None and the caller falls back to the single-tensor kernels.

Only contiguous tensors whose parameter and gradient share a dtype (fp32, fp64, fp16, bf16) go through the kernel;
``eligible`` says which; the caller routes the others to the single-tensor path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # only for the annotation: _functional imports this module
    from ._functional import StepOptions

_SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <omp.h>

namespace {

// parameter/gradient storage types, converted to and from the compute type in registers
struct bf16 { uint16_t x; };

template <typename S, typename C> struct Conv;
template <typename C> struct Conv<C, C> {
  static inline C load(const C* p, int64_t i) { return p[i]; }
  static inline void store(C* p, int64_t i, C v) { p[i] = v; }
};
template <> struct Conv<_Float16, float> {
  static inline float load(const _Float16* p, int64_t i) { return (float)p[i]; }
  static inline void store(_Float16* p, int64_t i, float v) { p[i] = (_Float16)v; }  // round to nearest even
};
template <> struct Conv<bf16, float> {
  static inline float load(const bf16* p, int64_t i) {
    uint32_t u = (uint32_t)p[i].x << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static inline void store(bf16* p, int64_t i, float v) {  // round to nearest even, NaN stays NaN (as torch)
    uint32_t u;
    std::memcpy(&u, &v, 4);
    uint16_t nan = (uint16_t)((u >> 16) | 0x40u);
    uint16_t rne = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    p[i].x = ((u & 0x7fffffffu) > 0x7f800000u) ? nan : rne;
  }
};

struct Chunk { int64_t tensor, begin, end; };

// per-call scalars; per-tensor ones (step size, bc3) arrive as arrays
struct Scalars {
  double beta1, beta2, beta3, eps, lr, weight_decay, strength;
};

// The applied SAGE multiplier 1 + alpha * (r - 1) of one entry; updates its smoothed sensitivity s in place.
// r = (|bc3 * I - Ibar| + bc3 * eps^2) / (Ibar + bc3 * eps^2), I = |p * g|, Ibar = s + (1 - beta3) * (I - s).
template <typename C>
inline C sage_multiplier(C pi, C gi, C& s, C w3, C cbc3, C floor, C alpha, C one_minus_alpha) {
  const C sens = std::fabs(pi * gi);
  const C si = s + w3 * (sens - s);
  const C r = (std::fabs(cbc3 * sens - si) + floor) / (si + floor);
  s = si;
  return alpha * r + one_minus_alpha;
}

template <typename S, typename C, bool SAGE>
inline void adam_range(S* __restrict p, const S* __restrict g, C* __restrict m, C* __restrict v, C* __restrict s,
                       int64_t begin, int64_t end, const Scalars& k, double step_size, double bc3) {
  const C w1 = (C)(1.0 - k.beta1), b2 = (C)k.beta2, w2 = (C)(1.0 - k.beta2), w3 = (C)(1.0 - k.beta3);
  const C eps = (C)k.eps, floor = (C)(bc3 * k.eps * k.eps), cbc3 = (C)bc3;
  const C alpha = (C)k.strength, one_minus_alpha = (C)(1.0 - k.strength);
  const C decay = (C)(1.0 - k.lr * k.weight_decay), neg_step = (C)(-step_size);
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const C gi = Conv<S, C>::load(g, i), pi = Conv<S, C>::load(p, i);
    const C mi = m[i] + w1 * (gi - m[i]);
    const C vi = b2 * v[i] + w2 * gi * gi;
    C upd = mi / (std::sqrt(vi) + eps);
    if (SAGE) upd *= sage_multiplier(pi, gi, s[i], w3, cbc3, floor, alpha, one_minus_alpha);
    m[i] = mi;
    v[i] = vi;
    Conv<S, C>::store(p, i, pi * decay + neg_step * upd);
  }
}

template <typename S, typename C, bool SAGE>
inline void adamax_range(S* __restrict p, const S* __restrict g, C* __restrict m, C* __restrict u, C* __restrict s,
                         int64_t begin, int64_t end, const Scalars& k, double step_size, double bc3) {
  const C w1 = (C)(1.0 - k.beta1), b2 = (C)k.beta2, w3 = (C)(1.0 - k.beta3);
  const C eps = (C)k.eps, floor = (C)(bc3 * k.eps * k.eps), cbc3 = (C)bc3, wd = (C)k.weight_decay;
  const C alpha = (C)k.strength, one_minus_alpha = (C)(1.0 - k.strength), neg_lr = (C)(-step_size);
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const C gi = Conv<S, C>::load(g, i), pi = Conv<S, C>::load(p, i);
    const C mi = m[i] + w1 * (gi - m[i]);
    const C decayed = b2 * u[i], ag = std::fabs(gi) + eps;
    const C ui = (decayed > ag || decayed != decayed) ? decayed : ag;  // a NaN stays NaN, as torch.maximum
    C upd = mi / (ui + eps) + wd * pi;
    if (SAGE) upd *= sage_multiplier(pi, gi, s[i], w3, cbc3, floor, alpha, one_minus_alpha);
    m[i] = mi;
    u[i] = ui;
    Conv<S, C>::store(p, i, pi + neg_lr * upd);
  }
}

template <typename S, typename C, bool ADAMAX>
void run(int64_t n, void** params, void** grads, void** ms, void** vs, void** ss, const int64_t* numels,
         const double* step_sizes, const double* bc3s, const Scalars& k, int64_t nthreads) {
  const int64_t chunk = 1 << 15;  // 128 KiB of fp32 per stream; handed out dynamically (robust to a busy core)
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (int64_t t = 0; t < n; ++t) {
    total += numels[t];
    for (int64_t b = 0; b < numels[t]; b += chunk)
      chunks.push_back({t, b, b + chunk < numels[t] ? b + chunk : numels[t]});
  }
  if (total < 4 * chunk || nthreads < 1) nthreads = 1;
  const int64_t nchunks = (int64_t)chunks.size();
#pragma omp parallel for schedule(dynamic) num_threads(nthreads)
  for (int64_t c = 0; c < nchunks; ++c) {
    const Chunk& ch = chunks[c];
    const int64_t t = ch.tensor;
    S* p = (S*)params[t];
    const S* g = (const S*)grads[t];
    C *m = (C*)ms[t], *v = (C*)vs[t], *s = ss ? (C*)ss[t] : nullptr;
    if (ADAMAX) {
      if (s) adamax_range<S, C, true>(p, g, m, v, s, ch.begin, ch.end, k, step_sizes[t], bc3s[t]);
      else adamax_range<S, C, false>(p, g, m, v, s, ch.begin, ch.end, k, step_sizes[t], bc3s[t]);
    } else {
      if (s) adam_range<S, C, true>(p, g, m, v, s, ch.begin, ch.end, k, step_sizes[t], bc3s[t]);
      else adam_range<S, C, false>(p, g, m, v, s, ch.begin, ch.end, k, step_sizes[t], bc3s[t]);
    }
  }
}

}  // namespace

// dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16. Returns 0, or -1 for an unknown dtype.
extern "C" int sage_step(int adamax, int dtype, int64_t n, void** params, void** grads, void** ms, void** vs,
                         void** ss, const int64_t* numels, const double* step_sizes, const double* bc3s,
                         double beta1, double beta2, double beta3, double eps, double lr, double weight_decay,
                         double strength, int64_t nthreads) {
  const Scalars k{beta1, beta2, beta3, eps, lr, weight_decay, strength};
#define SAGE_RUN(S, C)                                                                    \
  (adamax ? run<S, C, true>(n, params, grads, ms, vs, ss, numels, step_sizes, bc3s, k, nthreads) \
          : run<S, C, false>(n, params, grads, ms, vs, ss, numels, step_sizes, bc3s, k, nthreads))
  switch (dtype) {
    case 0: SAGE_RUN(float, float); return 0;
    case 1: SAGE_RUN(double, double); return 0;
    case 2: SAGE_RUN(_Float16, float); return 0;
    case 3: SAGE_RUN(bf16, float); return 0;
  }
  return -1;
#undef SAGE_RUN
}

// The same step with each tensor's step size and bc3 computed here from its step counter (float32, already advanced),
// by the formulas and in the order of the list path's Python (_torch_kernels.bias_corrections): the same doubles.
extern "C" int sage_step_counted(int adamax, int dtype, int64_t n, void** params, void** grads, void** ms, void** vs,
                                 void** ss, const int64_t* numels, const float* steps, double beta1, double beta2,
                                 double beta3, double eps, double lr, double weight_decay, double strength,
                                 int bias_correction, int64_t nthreads) {
  std::vector<double> step_sizes(n), bc3s(n);
  for (int64_t t = 0; t < n; ++t) {
    const double count = (double)steps[t];
    const double bc1 = 1.0 - std::pow(beta1, count), bc2 = 1.0 - std::pow(beta2, count);
    step_sizes[t] = adamax ? lr : lr * std::sqrt(bc2) / bc1;
    bc3s[t] = bias_correction ? 1.0 - std::pow(beta3, count) : 1.0;
  }
  return sage_step(adamax, dtype, n, params, grads, ms, vs, ss, numels, step_sizes.data(), bc3s.data(), beta1, beta2,
                   beta3, eps, lr, weight_decay, strength, nthreads);
}
"""

_DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None  # why the kernel is unavailable, once a build was tried


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """-march=native code runs only on CPUs with the same features: they are part of the cache key."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def cache_dir() -> Path:
    root = os.environ.get("FAIRSEQ_SAGE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fairseq_sage"


def library_path(cxx: str) -> Path:
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    key = hashlib.sha256("\0".join([_SOURCE, " ".join(_FLAGS), cxx, version, _cpu_signature()]).encode()).hexdigest()
    return cache_dir() / f"sage_cpu_{key[:16]}.so"


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    target = library_path(cxx)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src = Path(tmp) / "sage_cpu.cpp"
            src.write_text(_SOURCE)
            out = Path(tmp) / target.name
            proc = subprocess.run([cxx, *_FLAGS, str(src), "-o", str(out)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cxx} failed:\n{proc.stderr[-2000:]}")
            os.replace(out, target)  # atomic: concurrent processes see either nothing or the whole library
    lib = ctypes.CDLL(str(target))
    lib.sage_step.restype = ctypes.c_int
    lib.sage_step.argtypes = (
        [ctypes.c_int, ctypes.c_int, ctypes.c_int64] + [ctypes.c_void_p] * 8 + [ctypes.c_double] * 7 + [ctypes.c_int64]
    )
    lib.sage_step_counted.restype = ctypes.c_int
    lib.sage_step_counted.argtypes = (
        [ctypes.c_int, ctypes.c_int, ctypes.c_int64]
        + [ctypes.c_void_p] * 7
        + [ctypes.c_double] * 7
        + [ctypes.c_int, ctypes.c_int64]
    )
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, built on first use; None (and ``error()`` says why) if it cannot be built."""
    global _lib, _error
    if _lib is None and _error is None:
        with _lock:
            if _lib is None and _error is None:
                try:
                    _lib = _build()
                except Exception as exc:  # any failure: the caller falls back to the single-tensor kernels
                    _error = f"{type(exc).__name__}: {exc}"
    return _lib


def error() -> str | None:
    return _error


def available() -> bool:
    return load() is not None


_STATE_DTYPE = {torch.float32: torch.float32, torch.float64: torch.float64}
_STATE_DTYPE.update({torch.float16: torch.float32, torch.bfloat16: torch.float32})


def eligible(p: Tensor, g: Tensor, *state: Tensor) -> bool:
    """Whether the fused kernel can update this tensor: CPU, contiguous, same dtype for parameter and gradient, state
    in the compute dtype (fp32, or fp64 for fp64 parameters)."""
    dtype = p.dtype
    sdtype = _STATE_DTYPE.get(dtype)
    if sdtype is None or g.dtype != dtype or not (p.is_contiguous() and g.is_contiguous()):
        return False
    if p.device.type != "cpu" or g.device.type != "cpu":
        return False
    for s in state:
        if s.dtype != sdtype or not s.is_contiguous() or s.device.type != "cpu":
            return False
    return True


def _check_fits(params, grads, firsts, seconds, sens, step_sizes, bc3s) -> None:
    """The last line before raw pointers: the kernel writes ``numel(param)`` entries of every tensor of an index, so
    each must hold exactly that many, contiguous, on the CPU, in the dtype the kernel reads (callers check earlier,
    with parameter names; this guard keeps any other caller from corrupting memory)."""
    n = len(params)
    lists = [grads, firsts, seconds, step_sizes, bc3s] + ([sens] if sens is not None else [])
    if any(len(items) != n for items in lists):
        raise ValueError(f"fused SAGE step: lists of {[len(x) for x in lists]} items for {n} parameters")
    dtype = params[0].dtype
    state_dtype = _STATE_DTYPE.get(dtype)
    for i, p in enumerate(params):
        state = [firsts[i], seconds[i]] + ([sens[i]] if sens is not None else [])
        if p.dtype != dtype or not eligible(p, grads[i], *state):
            raise ValueError(
                f"fused SAGE step: tensor {i} ({p.dtype}) is not eligible: parameter and gradient must be contiguous "
                f"CPU {dtype}, the state contiguous {state_dtype}"
            )
        for t in (grads[i], *state):
            if t.numel() != p.numel():
                raise ValueError(
                    f"fused SAGE step: tensor {i} has a {tuple(t.shape)} state or gradient for a parameter of shape "
                    f"{tuple(p.shape)}"
                )


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def step(
    params: list[Tensor],
    grads: list[Tensor],
    firsts: list[Tensor],
    seconds: list[Tensor],
    sens: list[Tensor] | None,
    *,
    adamax: bool,
    step_sizes: list[float],
    bc3s: list[float],
    options: StepOptions,
) -> None:
    """One update of tensors that share a dtype and are ``eligible``: AdamW-SAGE, or Adamax-SAGE with ``adamax``.

    Per tensor, the step size (``lr`` times the moments' bias corrections for Adam, ``lr`` for Adamax) and the
    sensitivity's bias correction ``bc3``, aligned with ``params``; every other scalar comes from ``options``
    (``_functional.StepOptions``; its ``bias_correction`` is already in ``bc3s``)."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"the fused SAGE kernel is unavailable: {_error}")
    n = len(params)
    if n == 0:
        return
    _check_fits(params, grads, firsts, seconds, sens, step_sizes, bc3s)
    args = [_pointers(params), _pointers(grads), _pointers(firsts), _pointers(seconds)]
    args.append(_pointers(sens) if sens is not None else None)
    numels = (ctypes.c_int64 * n)(*[p.numel() for p in params])
    sizes = (ctypes.c_double * n)(*step_sizes)
    bcs = (ctypes.c_double * n)(*bc3s)
    o = options
    rc = lib.sage_step(
        int(adamax),
        _DTYPES[params[0].dtype],
        n,
        *args,
        numels,
        sizes,
        bcs,
        # the C signature's order: beta1, beta2, beta3, eps, lr, weight_decay, strength
        o.beta1,
        o.beta2,
        o.beta3,
        o.eps,
        o.lr,
        o.weight_decay,
        o.strength,
        torch.get_num_threads(),
    )
    if rc != 0:
        raise RuntimeError(f"sage_step failed with code {rc}")


class PlanLaunch:
    """One launch of a launch plan (``_plan``) on the CPU: the C arrays of the parameters' and the state's addresses
    and of the sizes, built once (the plan checked eligibility once); at each step the gradients' array is rebuilt only
    where their addresses changed, and each tensor's step size and bias correction come from its counter in C."""

    def __init__(self, members, adamax: bool):
        lib = load()
        if lib is None:
            raise RuntimeError(f"the fused SAGE kernel is unavailable: {_error}")
        self.lib = lib
        self.members = members
        self.adamax = int(adamax)
        self.dtype = _DTYPES[members.dtype]
        self.n = n = len(members.params)
        _check_fits(members.params, members.params, members.exp_avgs, members.seconds, members.sens, [0.0] * n,
                    [0.0] * n)  # fmt: skip
        self.arrays = [_pointers(members.params), _pointers(members.exp_avgs), _pointers(members.seconds)]
        self.sens = _pointers(members.sens) if members.sens is not None else None
        self.numels = (ctypes.c_int64 * n)(*[p.numel() for p in members.params])
        self.grads = None
        self.grad_ptrs: list[int] | None = None
        self.options: tuple = ()

    def set_grads(self, grads, pointers: list[int], capturing: bool) -> None:
        if pointers != self.grad_ptrs:
            self.grads = (ctypes.c_void_p * self.n)(*pointers)
            self.grad_ptrs = pointers

    def set_options(self, group, capturing: bool) -> None:
        beta1, beta2 = group["betas"]
        # the C signature's order: beta1, beta2, beta3, eps, lr, weight_decay, strength, bias_correction
        self.options = (beta1, beta2, group["beta3"], group["eps"], float(group["lr"]), group["weight_decay"],
                        float(group["sage_strength"]), int(bool(group["bias_correction"])))  # fmt: skip

    def launch(self) -> None:
        params, firsts, seconds = self.arrays
        rc = self.lib.sage_step_counted(self.adamax, self.dtype, self.n, params, self.grads, firsts, seconds,
                                        self.sens, self.numels, self.members.counters.data_ptr(), *self.options,
                                        torch.get_num_threads())  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"sage_step_counted failed with code {rc}")
