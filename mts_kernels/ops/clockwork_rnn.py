"""clockwork_rnn: the clockwork recurrence (Koutník et al., 2014), fused.

Modules i = 0..g-1 (sizes k_i, periods T_0 < ... < T_{g-1}, fast to slow); module
i is active at step t when (t0 + t) % T_i == 0:

    active:    h_i(t) = alpha_i * h_i(t-1) + (1 - alpha_i) * phi(sum_{j >= i} W_ij h_j(t-1) + p_i(t))
    inactive:  h_i(t) = h_i(t-1)

Decomposition (DESIGN-NOTES §4, with the cross terms moved to the slow rate):
slow modules never read fast ones, so the slowest module's trajectory is computed
first. Each module's contribution to all faster modules, states_j W_{<j,j}^T, is
then one GEMM over its own ceil(T / T_j) active steps (not over the faster
modules' steps), and each faster module reads those rows at its active steps (the
value held at t - 1: a row gather). What stays sequential is a k_i x k_i
recurrence over the module's active steps: the fused leaky_rnn kernel. Inactive
steps cost nothing; only the block-upper-triangular part of W_hh is read (the rest
gets zero gradient). The backward runs the same pieces the other way (fastest
module first); each slow value's gradient is summed over the interval it was held
(the gather's and the hold-expand's backward).

Fused path: one op per call, one time loop forward and one backward, no
per-module glue: step t computes the active modules' rows over their blocks
j >= i only, inactive modules hold (forward) and pass their gradient straight
through (backward); dW's block rows come from GEMMs after the loop.
- CPU: torch.ops.mts_kernels.clockwork_rnn_fwd / _bwd (csrc/clockwork/), products
  restricted to the active modules' rows, register-tiled or BLAS;
- CUDA: the same ops' CUDA kernels, at most CUDA_MAX_MODULES modules: the
  persistent kernel (csrc/clockwork/clockwork_persistent.h: W_hh on chip, one
  launch per direction) where its plan fits the device, else a loop
  (csrc/clockwork/clockwork_loop.h) of one cuBLAS GEMM per active module on
  strided views and one pointwise kernel per step; no host synchronisation;
- Triton (H <= TRITON_MAX_HIDDEN): clockwork_rnn_fwd_triton / _bwd_triton
  (mts_kernels/triton/clockwork_rnn.py), a persistent per-batch-block loop with
  the block-upper part of W_hh in registers and the clock as per-unit masks.
Which path a call takes (see _use_fused): the fused op wherever its backend has
one within its limits (on the CPU the cost rule at FUSED_ON_CPU records why);
the decomposition beyond them (Triton beyond its hidden size, each module then
on the Triton leaky_rnn kernel; CUDA beyond its module count) and under
torch.func transforms / forward-mode AD (whose jvp the decomposition's
leaky_rnn pieces provide). MTS_KERNELS_CLOCKWORK_PATH=fused|decomposed|auto
(default auto) forces the choice, for tests and measurements.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mts_kernels import _extension, reference
from mts_kernels.ops import _backend, _lengths, _transforms
from mts_kernels.ops import input_projection as _projection
from mts_kernels.ops.leaky_rnn import (NONLINEARITIES, SECOND_ORDER, _BackwardFunction, _fused_tangent,
                                      _linear_loop, _live, check_projection, leaky_rnn, second_order,
                                      tangent_op)

PATH_ENV_VAR = "MTS_KERNELS_CLOCKWORK_PATH"
PATHS = ("auto", "fused", "decomposed")


def _fake_fwd(p, weight_hh, h0, alpha, module_sizes, periods, first_steps, nonlinearity,
              lengths=None):
    return p.new_empty(p.shape), (p.new_empty(p.shape) if alpha is not None else p.new_empty((0,)))


def _fake_bwd(grad_h, weight_hh, h, u, h0, alpha, module_sizes, periods, first_steps, nonlinearity,
              lengths=None):
    T, B, H = h.shape
    return (h.new_empty((T, B, H)), h.new_empty((H, H)), h.new_empty((B, H)),
            h.new_empty((H,) if alpha is not None else (0,)))


def _setup_context(ctx, inputs, output):
    p, weight_hh, h0, alpha, module_sizes, periods, first_steps, nonlinearity, lengths = inputs
    h, u = output
    ctx.mark_non_differentiable(u)
    ctx.set_materialize_grads(False)  # no zeros for the grad of u (nor of an unused h): None is handled
    ctx.config = (module_sizes, periods, first_steps, nonlinearity)
    ctx.has = (h0 is not None, alpha is not None)
    ctx.save_for_backward(weight_hh, h, u, h0, alpha, lengths)


def _make_backward(bwd_name: str):
    def backward(ctx, grad_h, _grad_u):
        weight_hh, h, u, h0, alpha, lengths = ctx.saved_tensors
        if grad_h is None:
            grad_h = torch.zeros_like(h)
        args = (grad_h, weight_hh, h, u, h0, alpha, *ctx.config, lengths)
        if torch.is_grad_enabled():  # create_graph=True: a node that refuses a 2nd order
            dp, dw, dh0, dalpha = _BackwardFunction.apply(bwd_name, *args)
        else:
            dp, dw, dh0, dalpha = getattr(torch.ops.mts_kernels, bwd_name)(*args)
        has_h0, has_alpha = ctx.has
        return (dp, dw, dh0 if has_h0 else None, dalpha if has_alpha else None,
                None, None, None, None, None)

    return backward


def _tangent(primals, tangents, module_sizes, periods, first_steps, nonlinearity, lengths):
    """The tangent of the fused op's h for tangents of (p, weight_hh, h0, alpha):
    the linearised clockwork recurrence (None tangents are zero),

        active:   hdot_i(t) = alpha_i hdot_i(t-1) + alphadot_i (h_i(t-1) - u_i(t))
                              + (1 - alpha_i) phi'(u_i(t)) (pdot_i(t) + sum_{j >= i} (W_ij hdot_j(t-1) + Wdot_ij h_j(t-1)))
        inactive: hdot_i(t) = hdot_i(t-1)

    with the saved h and u (u: the fused op's second output; h itself without a
    leak). The terms of the primal states are one GEMM / pointwise pass over all
    steps; what stays sequential, one masked (B, H) x (H, H) product per step, is
    leaky_rnn's fused tangent op (with a per-step keep: alpha, or 0, where active,
    1 where held) on the CPU and a PyTorch step loop elsewhere."""
    weight_hh, h, u, h0, alpha = primals
    dp, dw, dh0, dalpha = tangents
    T, B, H = h.shape
    dev = h.device
    module = torch.repeat_interleave(torch.arange(len(module_sizes), device=dev),
                                     torch.tensor(list(module_sizes), device=dev))
    upper = read_blocks(module_sizes, dev)
    # a select, not a product with the mask: the unread blocks may hold inf or NaN
    upper_part = lambda w: torch.where(upper, w, w.new_zeros(()))
    t = torch.arange(T, device=dev).unsqueeze(1)
    first = torch.tensor(list(first_steps), device=dev)[module]
    period = torch.tensor(list(periods), device=dev)[module]
    act = ((t >= first) & ((t - first) % period == 0)).unsqueeze(1)  # (T, 1, H)
    start = h.new_zeros(B, H) if h0 is None else h0
    h_prev = torch.cat([start.unsqueeze(0), h[:-1]], 0)
    if alpha is None:
        u = h
    else:
        # u is a non-differentiable output; its dependence on h and alpha at active
        # steps (u = (h - alpha h(t-1)) / (1 - alpha)) carries its derivative, as in
        # leaky_rnn's _tangent
        u_fn = (h - alpha * h_prev) / (1 - alpha)
        u = u + (u_fn - u_fn.detach())
    gain = (1 - u * u) if nonlinearity == "tanh" else (u > 0).to(u.dtype)
    if alpha is not None:
        gain = gain * (1 - alpha)
    gain = torch.where(act, gain, gain.new_zeros(()))
    drive = torch.zeros_like(h) if dp is None else dp
    if dw is not None:
        drive = drive + _projection.times_t(h_prev, upper_part(dw))  # as leaky_rnn's _tangent
    drive = gain * drive
    if dalpha is not None:
        drive = drive + torch.where(act, dalpha * (h_prev - u), drive.new_zeros(()))
    live = _live(h, lengths)  # rows that ended keep a zero tangent (their output is 0)
    # the tangent state's own coefficient: alpha (0 without a leak) where active, 1 (hold) elsewhere
    keep = torch.where(act, h.new_zeros(()) if alpha is None else alpha, h.new_ones(()))
    start = h.new_zeros(B, H) if dh0 is None else dh0
    keep = keep.expand(T, B, H)
    if _fused_tangent(drive, gain, weight_hh, keep, start):  # its gradient: the same op on the adjoint
        return tangent_op(drive, gain, upper_part(weight_hh), keep, None, start, 0, 1, False, False, lengths)
    return _linear_loop(drive, gain, upper_part(weight_hh), keep, None, start, 0, 1, live)


def _second_order(args, cots):
    """clockwork_rnn_bwd(grad_h, weight_hh, h, u, h0, alpha, module_sizes, periods,
    first_steps, nonlinearity, lengths) -> (dp, dw, dh0, dalpha): its gradients."""
    grad_h, weight_hh, h, u, h0, alpha, sizes, periods, firsts, nonlinearity, lengths = args
    cp, cw, ch0, calpha = cots
    tangents = (cp, cw, None if h0 is None else ch0, None if alpha is None else calpha)
    fn = lambda prims, c: _tangent(prims, c, sizes, periods, firsts, nonlinearity, lengths)
    dgrad_h, dw, dh, _du, dh0, dalpha = second_order(fn, grad_h, (weight_hh, h, u, h0, alpha), tangents)
    return (dgrad_h, dw, dh, None, dh0, dalpha) + (None,) * 5


SECOND_ORDER["clockwork_rnn_bwd"] = _second_order


def _register(suffix: str) -> None:
    fwd, bwd = f"mts_kernels::clockwork_rnn_fwd{suffix}", f"clockwork_rnn_bwd{suffix}"
    torch.library.register_fake(fwd)(_fake_fwd)
    torch.library.register_fake(f"mts_kernels::{bwd}")(_fake_bwd)
    torch.library.register_autograd(fwd, _make_backward(bwd), setup_context=_setup_context)
    _transforms.register_autocast(fwd)


# The Triton fused loop (mts_kernels/triton/clockwork_rnn.py, imported on first
# call; H <= its MAX_HIDDEN) as custom ops with the C++ schemas' signatures.
@torch.library.custom_op("mts_kernels::clockwork_rnn_fwd_triton", mutates_args=())
def _clockwork_rnn_fwd_triton(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor], alpha: Optional[Tensor],
                              module_sizes: list[int], periods: list[int], first_steps: list[int],
                              nonlinearity: str, lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    from mts_kernels.triton import clockwork_rnn as triton_cw

    return triton_cw.clockwork_rnn_fwd(p, weight_hh, h0, alpha, module_sizes, periods, first_steps,
                                       nonlinearity, lengths)


@torch.library.custom_op("mts_kernels::clockwork_rnn_bwd_triton", mutates_args=())
def _clockwork_rnn_bwd_triton(grad_h: Tensor, weight_hh: Tensor, h: Tensor, u: Tensor, h0: Optional[Tensor],
                              alpha: Optional[Tensor], module_sizes: list[int], periods: list[int],
                              first_steps: list[int], nonlinearity: str, lengths: Optional[Tensor] = None
                              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from mts_kernels.triton import clockwork_rnn as triton_cw

    return triton_cw.clockwork_rnn_bwd(grad_h, weight_hh, h, u, h0, alpha, module_sizes, periods,
                                       first_steps, nonlinearity, lengths)


_register("_triton")
# the Triton kernel keeps W_hh^T in registers: hidden sizes up to this (its
# MAX_HIDDEN, not imported here: the package import does not import triton)
TRITON_MAX_HIDDEN = 128
# the CUDA op's module limit (csrc/clockwork/clockwork_step.h, kMaxCudaModules)
CUDA_MAX_MODULES = 64
FUSED_COMPILED = _extension.COMPILED and hasattr(torch.ops.mts_kernels, "clockwork_rnn_fwd")
if FUSED_COMPILED:
    _register("")


def _path_setting() -> str:
    path = os.environ.get(PATH_ENV_VAR) or "auto"
    if path not in PATHS:
        raise ValueError(f"{PATH_ENV_VAR}={path!r} is not a clockwork_rnn path; expected one of {PATHS}")
    return path


# The cost rule between the two CPU paths. Both do the multiply-adds of the
# block-upper-triangular products; the decomposition computes a slow module's
# contribution to the faster ones once per slow step (fewer FLOPs when slow
# modules are large) but pays per module for concatenations, gathers, hold
# expansions and a leaky_rnn call, and the fused loop pays one small product per
# active module and step. Measured fwd+bwd of ClockworkRNN on the 2-core CPU (one
# thread, float32; fused vs decomposed, ms):
#   H=64,   4 modules 1,2,4,8,     B=4,  T=4096:    9.7 vs  16.9
#   H=512,  8 modules 1..128,      B=32, T=1024:  314   vs 352
#   H=512,  2 modules 1,64,        B=32, T=1024:  436   vs 550
#   H=512,  modules 32+480 at 1,64 B=32, T=1024:  227   vs 421
#   H=1024, 2 modules 1,16,        B=32, T=512:   659   vs 710
#   H=1024, modules 32+992 at 1,1024, B=32, T=1024: 598 vs 676
#   H=256,  2 modules 1,32,        B=8,  T=1024:   37.6 vs  39.4
# The decomposition's FLOP saving never outweighed its glue, so on the CPU the
# rule is: the fused op, always (PATH_ENV_VAR=decomposed still selects the other).
FUSED_ON_CPU = True


def read_blocks(module_sizes: Sequence[int], device=None) -> Tensor:
    """(H, H) bool: True where clockwork_rnn reads weight_hh, module i's rows at the
    columns of modules j >= i. Built from Python ints (no data-dependent ops), so it
    also works on meta and fake tensors and while exporting."""
    module = torch.tensor([m for m, k in enumerate(module_sizes) for _ in range(k)], device=device)
    return module.unsqueeze(1) <= module.unsqueeze(0)


def check_modules(periods, module_sizes, hidden_size: int, where: str = "clockwork_rnn") -> None:
    """Clear errors for a bad clock configuration."""
    def ints(name, values):
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{where}: {name} must be a non-empty sequence of ints, got {values!r}")
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{where}: {name} must contain ints, got {values!r}")

    ints("periods", periods)
    ints("module_sizes", module_sizes)
    if any(p < 1 for p in periods):
        raise ValueError(f"{where}: periods must be >= 1, got {tuple(periods)}")
    if any(b <= a for a, b in zip(periods, periods[1:])):
        raise ValueError(f"{where}: periods must be strictly increasing (modules ordered fast to slow), "
                         f"got {tuple(periods)}")
    if len(periods) != len(module_sizes):
        raise ValueError(f"{where}: periods and module_sizes must have the same length, got "
                         f"{len(periods)} periods and {len(module_sizes)} module sizes")
    if any(k < 1 for k in module_sizes):
        raise ValueError(f"{where}: module_sizes must be >= 1, got {tuple(module_sizes)}")
    if sum(module_sizes) != hidden_size:
        raise ValueError(f"{where}: module_sizes must sum to hidden_size {hidden_size}, got "
                         f"{tuple(module_sizes)} (sum {sum(module_sizes)})")


def _count_active(t: Tensor, first: int, period: int) -> Tensor:
    """Number of active steps of a module in [0, t] (t may be -1): the row of its
    states (initial state first) that holds its value after step t."""
    # t < 2**62 always (a step index), so clamping keeps every count and keeps
    # periods and phases beyond int64 (any Python int is a legal period) out of it
    first, period = min(first, 2**62), min(period, 2**62)
    return torch.where(t >= first, torch.div(t - first, period, rounding_mode="floor") + 1,
                       torch.zeros_like(t))


def clockwork_rnn(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor] = None, *,
                  periods: Sequence[int], module_sizes: Sequence[int],
                  alpha: Optional[Tensor] = None, nonlinearity: str = "tanh", t0: int = 0,
                  batch_first: bool = False, lengths=None, backend: Optional[str] = None) -> Tensor:
    """Clockwork recurrence over all steps, fused (see the module docstring).

    p: (T, B, H) (or (B, T, H) batch_first): W_ih x_t + b_ih + b_hh for all steps.
    weight_hh: (H, H), read block-upper-triangularly; h0: (B, H) or None (zeros);
    periods / module_sizes: per module, fast to slow; alpha: (H,) leak or None;
    t0: the global clock at the first step (keeps the phase across chunks).
    lengths: None, or (B,) ints (tensor or list): sequence b runs its first L_b
    steps and h is 0 beyond; the clock is shared by the batch.
    Returns h shaped like p; the final state is its last step
    (mts_kernels.final_state(h, lengths, h0, batch_first=batch_first) with lengths).
    """
    cast = _transforms.autocast_dtype(p.device) if isinstance(p, Tensor) else None
    _check_args(p, weight_hh, h0, periods, module_sizes, alpha, nonlinearity, t0, batch_first, cast)
    if cast is not None:
        # A composite of ops: autocast once here (as the registered ops' autocast
        # kernels do), so every piece and the held values run in one dtype.
        p, weight_hh, h0, alpha = _transforms.autocast_inputs((p, weight_hh, h0, alpha),
                                                              p.device.type, cast)
        with torch.autocast(p.device.type, enabled=False):
            return clockwork_rnn(p, weight_hh, h0, periods=periods, module_sizes=module_sizes,
                                 alpha=alpha, nonlinearity=nonlinearity, t0=t0,
                                 batch_first=batch_first, lengths=lengths, backend=backend)
    T_, B_, _ = check_projection("clockwork_rnn", p, batch_first)
    lens = _lengths.check_lengths("clockwork_rnn", lengths, B_, T_, p.device)
    # the per-module lengths below are derived from a host copy when lengths came
    # from the host, so their checks in leaky_rnn need no device synchronisation
    lens_src = lens
    if lengths is not None and not (isinstance(lengths, Tensor) and lengths.device.type != "cpu"):
        lens_src = torch.as_tensor(lengths, dtype=torch.int64)
    be = _backend.resolve(backend, "leaky_rnn_fwd", p.device, p.dtype)
    if be == "reference":
        return reference.clockwork_rnn(p, weight_hh, h0, periods, module_sizes, alpha=alpha,
                                       nonlinearity=nonlinearity, t0=t0, batch_first=batch_first,
                                       lengths=lens)
    # forward over forward is refused by the leaky_rnn pieces' jvp rule; say it here, by this op's name
    _transforms.check_forward_over_forward("clockwork_rnn")
    x = p.transpose(0, 1) if batch_first else p
    T, B, H = x.shape
    if _use_fused(be, x, periods, module_sizes):
        # the phase enters as each module's first active step, (-t0) mod T_i, and a
        # period or first step beyond T as T (the same active steps in [0, T)), so
        # any Python int t0 or period fits the op's int64 arguments
        firsts = [min((-t0) % P, T) for P in periods]
        # (the C++ op dispatches on the device: CPU or CUDA kernels)
        op = torch.ops.mts_kernels.clockwork_rnn_fwd_triton if be == "triton" else \
            torch.ops.mts_kernels.clockwork_rnn_fwd
        h, _ = op(
            x, weight_hh, h0, alpha, list(module_sizes), [min(P, T) for P in periods], firsts,
            nonlinearity, lens)
        return h.transpose(0, 1) if batch_first else h
    if h0 is None:
        h0 = x.new_zeros(B, H)
    offs = [0]
    for k in module_sizes:
        offs.append(offs[-1] + k)
    g = len(periods)
    firsts = [(-t0) % P for P in periods]  # < P; >= T means never active in this chunk
    # Split once along the units (the backward of a split is one concatenation,
    # where per-module slices of the full tensors would each zero-fill a full-size
    # gradient).
    sizes = list(module_sizes)
    p_mod = x.split(sizes, -1)
    w_rows = weight_hh.split(sizes, 0)
    h0_mod = h0.split(sizes, -1)
    a_mod = alpha.split(sizes) if alpha is not None else [None] * g
    # states[j]: module j's initial state followed by its value after each of its
    # active steps. A slower module j enters module i's step t through W_ij times
    # its value held at t - 1; that product is taken at j's own (slower) rate for
    # all faster modules at once, states[j] W_{<j, j}^T, and then read at each
    # faster module's active steps (a row gather whose backward sums each row over
    # the interval it was held).
    steps = torch.arange(T, device=x.device)
    held_steps = torch.arange(-1, T, device=x.device)  # before step 0, then after each step
    states: list = [None] * g
    to_faster: list = [None] * g  # states[j] W_{<j, j}^T: (n_j + 1, B, offs[j])
    held: list = [None] * g  # (T + 1, B, k_j): before step 0 and after each step
    for i in reversed(range(g)):
        lo, hi, P, f = offs[i], offs[i + 1], periods[i], firsts[i]
        h0_i = h0_mod[i]
        if f >= T:  # never active in this chunk: holds its state
            states[i] = h0_i.unsqueeze(0)
            held[i] = h0_i.unsqueeze(0).expand(T + 1, *h0_i.shape)
            if i > 0:
                to_faster[i] = F.linear(states[i], weight_hh[:lo, lo:hi])
            continue
        every = min(P, T)  # the same active steps in [0, T) (and a slice step torch takes)
        p_i = p_mod[i][f::every]
        n = p_i.size(0)
        if i < g - 1:
            prev = steps[f::every] - 1  # i's active steps read the slower modules at t - 1
            for j in range(i + 1, g):
                z = to_faster[j][..., lo:hi].index_select(0, _count_active(prev, firsts[j], periods[j]))
                p_i = p_i + z
        # with lengths, module i's sequence b has the active steps t < L_b
        lens_i = None if lens is None else _count_active(lens_src - 1, f, P)
        h_i = leaky_rnn(p_i, w_rows[i][:, lo:hi], h0_i, alpha=a_mod[i],
                        nonlinearity=nonlinearity, lengths=lens_i, backend=be)
        states[i] = torch.cat([h0_i.unsqueeze(0), h_i], 0)
        if i > 0:  # what this module feeds every faster one, in one GEMM at its own rate
            to_faster[i] = F.linear(states[i], weight_hh[:lo, lo:hi])
        # each value is held until the next active step: a row gather of T + 1 rows
        # (its backward sums each value over the interval it was held), whatever P is
        held[i] = states[i].index_select(0, _count_active(held_steps, f, P))
    h = torch.cat([hj[1:] for hj in held], -1)
    if lens is not None:  # the held values run on past a sequence's end: cut them
        h = h.masked_fill((steps.unsqueeze(1) >= lens.unsqueeze(0)).unsqueeze(-1), 0.0)
    return h.transpose(0, 1) if batch_first else h


def _use_fused(be: str, x: Tensor, periods, module_sizes) -> bool:
    """The fused op for this call? (module docstring; PATH_ENV_VAR forces it)."""
    path = _path_setting()
    if path == "decomposed":
        return False
    if _transforms.transform_active():
        # torch.func / forward AD: the decomposition's leaky_rnn pieces carry the
        # jvp and vmap rules the fused op has not got
        return False
    if be == "triton":
        # beyond the register-resident limit the decomposition still runs on the
        # Triton leaky_rnn kernel, one module (k_i <= its limit) at a time
        return x.size(2) <= TRITON_MAX_HIDDEN
    if be == "cuda":
        # the CUDA loop's per-step active mask is one 64-bit word
        return _backend.cuda_compiled("clockwork_rnn_fwd") and len(periods) <= CUDA_MAX_MODULES
    if be != "cpu" or x.device.type not in ("cpu", "meta") or not FUSED_COMPILED:
        return False
    return path == "fused" or FUSED_ON_CPU


def _check_args(p, weight_hh, h0, periods, module_sizes, alpha, nonlinearity, t0, batch_first,
                cast=None):
    op = "clockwork_rnn"
    _, B, H = check_projection(op, p, batch_first)
    check_modules(periods, module_sizes, H, op)
    for name, t, shape in (("weight_hh", weight_hh, (H, H)), ("h0", h0, (B, H)), ("alpha", alpha, (H,))):
        if t is None and name != "weight_hh":
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
        eff = _transforms.effective_dtype
        if eff(t, cast) != eff(p, cast) or t.device != p.device:
            raise TypeError(f"{op}: {name} must be {p.dtype} on {p.device}, got {t.dtype} on {t.device}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"{op}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if not isinstance(t0, int) or isinstance(t0, bool) or t0 < 0:
        raise ValueError(f"{op}: t0 must be an int >= 0, got {t0!r}")
