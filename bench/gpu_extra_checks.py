"""GPU checks beyond the CUDA tests, run by bench/gpu_check.sh (and bench/sanitize.sh).

    python bench/gpu_extra_checks.py workload [--core]   # tiny shapes over every CUDA path
    python bench/gpu_extra_checks.py graphs        # CUDA-graph capture + replay vs eager
    python bench/gpu_extra_checks.py concurrency   # chunked scan beside a long kernel
    python bench/gpu_extra_checks.py all           # the three, one process
    python bench/gpu_extra_checks.py workload --dry-run   # the same plan on the CPU

workload: what compute-sanitizer (memcheck, racecheck, synccheck) runs, so tiny: the
scan's two algorithms (one thread per channel: T < 64; chunked look-back: several
chunks), forward and reverse, per-channel and per-step decay, float32 and bfloat16,
linear_scan and leaky_integrate, with and without lengths, forward and backward; and
leaky_rnn in each CUDA time loop (MTS_KERNELS_RNN_PERSISTENT unset: the persistent
batch plan; grid: the cooperative grid plan; 0: the cuBLAS loop), with leak and skip,
forward and backward; clockwork_rnn's fused op on the CUDA backend (each of those
three modes: its persistent kernel or its cuBLAS loop) and on Triton, with leak and lengths, and deep_transition_rnn's CUDA time loops (the same three modes:
its persistent kernel in one block per batch block, on the grid, and the cuBLAS loop),
forward and backward. Every result is compared with mts_kernels.reference in float64.

graphs: scan, leaky_rnn (each time loop), clockwork_rnn (CUDA in each time loop, Triton) and
deep_transition_rnn (CUDA, each time loop) forward and backward captured in one
torch.cuda.CUDAGraph, replayed on new inputs copied into the static ones, compared with
eager calls on those inputs (bit for bit: the same kernels on the same data).

concurrency: the chunked scan (many tiles, persistent grid sized for an idle GPU)
repeated on one stream while matrix products keep most SMs busy on another, so some of
its blocks start late; its look-back must neither deadlock nor read an unpublished
tile. Each repetition is compared with the first one run alone.

Exit status 0 when every check passed; each failure is printed. --dry-run runs only
the workload's comparisons, with backend="cpu" (no GPU needed: checks the plan).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mts_kernels  # noqa: E402
from mts_kernels import reference  # noqa: E402

FAILURES: list[str] = []


def check(name, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        FAILURES.append(f"{name} {detail}")


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    den = b.norm().item()
    return (a - b).norm().item() / (den if den > 0 else 1.0)


TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
RNN_MODES = {"persistent-batch": None, "persistent-grid": "grid", "cublas": "0"}


def set_rnn_mode(mode):
    v = RNN_MODES[mode]
    if v is None:
        os.environ.pop("MTS_KERNELS_RNN_PERSISTENT", None)
    else:
        os.environ["MTS_KERNELS_RNN_PERSISTENT"] = v


# ----------------------------------------------------------------------------- workload

def scan_shapes():
    # (B, T, D): T < 64 takes the one-thread-per-channel kernel; T = 600 with B * D = 40
    # channels the chunked one (3 forward chunks of 240, 5 backward of 120, 2 lane groups).
    return {"sequential": (3, 40, 8), "chunked": (2, 600, 20)}


def scan_workload(device, backend, core):
    g = torch.Generator().manual_seed(0)
    # core (racecheck, synccheck: the slow tools): linear_scan without lengths. The
    # leaky variant changes only per-element math, lengths only which steps are
    # identity maps: neither changes shared-memory use or synchronisation.
    ops = ("linear_scan",) if core else ("linear_scan", "leaky_integrate")
    for algo, (B, T, D) in scan_shapes().items():
        for dtype in (torch.float32, torch.bfloat16):
            for op in ops:
                for per_channel in (False, True):
                    for reverse in (False, True):
                        for with_lengths in ((False,) if core else (False, True)):
                            a64 = torch.rand(D if per_channel else (B, T, D), generator=g,
                                             dtype=torch.float64) * 0.9 + 0.05
                            x64 = torch.randn(B, T, D, generator=g, dtype=torch.float64)
                            h064 = torch.randn(B, D, generator=g, dtype=torch.float64)
                            g64 = torch.randn(B, T, D, generator=g, dtype=torch.float64)
                            lengths = [T, T // 2, 0][:B] if with_lengths else None
                            # The reference sees the inputs as rounded to dtype: what is
                            # compared is the kernels' arithmetic, not the input rounding.
                            a64, x64, h064, g64 = (t.to(dtype).double() for t in (a64, x64, h064, g64))

                            def run(dev, dt, fn, **kw):
                                a, x, h0 = (t.to(dev, dt).requires_grad_() for t in (a64, x64, h064))
                                if op == "linear_scan":
                                    h = fn(a, x, h0, reverse=reverse, lengths=lengths, **kw)
                                else:
                                    h = fn(x, a, h0, reverse=reverse, lengths=lengths, **kw)
                                grads = torch.autograd.grad(h, (a, x, h0), g64.to(dev, dt))
                                return [h] + list(grads)

                            ours = run(device, dtype, getattr(mts_kernels, op), backend=backend)
                            ref = run("cpu", torch.float64, getattr(reference, op))
                            err = max(rel(o, r) for o, r in zip(ours, ref))
                            check(f"scan {algo} {op} {str(dtype)[6:]} per_channel={per_channel} "
                                  f"reverse={reverse} lengths={with_lengths}",
                                  err < TOL[dtype], f"(max rel err {err:.1e})")


def rnn_case(gen):
    T, B, H = 12, 3, 16
    r = lambda *s, scale=1.0: torch.randn(*s, generator=gen, dtype=torch.float64) * scale  # noqa: E731
    return dict(p=r(T, B, H), w=r(H, H, scale=H ** -0.5), ws=r(H, H, scale=H ** -0.5),
                h0=r(B, H), a=torch.rand(H, generator=gen, dtype=torch.float64), g=r(T, B, H))


def rnn_run(c, dev, dt, fn, *, alpha_on, skip, reverse, **kw):
    ts = [c[k].to(dev, dt).requires_grad_() for k in ("p", "w", "h0", "a", "ws")]
    p, w, h0, a, ws = ts
    h = fn(p, w, h0, alpha=a if alpha_on else None, weight_skip=ws if skip else None,
           skip=skip, reverse=reverse, **kw)
    used = [p, w, h0] + ([a] if alpha_on else []) + ([ws] if skip else [])
    return [h] + list(torch.autograd.grad(h, used, c["g"].to(dev, dt)))


def rnn_workload(device, backend):
    gen = torch.Generator().manual_seed(1)
    modes = RNN_MODES if device != "cpu" else {"cpu": None}
    for mode in modes:
        if device != "cpu":
            set_rnn_mode(mode)
        for alpha_on, skip, reverse in [(False, None, False), (True, 3, True)]:
            c = rnn_case(gen)
            ours = rnn_run(c, device, torch.float32, mts_kernels.leaky_rnn, alpha_on=alpha_on, skip=skip,
                           reverse=reverse, backend=backend)
            ref = rnn_run(c, "cpu", torch.float64, reference.leaky_rnn, alpha_on=alpha_on, skip=skip,
                          reverse=reverse)
            err = max(rel(o, r) for o, r in zip(ours, ref))
            check(f"leaky_rnn {mode} alpha={alpha_on} skip={skip} reverse={reverse}", err < 1e-4,
                  f"(max rel err {err:.1e})")
    os.environ.pop("MTS_KERNELS_RNN_PERSISTENT", None)


CLOCK = dict(periods=[1, 2, 5], module_sizes=[5, 4, 7], t0=3)


def clockwork_case(gen):
    T, B, H = 13, 3, sum(CLOCK["module_sizes"])
    r = lambda *s, scale=1.0: torch.randn(*s, generator=gen, dtype=torch.float64) * scale  # noqa: E731
    return dict(p=r(T, B, H), w=r(H, H, scale=H ** -0.5), h0=r(B, H),
                a=torch.rand(H, generator=gen, dtype=torch.float64), g=r(T, B, H))


def clockwork_run(c, dev, dt, fn, *, alpha_on, lengths, **kw):
    ts = [c[k].to(dev, dt).requires_grad_() for k in ("p", "w", "h0", "a")]
    p, w, h0, a = ts
    h = fn(p, w, h0, alpha=a if alpha_on else None, lengths=lengths, **CLOCK, **kw)
    used = [p, w, h0] + ([a] if alpha_on else [])
    return [h] + list(torch.autograd.grad(h, used, c["g"].to(dev, dt)))


def clockwork_workload(device, backends):
    """clockwork_rnn's fused op on each (backend, RNN_MODES mode) (CUDA: the
    persistent kernel's batch or grid plan, or the per-step cuBLAS GEMMs and
    pointwise kernels; Triton: the persistent loop), with and without leak and
    lengths, forward and backward."""
    gen = torch.Generator().manual_seed(2)
    ref_fn = lambda p, w, h0, periods, module_sizes, **k: reference.clockwork_rnn(  # noqa: E731
        p, w, h0, periods, module_sizes, **k)
    for backend, mode in backends:
        for alpha_on, lengths in [(False, None), (True, [13, 0, 6])]:
            c = clockwork_case(gen)
            if mode is not None:
                set_rnn_mode(mode)
            try:
                ours = clockwork_run(c, device, torch.float32, mts_kernels.clockwork_rnn, alpha_on=alpha_on,
                                     lengths=lengths, backend=backend)
            finally:
                os.environ.pop("MTS_KERNELS_RNN_PERSISTENT", None)
            ref = clockwork_run(c, "cpu", torch.float64, ref_fn, alpha_on=alpha_on, lengths=lengths)
            err = max(rel(o, r) for o, r in zip(ours, ref))
            check(f"clockwork_rnn {backend} {mode or ''} alpha={alpha_on} lengths={lengths}", err < 1e-4,
                  f"(max rel err {err:.1e})")


def deep_workload(device, backend, mode=None):
    """deep_transition_rnn's CUDA time loop of `mode` (RNN_MODES: the persistent
    kernel's batch or grid plan, or the cuBLAS loop), depth 2 with shortcut and
    leak, reverse with lengths, forward and backward."""
    gen = torch.Generator().manual_seed(4)
    T, B, H, L = 9, 3, 16, 2
    r = lambda *s, scale=1.0: torch.randn(*s, generator=gen, dtype=torch.float64) * scale  # noqa: E731
    c = dict(p=r(T, B, H), w=r(L, H, H, scale=H ** -0.5), b=r(L, H, scale=0.3), u=r(H, H, scale=H ** -0.5),
             h0=r(B, H), a=torch.rand(H, generator=gen, dtype=torch.float64), g=r(T, B, H))

    def run(dev, dt, **kw):
        ts = [c[k].to(dev, dt).requires_grad_() for k in ("p", "w", "h0", "b", "u", "a")]
        p, w, h0, b, u, a = ts
        fn = mts_kernels.deep_transition_rnn if kw else reference.deep_transition_rnn
        h = fn(p, w, h0, bias_hh=b, weight_shortcut=u, alpha=a, reverse=True, lengths=[9, 0, 4], **kw)
        return [h] + list(torch.autograd.grad(h, ts, c["g"].to(dev, dt)))

    if mode is not None:
        set_rnn_mode(mode)
    try:
        ours = run(device, torch.float32, backend=backend)
    finally:
        os.environ.pop("MTS_KERNELS_RNN_PERSISTENT", None)
    ref = run("cpu", torch.float64)
    err = max(rel(o, r_) for o, r_ in zip(ours, ref))
    check(f"deep_transition_rnn {backend} {mode or ''} depth 2 shortcut leak reverse lengths", err < 1e-4,
          f"(max rel err {err:.1e})")


def workload(dry, core=False):
    device, backend = ("cpu", "cpu") if dry else ("cuda", "cuda")
    if not dry:
        torch.backends.cuda.matmul.allow_tf32 = False
    scan_workload(device, backend, core)
    rnn_workload(device, backend)
    clockwork_workload(device, [("cpu", None)] if dry else
                       [("cuda", mode) for mode in RNN_MODES] + [("triton", None)])
    for mode in [None] if dry else list(RNN_MODES):
        deep_workload(device, backend, mode)


# ----------------------------------------------------------------------------- graphs

def graph_check(name, make_inputs, step):
    """Captures step(static inputs) -> tensors, replays it on fresh inputs, compares
    with an eager step on the same inputs."""
    static = make_inputs(0)
    for _ in range(2):  # warm-up on a side stream, as torch.cuda.graph expects
        step(*static)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step(*static)
    for seed in (1, 2):
        fresh = make_inputs(seed)
        with torch.no_grad():
            for s, f in zip(static, fresh):
                s.copy_(f)
        graph.replay()
        torch.cuda.synchronize()
        eager = step(*fresh)
        same = all(torch.equal(o, e) for o, e in zip(outs, eager))
        err = max(rel(o, e) for o, e in zip(outs, eager))
        check(f"graph {name} replay {seed}", same or err < 1e-6, f"(bitwise {same}, rel err {err:.1e})")


def graphs():
    torch.backends.cuda.matmul.allow_tf32 = False
    for algo, (B, T, D) in scan_shapes().items():
        def make(seed, B=B, T=T, D=D):
            g = torch.Generator().manual_seed(seed)
            a = (torch.rand(B, T, D, generator=g) * 0.9).cuda().requires_grad_()
            x = torch.randn(B, T, D, generator=g).cuda().requires_grad_()
            go = torch.randn(B, T, D, generator=g).cuda()
            return a, x, go

        def step(a, x, go):
            h = mts_kernels.linear_scan(a, x, backend="cuda")
            da, dx = torch.autograd.grad(h, (a, x), go)
            return h.detach(), da, dx

        try:
            graph_check(f"linear_scan {algo}", make, step)
        except Exception as e:  # noqa: BLE001
            check(f"graph linear_scan {algo}", False, f"{type(e).__name__}: {e}")
    for mode in RNN_MODES:
        set_rnn_mode(mode)

        def make(seed):
            c = rnn_case(torch.Generator().manual_seed(seed))
            ts = [c[k].float().cuda().requires_grad_() for k in ("p", "w", "h0", "a", "ws")]
            return ts + [c["g"].float().cuda()]

        def step(p, w, h0, a, ws, go):
            h = mts_kernels.leaky_rnn(p, w, h0, alpha=a, weight_skip=ws, skip=3, backend="cuda")
            return [h.detach()] + list(torch.autograd.grad(h, (p, w, h0, a, ws), go))

        try:
            graph_check(f"leaky_rnn {mode}", make, step)
        except Exception as e:  # noqa: BLE001
            check(f"graph leaky_rnn {mode}", False, f"{type(e).__name__}: {e}")
    os.environ.pop("MTS_KERNELS_RNN_PERSISTENT", None)
    for backend, mode in [("cuda", mode) for mode in RNN_MODES] + [("triton", "persistent-batch")]:
        set_rnn_mode(mode)

        def make(seed):
            c = clockwork_case(torch.Generator().manual_seed(seed))
            return [c[k].float().cuda().requires_grad_() for k in ("p", "w", "h0", "a")] + [c["g"].float().cuda()]

        def step(p, w, h0, a, go, backend=backend):
            h = mts_kernels.clockwork_rnn(p, w, h0, alpha=a, backend=backend, **CLOCK)
            return [h.detach()] + list(torch.autograd.grad(h, (p, w, h0, a), go))

        name = f"clockwork_rnn {backend}" + (f" {mode}" if backend == "cuda" else "")
        try:
            graph_check(name, make, step)
        except Exception as e:  # noqa: BLE001
            check(f"graph {name}", False, f"{type(e).__name__}: {e}")
    os.environ.pop("MTS_KERNELS_RNN_PERSISTENT", None)

    def make_deep(seed):
        g = torch.Generator().manual_seed(seed)
        T, B, H = 9, 3, 16
        ts = [torch.randn(*s, generator=g) * f for s, f in
              (((T, B, H), 1.0), ((2, H, H), H ** -0.5), ((B, H), 1.0), ((H, H), H ** -0.5))]
        return [t.cuda().requires_grad_() for t in ts] + [torch.randn(T, B, H, generator=g).cuda()]

    def step_deep(p, w, h0, u, go):
        h = mts_kernels.deep_transition_rnn(p, w, h0, weight_shortcut=u, backend="cuda")
        return [h.detach()] + list(torch.autograd.grad(h, (p, w, h0, u), go))

    for mode in RNN_MODES:
        set_rnn_mode(mode)
        try:
            graph_check(f"deep_transition_rnn cuda {mode}", make_deep, step_deep)
        except Exception as e:  # noqa: BLE001
            check(f"graph deep_transition_rnn cuda {mode}", False, f"{type(e).__name__}: {e}")
    os.environ.pop("MTS_KERNELS_RNN_PERSISTENT", None)


# ----------------------------------------------------------------------------- concurrency

def concurrency(reps=20):
    g = torch.Generator().manual_seed(3)
    B, T, D = 1, 1 << 19, 32  # 2185 chunked tiles: far more than one persistent grid's blocks
    a = (torch.rand(B, T, D, generator=g) * 0.5 + 0.5).cuda()
    x = torch.randn(B, T, D, generator=g).cuda()
    alone = mts_kernels.linear_scan(a, x, backend="cuda")
    ref = reference.linear_scan(a[:, :4096].double().cpu(), x[:, :4096].double().cpu())
    check("concurrency: chunked scan alone vs reference (first 4096 steps)",
          rel(alone[:, :4096], ref) < 1e-5)
    side = torch.cuda.Stream()
    m = torch.randn(8192, 8192, device="cuda")
    torch.cuda.synchronize()
    t0 = time.time()
    worst = 0.0
    for i in range(reps):
        with torch.cuda.stream(side):
            for _ in range(4):  # ~10 ms of products holding most SMs
                m2 = m @ m
        h = mts_kernels.linear_scan(a, x, backend="cuda")
        worst = max(worst, rel(h, alone))
    torch.cuda.synchronize()
    del m2
    check(f"concurrency: {reps} chunked scans beside matrix products on another stream", worst == 0.0,
          f"(max rel diff from the lone run {worst:.1e}, {time.time() - t0:.1f}s)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("workload", "graphs", "concurrency", "all"))
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--core", action="store_true",
                    help="workload: the subset the slow sanitizer tools run (see scan_workload)")
    args = ap.parse_args(argv)
    if args.dry_run and args.what != "workload":
        ap.error("--dry-run runs the workload only")
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_extra_checks: no CUDA GPU", file=sys.stderr)
        return 2
    steps = {"workload": lambda: workload(args.dry_run, args.core), "graphs": graphs, "concurrency": concurrency}
    for name, fn in steps.items():
        if args.what in (name, "all"):
            print(f"== {name}", flush=True)
            try:
                fn()
            except Exception as e:  # noqa: BLE001 (report and go on to the next check)
                traceback.print_exc()
                FAILURES.append(f"{name}: {type(e).__name__}: {e}")
    print(f"gpu_extra_checks {args.what}: {len(FAILURES)} failure(s)")
    for f in FAILURES:
        print(f"  FAIL {f}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
