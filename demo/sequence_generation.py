"""Sequence generation (Koutník et al., "A Clockwork RNN", 2014, §4.1).

With no input, a network must generate a fixed 320-step target signal in [-1, 1]
through a linear readout of its hidden state. Trained here: a ClockworkRNN, a
LeakyRNN with leak=None (a plain RNN) of the same hidden size, and a torch.nn.LSTM
with about as many parameters as the ClockworkRNN. Prints each model's final
NMSE (MSE / variance of the target) and seconds per epoch with the fused kernels
and with the reference loops, and writes a PNG of target vs generated signals.

    python demo/sequence_generation.py [--epochs N] [--out demo/results]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch import nn
from tqdm import tqdm

import mts_kernels

STEPS = 320


def target_signal(steps: int = STEPS) -> torch.Tensor:
    """A synthetic stand-in for the paper's 320-sample music excerpt: slow swells,
    a melody-like middle band and fast vibrato, amplitude-modulated, in [-1, 1]."""
    t = torch.arange(steps, dtype=torch.float64)
    slow = 0.6 * torch.sin(2 * math.pi * t / 160) + 0.3 * torch.sin(2 * math.pi * t / 73 + 1.0)
    mid = 0.35 * torch.sin(2 * math.pi * t / 23 + 0.5) * (0.5 + 0.5 * torch.cos(2 * math.pi * t / 320))
    fast = 0.15 * torch.sin(2 * math.pi * t / 5.3) * torch.exp(-((t - 220) / 60) ** 2)
    y = slow + mid + fast
    y = y - y.mean()
    return (y / y.abs().max()).float()


class Generator(nn.Module):
    """An RNN driven by a constant zero input, read out linearly at every step."""

    def __init__(self, rnn: nn.Module, hidden: int):
        super().__init__()
        self.rnn = rnn
        self.readout = nn.Linear(hidden, 1)

    def forward(self, steps: int) -> torch.Tensor:
        x = torch.zeros(steps, 1, 1)
        out = self.rnn(x)[0]
        return self.readout(out).view(steps)


def count(model: nn.Module) -> int:
    """Trainable parameters that are actually read (a ClockworkRNN never reads the
    block-lower part of weight_hh)."""
    n = sum(p.numel() for p in model.parameters())
    rnn = getattr(model, "rnn", None)
    if isinstance(rnn, mts_kernels.ClockworkRNN):
        n -= int((~rnn.block_mask()).sum())
    return n


def build(seed: int = 0):
    torch.manual_seed(seed)
    hidden = 64
    models = {
        "ClockworkRNN": Generator(mts_kernels.ClockworkRNN(
            1, hidden, periods=[1, 2, 4, 8, 16, 32, 64, 128], module_sizes=[8] * 8), hidden),
        "LeakyRNN (leak=None)": Generator(mts_kernels.LeakyRNN(1, hidden), hidden),
    }
    # an LSTM with about the ClockworkRNN's parameter count: 4 (H^2 + 3H) + H + 1 ~ target
    target = count(models["ClockworkRNN"])
    h_lstm = max(1, round((-13 + math.sqrt(13 ** 2 + 16 * (target - 1))) / 8))
    models[f"torch.nn.LSTM (H={h_lstm})"] = Generator(nn.LSTM(1, h_lstm), h_lstm)
    return models


def nmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(((pred - target) ** 2).mean() / target.var(unbiased=False))


def train(model: nn.Module, target: torch.Tensor, epochs: int, lr: float, bar: tqdm) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=lr / 20)
    start = time.perf_counter()
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        loss = ((model(len(target)) - target) ** 2).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return (time.perf_counter() - start) / epochs


def seconds_per_epoch_reference(model: nn.Module, target: torch.Tensor, epochs: int = 3) -> float:
    """The same training step with the recurrence run by mts_kernels.reference loops."""
    rnn = model.rnn
    if not hasattr(rnn, "backend"):
        return float("nan")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    rnn.backend = "reference"
    try:
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        start = time.perf_counter()
        for _ in range(epochs):
            opt.zero_grad()
            ((model(len(target)) - target) ** 2).mean().backward()
            opt.step()
        return (time.perf_counter() - start) / epochs
    finally:
        rnn.backend = None
        model.load_state_dict(saved)


def plot(target, generated, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(generated), 1, figsize=(9, 2.4 * len(generated)), sharex=True)
    for ax, (name, (pred, err)) in zip(axes, generated.items()):
        ax.plot(target.numpy(), color="black", lw=1.5, label="target")
        ax.plot(pred.numpy(), color="tab:red", lw=1.0, label="generated")
        ax.set_title(f"{name}: NMSE {err:.4f}", fontsize=10)
        ax.set_ylim(-1.25, 1.25)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    os.makedirs(args.out, exist_ok=True)
    target = target_signal()
    models = build(args.seed)
    rows, generated = [], {}
    total = args.epochs * len(models)
    with tqdm(total=total, desc="training", unit="epoch") as bar:
        for name, model in models.items():
            bar.set_description(name)
            sec = train(model, target, args.epochs, args.lr, bar)
            with torch.no_grad():
                pred = model(len(target))
            err = nmse(pred, target)
            generated[name] = (pred, err)
            rows.append((name, count(model), err, sec, seconds_per_epoch_reference(model, target)))
    print()
    print(f"{'model':<26} {'params':>7} {'NMSE':>9} {'s/epoch fused':>14} {'s/epoch reference':>18} {'speedup':>8}")
    for name, n, err, sec, ref in rows:
        ref_s = "-" if math.isnan(ref) else f"{ref:.4f}"
        speed = "-" if math.isnan(ref) else f"{ref / sec:.1f}x"
        print(f"{name:<26} {n:>7} {err:>9.4f} {sec:>14.4f} {ref_s:>18} {speed:>8}")
    path = os.path.join(args.out, "sequence_generation.png")
    plot(target, generated, path)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
