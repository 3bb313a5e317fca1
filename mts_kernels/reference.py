"""Reference implementations: plain PyTorch loops over time, written the way a
user would write them. They are the oracle of every test and the baseline of
every benchmark; autograd through the loop gives their gradients.

Same signatures and conventions as the public ops, without `backend`.

lengths (every op; None or a (B,) integer tensor or list): sequence b is computed
as if alone, cut to its first L_b steps (reverse: t = L_b - 1 .. 0); outputs at
t >= L_b are 0. The scans mask each step; the recurrent cells run each sequence
on its own (the plainest statement of the semantics).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _lengths_list(lengths, B: int):
    if lengths is None:
        return None
    return [int(v) for v in (lengths.tolist() if isinstance(lengths, Tensor) else lengths)]


def _scan_loop(decay: Tensor, x: Tensor, h0: Optional[Tensor], reverse: bool, batch_first: bool,
               leaky: bool, lengths=None) -> Tensor:
    time_dim = 1 if batch_first else 0
    xs = x.unbind(time_dim)
    if decay.dim() == 1:
        decays = [decay] * len(xs)
    else:
        decays = list(decay.unbind(time_dim))
    h = torch.zeros_like(xs[0]) if h0 is None else h0
    lens = _lengths_list(lengths, xs[0].size(0))
    order = range(len(xs) - 1, -1, -1) if reverse else range(len(xs))
    out = [None] * len(xs)
    for t in order:
        a_t, x_t = decays[t], xs[t]
        if lens is not None:
            # padded steps' inputs selected away before use, so a NaN there reaches no
            # gradient either (the unselected branch of a where still gets 0 * NaN)
            valid = torch.tensor([t < n for n in lens], device=x.device).unsqueeze(-1)
            a_t, x_t = torch.where(valid, a_t, 0.0), torch.where(valid, x_t, 0.0)
        h_new = a_t * h + ((1 - a_t) * x_t if leaky else x_t)
        if lens is None:
            h = out[t] = h_new
        else:  # padded steps keep the state and output 0
            h = torch.where(valid, h_new, h)
            out[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
    return torch.stack(out, time_dim)


def _per_sequence(fn, p: Tensor, h0: Optional[Tensor], lengths, batch_first: bool) -> Tensor:
    """fn(p_b (T_b, 1, H), h0_b (1, H) or None) for each sequence b cut to its
    length, zero-padded back to T."""
    x = p.transpose(0, 1) if batch_first else p
    T = x.size(0)
    lens = _lengths_list(lengths, x.size(1))
    outs = []
    for b, n in enumerate(lens):
        if n == 0:
            # zeros that keep the graph (a zero gradient), without 0 * x (NaN from a NaN there)
            outs.append(torch.where(torch.zeros((), dtype=torch.bool, device=x.device), x[:, b:b + 1], 0.0))
            continue
        h_b = fn(x[:n, b:b + 1], None if h0 is None else h0[b:b + 1])
        outs.append(torch.cat([h_b, h_b.new_zeros(T - n, 1, h_b.size(2))], 0))
    h = torch.cat(outs, 1)
    return h.transpose(0, 1) if batch_first else h


def linear_scan(a: Tensor, x: Tensor, h0: Optional[Tensor] = None, *, reverse: bool = False,
                batch_first: bool = True, lengths=None) -> Tensor:
    """h_t = a_t * h_{t-1} + x_t, h_0 = h0 (zeros when None); reverse runs t = T..1."""
    return _scan_loop(a, x, h0, reverse, batch_first, leaky=False, lengths=lengths)


def leaky_integrate(v: Tensor, alpha: Tensor, h0: Optional[Tensor] = None, *,
                    reverse: bool = False, batch_first: bool = True, lengths=None) -> Tensor:
    """h_t = alpha_t * h_{t-1} + (1 - alpha_t) * v_t, h_0 = h0 (zeros when None)."""
    return _scan_loop(alpha, v, h0, reverse, batch_first, leaky=True, lengths=lengths)


def leaky_rnn(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor] = None, *,
              alpha: Optional[Tensor] = None, weight_skip: Optional[Tensor] = None,
              skip: Optional[int] = None, dilation: int = 1, nonlinearity: str = "tanh",
              reverse: bool = False, batch_first: bool = False, lengths=None) -> Tensor:
    """One layer and direction of the dense leaky recurrence:

        z_t = p_t + W_hh h_{t-d} [+ W_skip h_{t-s}],   h_t = alpha * h_{t-d} + (1 - alpha) * phi(z_t)

    p: (T, B, H) (or (B, T, H) batch_first), the input projection with both
    biases; h_tau = h0 (zeros when None) for tau <= 0; alpha None means 0.
    """
    if lengths is not None:
        return _per_sequence(
            lambda p_b, h0_b: leaky_rnn(p_b, weight_hh, h0_b, alpha=alpha, weight_skip=weight_skip,
                                        skip=skip, dilation=dilation, nonlinearity=nonlinearity,
                                        reverse=reverse),
            p, h0, lengths, batch_first)
    steps = p.unbind(1 if batch_first else 0)
    T = len(steps)
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    h_init = torch.zeros_like(steps[0]) if h0 is None else h0
    order = list(range(T - 1, -1, -1)) if reverse else list(range(T))
    hs = []  # in processing order
    for k, t in enumerate(order):
        hd = hs[k - dilation] if k >= dilation else h_init
        z = steps[t] + hd @ weight_hh.t()
        if skip:
            z = z + (hs[k - skip] if k >= skip else h_init) @ weight_skip.t()
        u = phi(z)
        hs.append(u if alpha is None else alpha * hd + (1 - alpha) * u)
    if reverse:
        hs = hs[::-1]
    return torch.stack(hs, 1 if batch_first else 0)


def clockwork_rnn(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor], periods, module_sizes, *,
                  alpha: Optional[Tensor] = None, nonlinearity: str = "tanh", t0: int = 0,
                  batch_first: bool = False, lengths=None) -> Tensor:
    """Clockwork recurrence (Koutník et al. 2014), modules ordered fast to slow:

        active at step t when (t0 + t) % T_i == 0:
            h_i(t) = alpha_i * h_i(t-1) + (1 - alpha_i) * phi(sum_{j >= i} W_ij h_j(t-1) + p_i(t))
        inactive: h_i(t) = h_i(t-1)

    p: (T, B, H) (or (B, T, H) batch_first), W_ih x_t + biases. Only the
    block-upper-triangular part of weight_hh is read. The clock is shared by the
    batch; lengths only cut sequences.
    """
    if lengths is not None:
        return _per_sequence(
            lambda p_b, h0_b: clockwork_rnn(p_b, weight_hh, h0_b, periods, module_sizes, alpha=alpha,
                                            nonlinearity=nonlinearity, t0=t0),
            p, h0, lengths, batch_first)
    steps = p.unbind(1 if batch_first else 0)
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    offsets = [0]
    for k in module_sizes:
        offsets.append(offsets[-1] + k)
    h = torch.zeros_like(steps[0]) if h0 is None else h0
    out = []
    for t, p_t in enumerate(steps):
        parts = []
        for i, period in enumerate(periods):
            lo, hi = offsets[i], offsets[i + 1]
            if (t0 + t) % period == 0:
                u = phi(p_t[:, lo:hi] + h[:, lo:] @ weight_hh[lo:hi, lo:].t())
                if alpha is not None:
                    u = alpha[lo:hi] * h[:, lo:hi] + (1 - alpha[lo:hi]) * u
                parts.append(u)
            else:
                parts.append(h[:, lo:hi])
        h = torch.cat(parts, 1)
        out.append(h)
    return torch.stack(out, 1 if batch_first else 0)


def deep_transition_rnn(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor] = None, *,
                        bias_hh: Optional[Tensor] = None, weight_shortcut: Optional[Tensor] = None,
                        alpha: Optional[Tensor] = None, nonlinearity: str = "tanh",
                        reverse: bool = False, batch_first: bool = False, lengths=None) -> Tensor:
    """One layer and direction of the deep-transition recurrence (Pascanu et al.
    2013), L = weight_hh.size(0) sub-layers per step, s^0_t = h_{t-1}:

        s^1_t = phi(W_1 s^0_t + p_t + b_1)
        s^l_t = phi(W_l s^{l-1}_t + b_l)                 l = 2..L
                (weight_shortcut U: s^L_t = phi(W_L s^{L-1}_t + b_L + U h_{t-1}))
        h_t   = alpha * h_{t-1} + (1 - alpha) * s^L_t    (alpha None: h_t = s^L_t)

    p: (T, B, H) (or (B, T, H) batch_first), W_ih x_t + b_ih; weight_hh (L, H, H);
    bias_hh (L, H) or None; h_{-1} = h0 (zeros when None).
    """
    if lengths is not None:
        return _per_sequence(
            lambda p_b, h0_b: deep_transition_rnn(p_b, weight_hh, h0_b, bias_hh=bias_hh,
                                                  weight_shortcut=weight_shortcut, alpha=alpha,
                                                  nonlinearity=nonlinearity, reverse=reverse),
            p, h0, lengths, batch_first)
    steps = p.unbind(1 if batch_first else 0)
    T, L = len(steps), weight_hh.size(0)
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    h = torch.zeros_like(steps[0]) if h0 is None else h0
    order = range(T - 1, -1, -1) if reverse else range(T)
    out = [None] * T
    for t in order:
        s = h
        for l in range(L):
            z = s @ weight_hh[l].t()
            if l == 0:
                z = z + steps[t]
            if bias_hh is not None:
                z = z + bias_hh[l]
            if l == L - 1 and weight_shortcut is not None:
                z = z + h @ weight_shortcut.t()
            s = phi(z)
        h = out[t] = s if alpha is None else alpha * h + (1 - alpha) * s
    return torch.stack(out, 1 if batch_first else 0)
