"""Copy memory (Hochreiter & Schmidhuber 1997, experiment 2; Arjovsky et al. 2016, §4.1).

Each sequence shows 10 symbols drawn uniformly from an alphabet of 8, then blanks
for `delay` steps (the last of them the delimiter that asks for the recall), then
10 more blanks during which the network must output the 10 symbols in order: each
symbol is recalled delay + 10 steps after it was seen. Only the 10 recall steps are
read out (a linear readout of the hidden state, softmax over the 8 symbols) and
scored, so a network that remembers nothing is at the chance baseline: accuracy
1/8 and cross-entropy log 8 = 2.079 nats per recalled symbol.

Trained on freshly generated batches, all with the same optimiser (Adam, gradient
clipping) and number of steps, at about the same parameter count: torch.nn.RNN,
torch.nn.LSTM, and the strategies of Goodfellow et al. §10.9 / §10.5 as mts_kernels
modules: leaky units with learned time constants, skip connections through time,
dilation (the length-one connections removed), the Clockwork RNN, and a deep
transition with a shortcut. Prints each model's accuracy and cross-entropy on a
held-out set and seconds per training step, and writes a PNG of learning curves.

    python demo/copy_memory.py [--models rnn,lstm,...] [--steps N] [--out demo/results]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

import mts_kernels

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sequence_generation import count  # noqa: E402  (parameters actually read)

SYMBOLS = 8      # alphabet of the symbols to remember: classes 0..7
REMEMBER = 10    # symbols per sequence
BLANK = SYMBOLS  # input channel of the blank
DELIMITER = SYMBOLS + 1
INPUTS = SYMBOLS + 2  # one-hot: the 8 symbols, blank, delimiter
CHANCE_CE = math.log(SYMBOLS)
CHANCE_ACC = 1.0 / SYMBOLS


def copy_memory_batch(batch: int, delay: int, generator: torch.Generator = None) -> Tuple[Tensor, Tensor]:
    """(x, y): x (2 * REMEMBER + delay, batch, INPUTS) one-hot float32, time-major;
    y (REMEMBER, batch) int64, the symbols to output at the last REMEMBER steps
    (the recall positions, `recall_positions(delay)`).

    Steps 0..9: the symbols; then delay - 1 blanks and the delimiter at step
    9 + delay; then 10 blanks, during which the symbols are to be recalled."""
    if not isinstance(delay, int) or delay < 1:
        raise ValueError(f"copy_memory_batch: delay must be an int >= 1, got {delay!r}")
    y = torch.randint(0, SYMBOLS, (REMEMBER, batch), generator=generator)
    steps = 2 * REMEMBER + delay
    idx = torch.full((steps, batch), BLANK, dtype=torch.int64)
    idx[:REMEMBER] = y
    idx[REMEMBER + delay - 1] = DELIMITER
    return F.one_hot(idx, INPUTS).float(), y


def recall_positions(delay: int) -> range:
    """The steps at which the symbols are recalled (the last REMEMBER)."""
    return range(REMEMBER + delay, 2 * REMEMBER + delay)


class Copier(nn.Module):
    """An RNN read out linearly at the recall positions (the last REMEMBER steps)."""

    def __init__(self, rnn: nn.Module, hidden: int):
        super().__init__()
        self.rnn = rnn
        self.readout = nn.Linear(hidden, SYMBOLS)

    def forward(self, x: Tensor) -> Tensor:
        """x (T, B, INPUTS) -> logits (REMEMBER, B, SYMBOLS)."""
        return self.readout(self.rnn(x)[0][-REMEMBER:])


def _has_deep_transition() -> bool:
    return hasattr(mts_kernels, "DeepTransitionRNN")


# name -> (row label, constructor of the RNN for a hidden size; None where that size
# is not allowed). Clockwork modules are equal in size, so H is a multiple of their count.
def model_specs(skip: int, dilation: int, periods) -> Dict[str, Tuple[str, Callable[[int], nn.Module]]]:
    g = len(periods)
    return {
        "rnn": ("torch.nn.RNN", lambda h: nn.RNN(INPUTS, h)),
        "lstm": ("torch.nn.LSTM", lambda h: nn.LSTM(INPUTS, h)),
        "leaky": ("LeakyRNN leak=learned", lambda h: mts_kernels.LeakyRNN(INPUTS, h, leak="learned")),
        "skip": (f"LeakyRNN skip={skip}", lambda h: mts_kernels.LeakyRNN(INPUTS, h, skip=skip)),
        "dilation": (f"LeakyRNN dilation={dilation}",
                     lambda h: mts_kernels.LeakyRNN(INPUTS, h, dilation=dilation)),
        "clockwork": (f"ClockworkRNN {g} modules",
                      lambda h: None if h % g else mts_kernels.ClockworkRNN(
                          INPUTS, h, periods=list(periods), module_sizes=[h // g] * g)),
        "deep": ("DeepTransitionRNN L=2 shortcut",
                 lambda h: mts_kernels.DeepTransitionRNN(INPUTS, h, transition_depth=2, shortcut=True)),
    }


MODEL_NAMES = tuple(model_specs(1, 1, (1,)))


def fit_hidden(make: Callable[[int], nn.Module], target: int, limit: int = 1024) -> int:
    """The hidden size whose Copier has the parameter count closest to `target`
    (counts grow with H, so the search stops once past it)."""
    best, best_err = None, None
    for h in range(1, limit + 1):
        rnn = make(h)
        if rnn is None:
            continue
        n = count(Copier(rnn, h))
        if best is None or abs(n - target) < best_err:
            best, best_err = h, abs(n - target)
        if n > target:
            break
    return best


def build(names, params: int, skip: int, dilation: int, periods, seed: int):
    """name -> (label, Copier), each with about `params` parameters read."""
    specs = model_specs(skip, dilation, periods)
    models = {}
    for name in names:
        label, make = specs[name]
        h = fit_hidden(make, params)
        torch.manual_seed(seed)  # every model's initial weights from the same stream
        models[name] = (f"{label} (H={h})", Copier(make(h), h))
    return models


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> Tuple[float, float, Tensor]:
    """(accuracy, cross-entropy in nats, accuracy per recall position (REMEMBER,))
    over the recall positions."""
    with torch.no_grad():
        logits = model(x)
    ce = F.cross_entropy(logits.reshape(-1, SYMBOLS), y.reshape(-1))
    per_position = (logits.argmax(-1) == y).float().mean(1)
    return float(per_position.mean()), float(ce), per_position


def train(model: nn.Module, args, eval_set, bar: tqdm):
    """Adam on fresh batches; returns (wall seconds per step, CPU seconds per step
    (all threads: what a shared machine's load does not inflate), training curve,
    eval curve [(step, accuracy, cross-entropy, per-position accuracy)] from step 0)."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 1)  # the same batches for every model
    curve, evals = [], [(0, *evaluate(model, *eval_set))]
    elapsed = cpu = 0.0
    for step in range(1, args.steps + 1):
        x, y = copy_memory_batch(args.batch, args.delay, gen)
        start, start_cpu = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).reshape(-1, SYMBOLS), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        curve.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            evals.append((step, *evaluate(model, *eval_set)))
        bar.update(1)
        bar.set_postfix(loss=f"{curve[-1]:.3f}", acc=f"{evals[-1][1]:.2f}")
    return elapsed / args.steps, cpu / args.steps, curve, evals


def smooth(values, width: int):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= width:
            acc -= values[i - width]
        out.append(acc / min(i + 1, width))
    return out


def plot(results, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ce, ax_acc) = plt.subplots(1, 2, figsize=(12, 5.2))
    for label, (curve, evals) in results.items():
        line, = ax_ce.plot(range(1, len(curve) + 1), smooth(curve, 20), lw=1.2, label=label)
        ax_acc.plot([e[0] for e in evals], [e[1] for e in evals], lw=1.2, color=line.get_color(),
                    marker=".", label=label)
    ax_ce.axhline(CHANCE_CE, color="black", ls="--", lw=1, label="chance (log 8)")
    ax_ce.set_ylabel("training cross-entropy, recall steps (nats, 20-step mean)")
    ax_acc.axhline(CHANCE_ACC, color="black", ls="--", lw=1, label="chance (1/8)")
    ax_acc.set_ylabel("held-out accuracy, recall steps")
    ax_acc.set_ylim(0, 1)
    for ax in (ax_ce, ax_acc):
        ax.set_xlabel("training step")
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"copy memory: {REMEMBER} symbols of {SYMBOLS}, recalled after {args.delay + REMEMBER} "
                 f"steps (batch {args.batch}, Adam lr {args.lr})", fontsize=10)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_models(text: str):
    names = MODEL_NAMES if text == "all" else tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown or not names:
        raise SystemExit(f"copy_memory: --models must be 'all' or a comma-separated subset of "
                         f"{','.join(MODEL_NAMES)}; got {text!r}")
    if "deep" in names and not _has_deep_transition():
        raise SystemExit("copy_memory: this mts_kernels has no DeepTransitionRNN; leave 'deep' out of "
                         f"--models (e.g. --models {','.join(n for n in MODEL_NAMES if n != 'deep')})")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="all", help=f"comma-separated subset of {','.join(MODEL_NAMES)}")
    ap.add_argument("--delay", type=int, default=200, 
                    help="blank steps after the symbols, the delimiter last: each symbol is recalled delay + 10 steps "
                         "after it is shown")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--params", type=int, default=10000, help="parameter count each model is sized to")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--clip", type=float, default=1.0)
    # a dilated layer is `dilation` separate chains (t, t + d, t + 2d, ...), so it can
    # copy only when d divides the lag of delay + 10 = 210 steps: 15 does (14 hops
    # instead of 210); the skip connection keeps the length-one path and needs no
    # such fit, the same 15 for comparison
    ap.add_argument("--skip", type=int, default=15)
    ap.add_argument("--dilation", type=int, default=15)
    ap.add_argument("--periods", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-batch", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    # one thread by default: with two, every time step of the recurrence ends at a
    # barrier where a thread the OS has descheduled holds up the other, and on the
    # shared 2-core machine that made steps 10-25x slower (measured); one thread
    # only loses the second core's share of the small (batch 32) products
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    names = parse_models(args.models)
    periods = [int(p) for p in args.periods.split(",")]
    torch.set_num_threads(max(1, min(args.threads, torch.get_num_threads())))
    os.makedirs(args.out, exist_ok=True)
    eval_set = copy_memory_batch(args.eval_batch, args.delay, torch.Generator().manual_seed(args.seed + 2))
    models = build(names, args.params, args.skip, args.dilation, periods, args.seed)
    rows, results = [], {}
    with tqdm(total=args.steps * len(models), desc="training", unit="step") as bar:
        for name, (label, model) in models.items():
            bar.set_description(label)
            sec, cpu, curve, evals = train(model, args, eval_set, bar)
            acc, ce, per_position = evals[-1][1:]
            results[label] = (curve, evals)
            rows.append((label, count(model), acc, ce, per_position, sec, cpu))
    print(f"\ncopy memory: {REMEMBER} symbols of {SYMBOLS}, recalled {args.delay + REMEMBER} steps later "
          f"(sequences of {2 * REMEMBER + args.delay} steps); {args.steps} Adam steps of batch {args.batch}; "
          f"held-out set of {args.eval_batch}")
    print(f"{'model':<40} {'params':>7} {'accuracy':>9} {'CE (nats)':>10} {'CE / chance':>12} "
          f"{'recalled':>9} {'s/step':>8} {'CPU s/step':>11}")
    print(f"{'chance (remembers nothing)':<40} {'':>7} {CHANCE_ACC:>9.3f} {CHANCE_CE:>10.3f} {1.0:>12.3f} "
          f"{0:>6}/{REMEMBER}")
    for label, n, acc, ce, per_position, sec, cpu in rows:
        recalled = int((per_position >= 0.9).sum())
        print(f"{label:<40} {n:>7} {acc:>9.3f} {ce:>10.3f} {ce / CHANCE_CE:>12.3f} {recalled:>6}/{REMEMBER} "
              f"{sec:>8.4f} {cpu:>11.4f}")
    print("(recalled: recall positions at >= 90% accuracy; CPU s/step: process CPU time, which a "
          "shared machine's load inflates less than the wall-clock s/step)")
    print("\naccuracy per recall position (symbol 1 .. 10):")
    for label, *_, per_position, _, _ in rows:
        print(f"  {label:<40} " + " ".join(f"{a:.2f}" for a in per_position.tolist()))
    path = os.path.join(args.out, "copy_memory.png")
    plot(results, args, path)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
