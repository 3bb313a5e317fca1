"""The persistent CUDA kernel of deep_transition_rnn (csrc/deep/deep_persistent.h).

On the CPU, through the test hooks of deep_transition_rnn_persistent_emulate_cpu.cpp:
the kernel program itself, run on the host with the geometry the CUDA launcher's
plan picks for a described device (one block, batch blocks, units split over
grid-synchronised blocks, by force or for want of shared memory), blocks and
threads in both orders, against the CPU op; and the plan's invariants. On a GPU
(`cuda` marker): the CUDA op with the persistent kernel, forced onto the grid
path, and with the cuBLAS loop, against the CPU op."""

import pytest
import torch

from _rnn_util import (assert_low_precision_close, assert_outputs_close, check_persistent_ran, cuda_kernel_names,
                       set_persistent_mode)
from test_deep_transition_rnn import GPU_LOOP_CASES, _both_ways, _op_args

OPS = torch.ops.mts_kernels
EMU_FWD = getattr(OPS, "_deep_transition_rnn_persistent_emulate_fwd", None)
EMU_BWD = getattr(OPS, "_deep_transition_rnn_persistent_emulate_bwd", None)
PLAN = getattr(OPS, "_persistent_plan", None)
needs_hook = pytest.mark.skipif(EMU_FWD is None, reason="needs the compiled test hook")

NAMES = ["h", "s", "dp", "dweight_hh", "dbias_hh", "dh0", "dweight_shortcut", "dalpha"]


def _plan(B, H, L, shortcut, *, force_grid=False, elem=8, sms=1, smem=1 << 20, cooperative=True, threads=5):
    # the forward's plan: L matrices (+ U), the shortcut's partials
    out = PLAN(B, H, L + shortcut, shortcut, force_grid, elem, sms, smem, cooperative, threads).tolist()
    return dict(zip(["units", "unit_blocks", "rows", "batch_blocks", "grid_sync", "smem", "fits"], out))


def _tile_smem(H, L, shortcut, units, rows, elem=8):
    return elem * ((L + shortcut) * units * (H | 1) + rows * H + (rows * units if shortcut else 0))


# geometry name -> (device description for B=4, H=7, the plan it must give)
def _device(name, L, shortcut):
    if name == "one block":
        return dict(sms=1, smem=1 << 20, force_grid=False), dict(unit_blocks=1, batch_blocks=1, grid_sync=0)
    if name == "batch blocks":
        return dict(sms=4, smem=1 << 20, force_grid=False), dict(unit_blocks=1, batch_blocks=4, grid_sync=0)
    if name == "grid forced":
        return dict(sms=6, smem=1 << 20, force_grid=True), dict(grid_sync=1)
    # shared memory for 3-unit slices of 2 rows only: the units split without force
    return dict(sms=16, smem=_tile_smem(7, L, shortcut, 3, 2), force_grid=False), dict(grid_sync=1)


GEOMETRIES = ["one block", "batch blocks", "grid forced", "grid by shared memory"]


@needs_hook
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("L,shortcut,leak,bias,reverse,lengths,nl", GPU_LOOP_CASES)
def test_kernel_program_matches_cpu_op(geometry, L, shortcut, leak, bias, reverse, lengths, nl):
    args = _op_args(51, 9, 4, 7, L, shortcut, leak, bias, reverse, lengths, nl)
    dev, want_geo = _device(geometry, L, shortcut)
    geo = _plan(4, 7, L, shortcut, force_grid=dev["force_grid"], sms=dev["sms"], smem=dev["smem"])
    assert geo["fits"] == 1 and {k: geo[k] for k in want_geo} == want_geo, geo
    want = _both_ways(args, OPS.deep_transition_rnn_fwd, OPS.deep_transition_rnn_bwd)
    assert want[2].abs().max() > 0 and want[3].abs().max() > 0  # not trivially zero
    for reverse_order in (False, True):
        extra = (dev["sms"], dev["smem"], dev["force_grid"], reverse_order, 5)
        got = _both_ways(args, lambda *a: EMU_FWD(*a, *extra), lambda *a: EMU_BWD(*a, *extra))
        assert_outputs_close(got, want, NAMES, f" ({reverse_order=})")


@needs_hook
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernel_program_low_precision_runs_in_float32(dtype):
    args = _op_args(52, 8, 5, 9, 2, True, True, True, True, [8, 3, 0, 8, 5], dtype=dtype)
    want = _both_ways(args, OPS.deep_transition_rnn_fwd, OPS.deep_transition_rnn_bwd)
    extra = (3, 1 << 20, True, True, 32)  # float32 compute: elements of 4 bytes
    got = _both_ways(args, lambda *a: EMU_FWD(*a, *extra), lambda *a: EMU_BWD(*a, *extra))
    assert_low_precision_close(got, want, NAMES, dtype)


@needs_hook
@pytest.mark.parametrize("T,B,H", [(1, 3, 4), (5, 1, 1), (6, 2, 1), (4, 1, 9)])
def test_kernel_program_edge_sizes(T, B, H):
    args = _op_args(53, T, B, H, 2, True, True, True, False, None)
    want = _both_ways(args, OPS.deep_transition_rnn_fwd, OPS.deep_transition_rnn_bwd)
    for force in (False, True):
        extra = (4, 1 << 20, force, True, 3)
        got = _both_ways(args, lambda *a: EMU_FWD(*a, *extra), lambda *a: EMU_BWD(*a, *extra))
        assert_outputs_close(got, want, NAMES)


@needs_hook
def test_kernel_program_refuses_what_does_not_fit():
    args = _op_args(54, 3, 2, 6, 2, False, False, True, False, None)
    with pytest.raises(RuntimeError, match="the plan does not fit"):
        EMU_FWD(*args, 4, 64, False, False, 8)


@needs_hook
@pytest.mark.parametrize("B", [1, 3, 32, 64, 200])
@pytest.mark.parametrize("H", [1, 5, 64, 127, 160, 512, 1024])
@pytest.mark.parametrize("L,shortcut", [(1, False), (2, True), (3, False)])
def test_plan_invariants(B, H, L, shortcut):
    # an H100's 132 SMs and 227 KiB per block, float32
    sms, smem = 132, 227 * 1024
    for force in (False, True):
        g = _plan(B, H, L, shortcut, force_grid=force, elem=4, sms=sms, smem=smem, threads=256)
        if not g["fits"]:
            # refused only where no split fits: all of W with one row (no grid barrier), or for
            # each batch split the most unit slices the co-resident blocks allow
            fits = lambda R, nb: _tile_smem(H, L, shortcut, R, nb, elem=4) <= smem  # noqa: E731
            assert force or not fits(H, 1), g
            for gb in range(1, min(B, sms) + 1):
                nb = -(-B // gb)
                gu = min(H, sms // -(-B // nb))
                assert gu < 2 or not fits(-(-H // gu), nb), (g, gb)
            continue
        assert g["units"] * g["unit_blocks"] >= H > g["units"] * (g["unit_blocks"] - 1)
        assert g["rows"] * g["batch_blocks"] >= B > g["rows"] * (g["batch_blocks"] - 1)
        assert g["smem"] == _tile_smem(H, L, shortcut, g["units"], g["rows"], elem=4) <= smem
        assert g["grid_sync"] == (g["unit_blocks"] > 1)
        if g["grid_sync"]:
            assert g["unit_blocks"] * g["batch_blocks"] <= sms
        if force and H > 1:
            assert g["grid_sync"] == 1


@needs_hook
def test_plan_limits():
    H100 = dict(elem=4, sms=132, smem=227 * 1024, threads=256)
    # W_1, W_2 and U of H=128 fit one block: batch blocks only, no grid barrier
    small = _plan(64, 128, 2, True, **H100)
    assert small["fits"] and small["unit_blocks"] == 1 and small["grid_sync"] == 0
    # H=512, depth 2: 2 MiB of weights over co-resident blocks
    mid = _plan(64, 512, 2, False, **H100)
    assert mid["fits"] and mid["grid_sync"] == 1 and mid["unit_blocks"] * mid["batch_blocks"] <= 132
    # depth 3 at H=2048 (48 MiB) cannot be on chip: the cuBLAS loop runs
    assert not _plan(64, 2048, 3, True, **H100)["fits"]
    # a device without cooperative launches gets no grid plan
    assert not _plan(64, 512, 2, False, cooperative=False, elem=4, sms=132, smem=227 * 1024, threads=256)["fits"]
    with pytest.raises(RuntimeError, match="elem must be 4 or 8"):
        _plan(4, 4, 1, False, elem=2)


# --- on a GPU -----------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("mode", [None, "grid", "0"])
@pytest.mark.parametrize("L,shortcut,leak,bias,reverse,lengths,nl", GPU_LOOP_CASES)
def test_cuda_persistent_matches_cpu_op(monkeypatch, mode, L, shortcut, leak, bias, reverse, lengths, nl):
    set_persistent_mode(monkeypatch, mode)
    args = _op_args(55, 9, 4, 33, L, shortcut, leak, bias, reverse, lengths, nl, dtype=torch.float32)
    want = _both_ways(args, OPS.deep_transition_rnn_fwd, OPS.deep_transition_rnn_bwd)
    dev = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    got = []
    names = cuda_kernel_names(lambda: got.extend(_both_ways(dev, OPS.deep_transition_rnn_fwd,
                                                        OPS.deep_transition_rnn_bwd)))
    check_persistent_ran(names, mode)
    assert_outputs_close(got, want, NAMES, rtol=2e-5, atol=2e-5)
