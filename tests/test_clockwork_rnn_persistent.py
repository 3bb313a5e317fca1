"""The persistent CUDA kernel of clockwork_rnn's fused op (csrc/clockwork/clockwork_persistent.h).

On the CPU, through the test hooks of clockwork_rnn_persistent_emulate_cpu.cpp: the
kernel program itself (its on-device clock, block-upper-triangular products, holds,
lengths, one barrier per step), run on the host in the geometry the CUDA launcher's
plan picks for a described device (one block, batch blocks, units split over
grid-synchronised blocks by force or for want of shared memory), blocks and threads in
both orders, against the CPU op. On a GPU (`cuda` marker): the CUDA op with the
persistent kernel, forced onto the grid path, and with the cuBLAS loop."""

import pytest
import torch

from _rnn_util import (assert_low_precision_close, assert_outputs_close, check_persistent_ran, cuda_kernel_names,
                       set_persistent_mode)
from test_clockwork_fused import CASES, F64, _op_call

OPS = torch.ops.mts_kernels
EMU_FWD = getattr(OPS, "_clockwork_rnn_persistent_emulate_fwd", None)
EMU_BWD = getattr(OPS, "_clockwork_rnn_persistent_emulate_bwd", None)
PLAN = getattr(OPS, "_persistent_plan", None)
needs_hook = pytest.mark.skipif(EMU_FWD is None, reason="needs the compiled test hook")

GEOMETRIES = ["one block", "batch blocks", "grid forced", "grid by shared memory"]


def _device(name, B, H, elem=8):
    """(sms, smem_bytes, force_grid) and what the plan must give for it."""
    if name == "one block":
        return (1, 1 << 20, False), dict(unit_blocks=1, batch_blocks=1, grid_sync=0)
    if name == "batch blocks":
        return (B, 1 << 20, False), dict(unit_blocks=1, batch_blocks=B, grid_sync=0)
    if name == "grid forced":
        return (6, 1 << 20, True), dict(grid_sync=1)
    # room for 3-unit tiles and 2 staged rows only: the units split without force
    return (16, elem * (3 * (H | 1) + 2 * H), False), dict(grid_sync=1)


def _plan(B, H, sms, smem, force, threads, elem=8):
    out = PLAN(B, H, 1, False, force, elem, sms, smem, True, threads).tolist()
    return dict(zip(["units", "unit_blocks", "rows", "batch_blocks", "grid_sync", "smem", "fits"], out))


def _both(fwd, bwd, args, g):
    h, u = fwd(*args)
    p, w, h0, alpha = args[:4]
    return [h, u, *bwd(g.to(h.dtype), w, h, u, h0, alpha, *args[4:])]


NAMES = ["h", "u", "dp", "dweight_hh", "dh0", "dalpha"]


@needs_hook
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("sizes,periods,t0,nl,leak,lengths", CASES)
def test_kernel_program_matches_cpu_op(geometry, sizes, periods, t0, nl, leak, lengths):
    T, B, H = 11, 4, sum(sizes)
    args = _op_call(61, T, B, sizes, periods, t0, nl, leak, lengths)
    (sms, smem, force), want_geo = _device(geometry, B, H)
    geo = _plan(B, H, sms, smem, force, 5)
    assert geo["fits"] == 1 and {k: geo[k] for k in want_geo} == want_geo, geo
    g = torch.randn(T, B, H, generator=torch.Generator().manual_seed(62), dtype=F64)
    want = _both(OPS.clockwork_rnn_fwd, OPS.clockwork_rnn_bwd, args, g)
    if lengths is None or max(lengths) > 0:  # the gradients compared are not trivially zero
        assert want[2].abs().max() > 0 and want[3].abs().max() > 0
    for reverse_order in (False, True):
        extra = (sms, smem, force, reverse_order, 5)
        got = _both(lambda *a: EMU_FWD(*a, *extra), lambda *a: EMU_BWD(*a, *extra), args, g)
        assert_outputs_close(got, want, NAMES, f" ({reverse_order=})")


@needs_hook
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernel_program_low_precision_runs_in_float32(dtype):
    args = _op_call(63, 9, 5, [3, 4, 2], [1, 2, 3], 1, "tanh", True, [9, 4, 0, 9, 1], dtype=dtype)
    g = torch.randn(9, 5, 9, generator=torch.Generator().manual_seed(64))
    want = _both(OPS.clockwork_rnn_fwd, OPS.clockwork_rnn_bwd, args, g)
    extra = (3, 1 << 20, True, True, 32)  # float32 compute
    got = _both(lambda *a: EMU_FWD(*a, *extra), lambda *a: EMU_BWD(*a, *extra), args, g)
    assert_low_precision_close(got, want, NAMES, dtype)


@needs_hook
@pytest.mark.parametrize("T,B,sizes,periods", [(1, 3, [2, 2], [1, 2]), (6, 1, [1], [1]), (5, 2, [1, 1, 1], [1, 2, 3]),
                                               (4, 1, [64], [1])])
def test_kernel_program_edge_sizes(T, B, sizes, periods):
    args = _op_call(65, T, B, sizes, periods, 0, "tanh", True, None)
    g = torch.randn(T, B, sum(sizes), generator=torch.Generator().manual_seed(66), dtype=F64)
    want = _both(OPS.clockwork_rnn_fwd, OPS.clockwork_rnn_bwd, args, g)
    for force in (False, True):
        extra = (4, 1 << 20, force, True, 3)
        got = _both(lambda *a: EMU_FWD(*a, *extra), lambda *a: EMU_BWD(*a, *extra), args, g)
        assert_outputs_close(got, want, NAMES)


@needs_hook
def test_kernel_program_refuses_what_does_not_fit():
    args = _op_call(67, 3, 2, [3, 3], [1, 2], 0, "tanh", False, None)
    with pytest.raises(RuntimeError, match="the plan does not fit"):
        EMU_FWD(*args, 4, 64, False, False, 8)


# --- on a GPU -----------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("mode", [None, "grid", "0"])
@pytest.mark.parametrize("sizes,periods,t0,nl,leak,lengths", CASES)
def test_cuda_persistent_matches_cpu_op(monkeypatch, mode, sizes, periods, t0, nl, leak, lengths):
    set_persistent_mode(monkeypatch, mode)
    T, B, H = 11, 4, sum(sizes)
    args = _op_call(68, T, B, sizes, periods, t0, nl, leak, lengths, dtype=torch.float32)
    g = torch.randn(T, B, H, generator=torch.Generator().manual_seed(69))
    want = _both(OPS.clockwork_rnn_fwd, OPS.clockwork_rnn_bwd, args, g)
    dev = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    got = []
    names = cuda_kernel_names(lambda: got.extend(_both(OPS.clockwork_rnn_fwd, OPS.clockwork_rnn_bwd, dev, g.cuda())))
    check_persistent_ran(names, mode)
    assert_outputs_close(got, want, NAMES, rtol=2e-5, atol=2e-5)
