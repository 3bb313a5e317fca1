"""mts_kernels against its peers, at the same shapes, each peer checked before it is timed.

    python bench/peers.py [--out DIR] [--budget-s S] [--only scan|rnn] [--dry-run]

Scans (h_t = a_t h_{t-1} + x_t, decays in [0.9, 0.999], random inputs):
  ours      mts_kernels.linear_scan and leaky_integrate, (B, T, D), backend cuda
  accelerated-scan (github:proger/accelerated-scan) in its (B, C, T) layout, power-of-two T:
            .warp (CUDA C++, compiled at first import by torch.utils.cpp_extension.load_inline:
            nvcc on the machine, no network, about a minute; bench/gpu_check.sh starts that
            compile early, in the background) and .scalar (Triton)
  fla       flash-linear-attention's HGRN (fla.ops.hgrn chunk_hgrn and fused_recurrent_hgrn,
            Triton): h_t = exp(g_t) h_{t-1} + x_t, i.e. linear_scan with g = log(a)
Recurrent cells, against cuDNN's torch.nn.RNN:
  LeakyRNN(leak=None) loaded from the nn.RNN's state_dict (the same function: outputs and
  gradients compared before timing), and ClockworkRNN H=512 with 8 modules against
  nn.RNN(64, 512) (a different function: timed only, the ratio is the issue's target).

Each peer's forward output (and, for fwd+bwd, its input gradients) is compared with ours on
the same inputs by ||peer - ours|| / ||ours||; a peer over the tolerance is reported as a
mismatch and not timed. A peer that cannot be imported or run is skipped with the reason.
Times are medians of CUDA-event-timed calls after warm-up; GB/s counts each operand read once
and each output written once (linear_scan: 3 elements forward, 6 backward, 9 both).

Writes DIR/peers.json and DIR/peers.md (a RESULTS.md section) and prints the table.
--dry-run runs the same plan on the CPU at tiny shapes (the peers' torch reference
implementations stand in for their GPU kernels where they have one), to check the plan, the
layouts, the checks and the report without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class Skip(Exception):
    """A peer that cannot run here; the message says why."""


# ----------------------------------------------------------------------------- plan

def scan_cases(dry):
    if dry:
        return [dict(B=2, T=256, D=8, dtype=d) for d in ("float32", "bfloat16")] + \
               [dict(B=1, T=1024, D=4, dtype="float32")]
    # The shape, float32 and bfloat16; and a long scan with few channels
    # (B * D = 32: the chunked kernel's look-back regime).
    return [dict(B=8, T=65536, D=1536, dtype=d) for d in ("float32", "bfloat16")] + \
           [dict(B=1, T=1 << 20, D=32, dtype="float32")]


def rnn_cases(dry):
    if dry:
        return [dict(kind="leaky", B=3, T=16, H=8, dtype="float32"),
                dict(kind="clockwork", B=2, T=16, I=4, H=16, modules=4, dtype="float32")]
    out = [dict(kind="leaky", B=64, T=1024, H=h, dtype=d)
           for h in (256, 1024) for d in ("float32", "bfloat16")]
    out += [dict(kind="clockwork", B=32, T=1024, I=64, H=512, modules=8, dtype=d)
            for d in ("float32", "bfloat16")]
    return out


TOL = {"float32": 1e-3, "bfloat16": 3e-2}


def rel_err(a, b):
    a, b = a.double(), b.double()
    den = b.norm().item()
    num = (a - b).norm().item()
    if not math.isfinite(num):
        return float("inf")
    return num / den if den > 0 else num


# ----------------------------------------------------------------------------- timing

class Timer:
    def __init__(self, device, budget_s, dry):
        self.device, self.budget_s, self.dry = device, budget_s, dry

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def median_ms(self, fn):
        """Median of timed calls after warm-up; the number of calls fills budget_s."""
        if self.dry:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        fn()
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        one = max(time.perf_counter() - t0, 1e-6)
        reps = int(min(100, max(5, self.budget_s / one)))
        times = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        return statistics.median(times)


def copy_bandwidth(device, dry):
    if dry:
        return None
    n = 1 << 28  # 1 GiB of float32, read and written
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return 2 * n * 4 / (statistics.median(times) * 1e-3) / 1e9


# ----------------------------------------------------------------------------- scan peers

def _import_accelerated_scan(kind, dry):
    try:
        if dry:
            # Its GPU kernels need a GPU; its torch reference shows the layout and the check.
            from accelerated_scan.ref import scan
        elif kind == "warp":
            from accelerated_scan.warp import scan
        else:
            from accelerated_scan.scalar import scan
    except Exception as e:  # noqa: BLE001 (any import failure is a skip with its reason)
        raise Skip(f"accelerated_scan.{'ref' if dry else kind} not importable: "
                   f"{type(e).__name__}: {e}") from e
    return scan


def _import_hgrn(kind, dry):
    try:
        if dry:
            from fla.ops.hgrn.naive import naive_recurrent_hgrn as fn
        elif kind == "chunk":
            from fla.ops.hgrn import chunk_hgrn as fn
        else:
            from fla.ops.hgrn import fused_recurrent_hgrn as fn
    except Exception as e:  # noqa: BLE001
        raise Skip(f"fla.ops.hgrn ({kind}) not importable: {type(e).__name__}: {e}") from e
    return fn


def scan_impls(dry):
    """name -> factory(case, a, x) returning (forward, its inputs in the peer's layout, the
    layout ("BCT": (B, C, T); "log": the decay passed as log(a); None: ours), and the
    forward's own reference or None for linear_scan's), or raising Skip."""
    import mts_kernels

    backend = "cpu" if dry else "cuda"

    def ours_linear(case, a, x):
        return (lambda a_, x_: mts_kernels.linear_scan(a_, x_, backend=backend)), (a, x), None, None

    def ours_leaky(case, a, x):
        # leaky_integrate(v, alpha) = linear_scan(alpha, (1 - alpha) v): the same bytes moved;
        # its forward is checked against that linear_scan (in float32), its gradients are not
        # compared (they are with respect to other inputs).
        ref = mts_kernels.linear_scan(a.float(), (1 - a.float()) * x.float(), backend=backend)
        return (lambda a_, v_: mts_kernels.leaky_integrate(v_, a_, backend=backend)), (a, x), None, ref

    def acc_scan(kind):
        def make(case, a, x):
            if case["T"] & (case["T"] - 1):
                raise Skip("accelerated-scan needs a power-of-two T")
            scan = _import_accelerated_scan(kind, dry)
            # (B, C, T) contiguous, converted once outside the timed region.
            at, xt = a.transpose(1, 2).contiguous(), x.transpose(1, 2).contiguous()
            return (lambda a_, x_: scan(a_, x_)), (at, xt), "BCT", None
        return make

    def hgrn(kind):
        def make(case, a, x):
            fn = _import_hgrn(kind, dry)
            g = a.float().log().to(a.dtype)
            return (lambda g_, x_: fn(x_, g_)[0]), (g, x), "log", None
        return make

    return {
        "ours linear_scan": ours_linear,
        "ours leaky_integrate": ours_leaky,
        "accelerated-scan warp": acc_scan("warp"),
        "accelerated-scan scalar": acc_scan("scalar"),
        "fla chunk_hgrn": hgrn("chunk"),
        "fla fused_recurrent_hgrn": hgrn("fused_recurrent"),
    }


def _to_btd(t, layout):
    return t.transpose(1, 2) if layout == "BCT" else t


def run_scan_case(case, device, timer, copy_gbps, rows):
    B, T, D = case["B"], case["T"], case["D"]
    dtype = getattr(torch, case["dtype"])
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = (0.9 + 0.099 * torch.rand(B, T, D, generator=gen)).to(device=device, dtype=dtype)
    x = torch.randn(B, T, D, generator=gen).to(device=device, dtype=dtype)
    gout = torch.randn(B, T, D, generator=gen).to(device=device, dtype=dtype)
    elem = torch.tensor([], dtype=dtype).element_size()
    n = B * T * D
    bytes_moved = {"fwd": 3 * n * elem, "fwd+bwd": 9 * n * elem}
    import mts_kernels

    backend = "cpu" if device.type == "cpu" else "cuda"
    a_ref, x_ref = a.clone().requires_grad_(), x.clone().requires_grad_()
    h_ref = mts_kernels.linear_scan(a_ref, x_ref, backend=backend)
    da_ref, dx_ref = torch.autograd.grad(h_ref, (a_ref, x_ref), gout)
    h_ref = h_ref.detach()
    ours_ms = {}
    for name, make in scan_impls(device.type == "cpu").items():
        base = dict(group="scan", case=f"({B}, {T}, {D}) {case['dtype']}", impl=name, **case)
        try:
            fwd, inputs, layout, own_ref = make(case, a, x)
            leaves = tuple(t.detach().clone().requires_grad_() for t in inputs)
            h = fwd(*leaves)
            err = rel_err(_to_btd(h, layout), h_ref if own_ref is None else own_ref)
            del own_ref
            g_peer = _to_btd(gout, layout).contiguous() if layout == "BCT" else gout
            grads = torch.autograd.grad(h, leaves, g_peer)
            d0 = _to_btd(grads[0], layout)
            # d/dg = d/da * a for HGRN's g = log(a).
            if name == "ours leaky_integrate":
                gerr = 0.0
            else:
                d0_ours = da_ref * a if layout == "log" else da_ref
                gerr = max(rel_err(d0, d0_ours), rel_err(_to_btd(grads[1], layout), dx_ref))
            del h, grads, d0
            tol = TOL[case["dtype"]]
            check = f"fwd {err:.1e}, grads {gerr:.1e}"
            if not (err <= tol and gerr <= tol):
                rows.append(dict(base, status="MISMATCH", check=check, tol=tol))
                continue
            for direction in ("fwd", "fwd+bwd"):
                if direction == "fwd":
                    with torch.no_grad():
                        fn = lambda: fwd(*inputs)  # noqa: E731
                        ms = timer.median_ms(fn)
                else:
                    fn = lambda: torch.autograd.grad(fwd(*leaves), leaves, g_peer)  # noqa: E731
                    ms = timer.median_ms(fn)
                gbps = bytes_moved[direction] / (ms * 1e-3) / 1e9
                if name == "ours linear_scan":
                    ours_ms[direction] = ms
                rows.append(dict(base, status="ok", check=check, direction=direction, ms=ms, GBps=gbps,
                                 of_copy=(gbps / copy_gbps) if copy_gbps else None,
                                 vs_ours=(ms / ours_ms[direction]) if direction in ours_ms else None))
            del leaves, inputs, fwd
        except Skip as e:
            rows.append(dict(base, status="skipped", reason=str(e)))
        except Exception as e:  # noqa: BLE001 (a peer's failure must not stop the others)
            rows.append(dict(base, status="error", reason=f"{type(e).__name__}: {e}",
                             trace=traceback.format_exc(limit=3)))
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- recurrent cells

def run_rnn_case(case, device, timer, rows):
    import mts_kernels

    dtype = getattr(torch, case["dtype"])
    B, T, H = case["B"], case["T"], case["H"]
    I = case.get("I", H)
    torch.manual_seed(0)
    label = f"{case['kind']} B={B} T={T} I={I} H={H} {case['dtype']}"
    x = torch.randn(T, B, I, device=device, dtype=dtype)
    ref = torch.nn.RNN(I, H).to(device=device, dtype=dtype)
    impls = {"cuDNN nn.RNN" if device.type == "cuda" else "nn.RNN": ref}
    if case["kind"] == "leaky":
        impls["ours LeakyRNN"] = mts_kernels.LeakyRNN.from_torch(ref).to(device=device, dtype=dtype)
    else:
        k = case["modules"]
        impls[f"ours ClockworkRNN ({k} modules)"] = mts_kernels.ClockworkRNN(
            I, H, periods=[2 ** i for i in range(k)], module_sizes=[H // k] * k).to(device=device, dtype=dtype)
    ref_ms = None
    out_ref = grads_ref = None
    for name, mod in impls.items():
        base = dict(group="rnn", case=label, impl=name, **case)
        try:
            xi = x.clone().requires_grad_()
            out, _ = mod(xi)
            gout = torch.ones_like(out)
            params = [p for p in mod.parameters() if p.requires_grad]
            grads = torch.autograd.grad(out, [xi] + params, gout)
            check = "reference" if out_ref is None else "timed only (a different function)"
            if out_ref is None:
                out_ref, grads_ref = out.detach(), grads
            elif case["kind"] == "leaky":
                errs = [rel_err(out, out_ref)] + [rel_err(g, r) for g, r in zip(grads, grads_ref)]
                check = f"out/grads max {max(errs):.1e}"
                # cuDNN may run float32 GEMMs in TF32: the tolerance allows for it.
                tol = 5e-3 if case["dtype"] == "float32" else 5e-2
                if max(errs) > tol:
                    rows.append(dict(base, status="MISMATCH", check=check, tol=tol))
                    continue
            del out, grads

            def step():
                o, _ = mod(xi)
                torch.autograd.grad(o, [xi] + params, gout)

            ms = timer.median_ms(step)
            if ref_ms is None:
                ref_ms = ms
            rows.append(dict(base, status="ok", check=check, direction="fwd+bwd", ms=ms,
                             vs_ours=None, vs_ref=ms / ref_ms))
        except Skip as e:
            rows.append(dict(base, status="skipped", reason=str(e)))
        except Exception as e:  # noqa: BLE001
            rows.append(dict(base, status="error", reason=f"{type(e).__name__}: {e}",
                             trace=traceback.format_exc(limit=3)))


# ----------------------------------------------------------------------------- report

def markdown(rows, meta):
    lines = [f"### Peers on {meta['device']} ({meta['when']})", "",
             f"torch {meta['torch']}, mts_kernels {meta['mts_kernels']}; copy bandwidth "
             f"{meta['copy_GBps']:.0f} GB/s" if meta.get("copy_GBps") else
             f"torch {meta['torch']}, mts_kernels {meta['mts_kernels']} (dry run: CPU, tiny shapes, "
             "times meaningless)", ""]
    lines += ["| case | impl | dir | median ms | GB/s | of copy | vs ours / vs cuDNN | check |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['impl']} | | {r['status']} | | | | "
                         f"{r.get('reason') or r.get('check', '')} |")
            continue
        ratio = r.get("vs_ours") if r["group"] == "scan" else r.get("vs_ref")
        lines.append("| {} | {} | {} | {:.3f} | {} | {} | {} | {} |".format(
            r["case"], r["impl"], r["direction"], r["ms"],
            f"{r['GBps']:.0f}" if r.get("GBps") else "", f"{100 * r['of_copy']:.0f}%" if r.get("of_copy") else "",
            f"{ratio:.2f}x" if ratio else "", r["check"]))
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="directory for peers.json and peers.md")
    ap.add_argument("--budget-s", type=float, default=0.5, help="timed seconds per measurement")
    ap.add_argument("--only", choices=("scan", "rnn"))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes (no GPU needed)")
    args = ap.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("peers: no CUDA GPU (use --dry-run to check the plan on the CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if dry else "cuda")
    if not dry:
        torch.backends.cuda.matmul.allow_tf32 = False  # the same float32 GEMMs as ours
    import mts_kernels

    timer = Timer(device, args.budget_s, dry)
    copy_gbps = copy_bandwidth(device, dry)
    rows = []
    t0 = time.time()
    if args.only in (None, "scan"):
        for case in scan_cases(dry):
            run_scan_case(case, device, timer, copy_gbps, rows)
            print(f"[peers +{time.time() - t0:.0f}s] scan {case} done", flush=True)
    if args.only in (None, "rnn"):
        for case in rnn_cases(dry):
            run_rnn_case(case, device, timer, rows)
            print(f"[peers +{time.time() - t0:.0f}s] rnn {case} done", flush=True)
    meta = dict(device=torch.cuda.get_device_name() if not dry else "cpu (dry run)",
                when=time.strftime("%Y-%m-%d"), torch=torch.__version__,
                mts_kernels=getattr(mts_kernels, "__version__", "?"), copy_GBps=copy_gbps, dry_run=dry)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1, default=str))
    md = markdown(rows, meta)
    (out / "peers.md").write_text(md)
    print(md)
    errors = [r for r in rows if r["status"] in ("error", "MISMATCH") and r["impl"].startswith("ours")]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
