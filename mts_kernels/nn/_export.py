"""The recurrences as a torch scan loop, for torch.export and torch.onnx.export.

The fused ops are custom ops: torch.export keeps them in the graph (LeakyRNN
exports that way, with a dynamic batch and sequence length), but the ONNX
exporter has no translation for them, and ClockworkRNN's fused path picks each
module's active steps with Python slices whose bounds depend on T and t0, which
a dynamic T or a tensor t0 cannot give. So while exporting the modules run the
formulations below: one step of the recurrence as the body of torch's scan
higher-order op, which torch.export records as a loop (not T unrolled steps)
and the ONNX exporter translates into an ONNX Scan.

- leaky_rnn_scan: the carry is a ring of the last R = max(dilation, skip)
  states, newest first, so h_{t-d} and h_{t-s} are rows d-1 and s-1 of it
  (every row starts as h0: h_tau = h0 for tau <= 0).
- clockwork_rnn_scan: a dense, masked recurrence. Module i is active at step t
  iff (t0 + t) % T_i == 0, a (T, H) mask computed from a tensor t0 and
  arange(T); active units update as alpha * h + (1 - alpha) * phi(p_t + W h)
  with W the block-upper-triangular part of weight_hh, inactive units hold. It
  does the dense H x H product at every step (the fused op skips inactive
  modules); it is the form that exports, not the fast one.

Which form runs (`leaky_rnn` / `clockwork_rnn` below are what the modules call):
- torch.onnx.export (dynamo=True): both modules, the scan form (ONNX Scan).
- torch.onnx.export(dynamo=False), the legacy TorchScript exporter: the forms
  switch to scripted Python loops under its torch.jit.trace (_leaky_loop,
  _clockwork_loop), recorded as one prim::Loop, which it writes as an ONNX Loop.
- torch.export: ClockworkRNN the scan form (t0 may be a 0-d tensor input);
  LeakyRNN keeps the fused op (it has a fake kernel, so the exported program
  runs the C++/CUDA kernel) except with skip or dilation > 1, where the op's
  delay arguments (clamped to T, as ints) would specialise a dynamic T.
- otherwise (eager, torch.compile): the fused ops.
The forms take the fused ops' arguments (without lengths) and are tested against
mts_kernels.reference; they run eagerly too (slowly: the scan is compiled for
each new shape). They are inference forms for ONNX (the scan's inputs are
detached there, see _inference_only). Lengths and PackedSequence input are not
supported while exporting (a clear error says so).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from mts_kernels.ops.clockwork_rnn import _check_args as _check_clockwork_args
from mts_kernels.ops.clockwork_rnn import clockwork_rnn as _clockwork_fused
from mts_kernels.ops.clockwork_rnn import read_blocks
from mts_kernels.ops.leaky_rnn import _check_args as _check_leaky_args
from mts_kernels.ops.leaky_rnn import leaky_rnn as _leaky_fused

try:  # the public name, where a torch release has one
    _scan = torch.scan  # type: ignore[attr-defined]
except AttributeError:
    from torch._higher_order_ops.scan import scan as _scan

# periods beyond this never fire within a chunk's reach, and keep the clock
# arithmetic inside int64 (any Python int is a legal period)
_MAX_PERIOD = 2**62


def exporting() -> bool:
    """True while torch.export or torch.onnx.export traces the model."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def check_not_exporting(where: str, what: str) -> None:
    """A clear error for an input the export formulations do not take."""
    if exporting():
        raise NotImplementedError(
            f"{where}: {what} is not supported by torch.export / torch.onnx.export (the exported "
            f"recurrence runs every sequence for all T steps); export with padded input of equal "
            f"lengths, or call the eager module for variable lengths")


def _phi(nonlinearity: str):
    return torch.tanh if nonlinearity == "tanh" else torch.relu


def leaky_rnn_scan(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor] = None, *,
                   alpha: Optional[Tensor] = None, weight_skip: Optional[Tensor] = None,
                   skip: Optional[int] = None, dilation: int = 1, nonlinearity: str = "tanh",
                   reverse: bool = False, batch_first: bool = False) -> Tensor:
    """mts_kernels.leaky_rnn (without lengths) as a scan over time; see the module docstring."""
    _check_leaky_args(p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity,
                          batch_first)
    x = p.transpose(0, 1) if batch_first else p
    _, B, H = x.shape
    phi = _phi(nonlinearity)
    ring = max(dilation, skip or 0)
    start = x.new_zeros(B, H) if h0 is None else h0
    w_t = weight_hh.t()
    ws_t = weight_skip.t() if weight_skip is not None else None

    if torch.jit.is_tracing():
        # tensors and flags, not Optional[Tensor]: that exporter writes a None
        # optional as a value of no dtype, which onnxruntime rejects
        h = _scripted(_leaky_loop)(x, w_t, start, _or_empty(alpha, x), alpha is not None,
                                   _or_empty(ws_t, x), skip or 0, dilation,
                                   nonlinearity == "relu", reverse)
        return h.transpose(0, 1) if batch_first else h

    def step(past: Tensor, p_t: Tensor):
        h_d = past[dilation - 1]
        z = p_t + h_d @ w_t
        if ws_t is not None:
            z = z + past[skip - 1] @ ws_t
        u = phi(z)
        h = u if alpha is None else alpha * h_d + (1 - alpha) * u
        return torch.cat([h.unsqueeze(0), past[:ring - 1]], 0), h.clone()

    _, h = _scan(step, start.unsqueeze(0).expand(ring, B, H).clone(), x, reverse=reverse)
    return h.transpose(0, 1) if batch_first else h


def _per_unit(values, module_sizes):
    return [v for v, k in zip(values, module_sizes) for _ in range(k)]


def _clock(t0: Union[int, Tensor], periods: Sequence[int], module_sizes: Sequence[int],
           device) -> tuple:
    """Per unit (H,) int64: the first active step (-t0) mod T_i and the period T_i,
    both clamped to 2**62 as the fused op does (a step index stays below it, so a
    clamped first step still never comes and a clamped period still never repeats
    within a chunk); an int t0 is reduced exactly in Python (any size)."""
    clamp = [min(P, _MAX_PERIOD) for P in periods]
    period = torch.tensor(_per_unit(clamp, module_sizes), dtype=torch.int64, device=device)
    if isinstance(t0, Tensor):
        t0 = t0.to(device=device, dtype=torch.int64).reshape(())
        first = torch.remainder(-torch.remainder(t0, period), period)
    else:
        first = torch.tensor(_per_unit([min((-t0) % P, _MAX_PERIOD) for P in periods], module_sizes),
                             dtype=torch.int64, device=device)
    return first, period


def clock_mask(t0: Union[int, Tensor], steps, periods: Sequence[int],
               module_sizes: Sequence[int], device=None) -> Tensor:
    """(steps, H) bool: unit of module i active at step t iff (t0 + t) % T_i == 0.
    t0: an int >= 0 or a 0-d integer tensor; steps may be symbolic (x.size(0))."""
    first, period = _clock(t0, periods, module_sizes, device)
    t = torch.arange(steps, dtype=torch.int64, device=device).unsqueeze(1)
    return (t >= first) & (torch.remainder(t - first, period) == 0)


def block_upper(weight_hh: Tensor, module_sizes: Sequence[int]) -> Tensor:
    """weight_hh with the blocks module i never reads (modules j < i) zeroed: a
    select, not a product with the mask, so an inf or NaN there (never read by the
    eager kernels) stays out of the result as well."""
    return torch.where(read_blocks(module_sizes, weight_hh.device), weight_hh, weight_hh.new_zeros(()))


def clockwork_rnn_scan(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor] = None, *,
                       periods: Sequence[int], module_sizes: Sequence[int],
                       alpha: Optional[Tensor] = None, nonlinearity: str = "tanh",
                       t0: Union[int, Tensor] = 0, batch_first: bool = False) -> Tensor:
    """mts_kernels.clockwork_rnn (without lengths) as a masked dense scan over time;
    t0 may be an int >= 0 or a 0-d integer tensor (an input of the exported program)."""
    _check_clockwork_args(p, weight_hh, h0, periods, module_sizes, alpha, nonlinearity,
                              t0 if not isinstance(t0, Tensor) else 0, batch_first)
    check_t0_tensor("clockwork_rnn", t0)
    x = p.transpose(0, 1) if batch_first else p
    T, B, H = x.shape
    phi = _phi(nonlinearity)
    w_t = block_upper(weight_hh, module_sizes).t()
    init = x.new_zeros(B, H) if h0 is None else h0.clone()
    if torch.jit.is_tracing():
        first, period = _clock(t0, periods, module_sizes, x.device)
        h = _scripted(_clockwork_loop)(x, w_t, init, _or_empty(alpha, x), alpha is not None, first,
                                       period, nonlinearity == "relu")
        return h.transpose(0, 1) if batch_first else h
    active = clock_mask(t0, T, periods, module_sizes, x.device)

    def step(h: Tensor, xs):
        p_t, on = xs
        u = phi(p_t + h @ w_t)
        if alpha is not None:
            u = alpha * h + (1 - alpha) * u
        h_new = torch.where(on, u, h)
        return h_new, h_new.clone()

    _, h = _scan(step, init, (x, active))
    return h.transpose(0, 1) if batch_first else h


def check_t0_tensor(where: str, t0) -> None:
    if isinstance(t0, Tensor):
        if t0.numel() != 1 or t0.dim() > 1:
            raise ValueError(f"{where}: a tensor t0 must be 0-d (one clock for the batch), "
                             f"got shape {tuple(t0.shape)}")
        if t0.dtype.is_floating_point or t0.dtype.is_complex or t0.dtype == torch.bool:
            raise TypeError(f"{where}: a tensor t0 must have an integer dtype, got {t0.dtype}")


def _inference_only(p, weight_hh, h0, kw):
    """The scan's inputs detached, for ONNX (an inference graph). torch 2.14's scan
    autograd saves symbolic sizes as forward intermediates, which the ONNX
    exporter's type-promotion pass rejects ("Expected leaf to be a Tensor or None,
    got <class 'torch.SymInt'>") whenever an input requires grad."""
    def d(t):
        return t.detach() if isinstance(t, Tensor) else t

    return d(p), d(weight_hh), d(h0), {k: d(v) for k, v in kw.items()}


def leaky_rnn(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor] = None, *, lengths=None,
              backend: Optional[str] = None, **kw) -> Tensor:
    """mts_kernels.leaky_rnn, or leaky_rnn_scan while exporting where the fused op
    cannot be exported: always for ONNX (no translation of the custom op), and for
    torch.export with skip or dilation (the op takes its delays clamped to T as ints,
    which would specialise a dynamic T). Without them torch.export keeps the fused
    op (it has a fake kernel), so the exported program runs the C++/CUDA kernel."""
    if exporting():
        if lengths is not None:
            check_not_exporting("LeakyRNN", "lengths (or PackedSequence input)")
        if torch.onnx.is_in_onnx_export():
            p, weight_hh, h0, kw = _inference_only(p, weight_hh, h0, kw)
            return leaky_rnn_scan(p, weight_hh, h0, **kw)
        if kw.get("skip") is not None or kw.get("dilation", 1) != 1:
            return leaky_rnn_scan(p, weight_hh, h0, **kw)
    return _leaky_fused(p, weight_hh, h0, lengths=lengths, backend=backend, **kw)


def clockwork_rnn(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor] = None, *,
                  t0: Union[int, Tensor] = 0, lengths=None, backend: Optional[str] = None,
                  **kw) -> Tensor:
    """mts_kernels.clockwork_rnn, or clockwork_rnn_scan while exporting. t0 may be an
    int or a 0-d integer tensor; outside export a tensor t0 is read with int() (one
    device-to-host copy for a GPU tensor)."""
    if exporting():
        if lengths is not None:
            check_not_exporting("ClockworkRNN", "lengths (or PackedSequence input)")
        if torch.onnx.is_in_onnx_export():
            p, weight_hh, h0, kw = _inference_only(p, weight_hh, h0, kw)
        return clockwork_rnn_scan(p, weight_hh, h0, t0=t0, **kw)
    if isinstance(t0, Tensor):
        check_t0_tensor("ClockworkRNN", t0)
        t0 = int(t0)
    return _clockwork_fused(p, weight_hh, h0, t0=t0, lengths=lengths, backend=backend,
                                       **kw)


# The legacy (TorchScript) ONNX exporter traces with torch.jit.trace, which can
# neither trace the scan higher-order op (it compiles with dynamo) nor keep a
# Python loop over T (it would unroll it for the example's T). Scripted loops
# are recorded as one prim::Loop, which that exporter turns into an ONNX Loop.
def _leaky_loop(x: Tensor, w_t: Tensor, h0: Tensor, alpha: Tensor, has_alpha: bool,
                ws_t: Tensor, skip: int, dilation: int, relu: bool, reverse: bool) -> Tensor:
    T = x.size(0)
    ring = max(dilation, skip)
    past = h0.unsqueeze(0).repeat(ring, 1, 1)
    outs: List[Tensor] = []
    for k in range(T):
        t = T - 1 - k if reverse else k
        h_d = past[dilation - 1]
        z = x[t] + torch.matmul(h_d, w_t)
        if skip > 0:
            z = z + torch.matmul(past[skip - 1], ws_t)
        u = torch.relu(z) if relu else torch.tanh(z)
        if has_alpha:
            u = alpha * h_d + (1 - alpha) * u
        past = torch.cat([u.unsqueeze(0), past[:ring - 1]], 0)
        outs.append(u)
    h = torch.stack(outs, 0)
    # (a list's reverse() is dropped by that exporter)
    return h.flip(0) if reverse else h


def _clockwork_loop(x: Tensor, w_t: Tensor, h0: Tensor, alpha: Tensor, has_alpha: bool,
                    first: Tensor, period: Tensor, relu: bool) -> Tensor:
    h = h0
    outs: List[Tensor] = []
    for t in range(x.size(0)):
        on = (t >= first) & (torch.remainder(t - first, period) == 0)
        u = torch.relu(x[t] + torch.matmul(h, w_t)) if relu else torch.tanh(x[t] + torch.matmul(h, w_t))
        if has_alpha:
            u = alpha * h + (1 - alpha) * u
        h = torch.where(on, u, h)
        outs.append(h)
    return torch.stack(outs, 0)


def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_empty((0,)) if t is None else t


_SCRIPTED: dict = {}


def _scripted(fn):
    """fn compiled by torch.jit.script on first use (scripting at import would cost
    every import time and torch.jit.script's deprecation warning)."""
    if fn not in _SCRIPTED:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            _SCRIPTED[fn] = torch.jit.script(fn)
    return _SCRIPTED[fn]
