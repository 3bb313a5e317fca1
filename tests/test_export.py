"""torch.export and torch.onnx.export of LeakyRNN and ClockworkRNN.

The export formulations (mts_kernels/nn/_export.py: the scan higher-order op,
and the scripted loops the legacy ONNX exporter traces) against the reference
loops in float64; the exported programs and ONNX models run at shapes and clock
phases other than the export example's, against the eager modules. Export is
slow, so the model cases are few and small."""

import io
import warnings

import pytest
import torch
from torch.export import Dim

import mts_kernels
from mts_kernels import ClockworkRNN, LeakyRNN, reference
from mts_kernels.nn import _export

TOL = dict(atol=1e-5, rtol=1e-5)


def _dims():
    return Dim("T", min=2, max=4096), Dim("B", min=1, max=1024)


# -- the formulations against the reference loops (float64) ------------------

LEAKY_CASES = {
    "plain": dict(),
    "leak": dict(alpha=True),
    "skip": dict(skip=3),
    "dilation_skip_leak_reverse": dict(dilation=2, skip=5, alpha=True, reverse=True),
    "delay_beyond_T_relu": dict(dilation=12, nonlinearity="relu", h0=False),
}

CLOCK_CASES = {
    "p137_unequal": dict(periods=[1, 3, 7], module_sizes=[2, 4, 1], t0=5),
    "p25_leak": dict(periods=[2, 5], module_sizes=[3, 4], t0=0, alpha=True),
    "p369_late": dict(periods=[3, 6, 9], module_sizes=[1, 2, 4], t0=2**40 + 3, h0=False,
                      nonlinearity="relu"),
}


def _leaky_args(case, T=9, B=3, H=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kw = dict(case)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    p, w = r(T, B, H), r(H, H, scale=0.5)
    h0 = r(B, H) if kw.pop("h0", True) else None
    if kw.pop("alpha", False):
        kw["alpha"] = torch.rand(H, generator=gen, dtype=torch.float64)
    if kw.get("skip"):
        kw["weight_skip"] = r(H, H, scale=0.5)
    return p, w, h0, kw


def _clock_args(case, T=11, B=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    kw = dict(case)
    H = sum(kw["module_sizes"])
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    w = torch.randn(H, H, generator=gen, dtype=torch.float64) * 0.5  # lower blocks too: never read
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64) if kw.pop("h0", True) else None
    if kw.pop("alpha", False):
        kw["alpha"] = torch.rand(H, generator=gen, dtype=torch.float64)
    return p, w, h0, kw


@pytest.mark.parametrize("case", LEAKY_CASES)
def test_leaky_scan_matches_reference(case):
    p, w, h0, kw = _leaky_args(LEAKY_CASES[case])
    want = reference.leaky_rnn(p, w, h0, **kw)
    torch.testing.assert_close(_export.leaky_rnn_scan(p, w, h0, **kw), want, atol=1e-12, rtol=0)
    # batch-first layout through the same path
    got = _export.leaky_rnn_scan(p.transpose(0, 1), w, h0, batch_first=True, **kw)
    torch.testing.assert_close(got.transpose(0, 1), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", CLOCK_CASES)
def test_clockwork_scan_matches_reference(case):
    p, w, h0, kw = _clock_args(CLOCK_CASES[case])
    t0 = kw.pop("t0")
    want = reference.clockwork_rnn(p, w, h0, kw.pop("periods"), kw.pop("module_sizes"), t0=t0, **kw)
    cfg = CLOCK_CASES[case]
    clock = dict(periods=cfg["periods"], module_sizes=cfg["module_sizes"])
    # t0 as an int (any size) and, where it fits, as the 0-d tensor an exported program takes
    got = _export.clockwork_rnn_scan(p, w, h0, t0=t0, **clock, **kw)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    got = _export.clockwork_rnn_scan(p, w, h0, t0=torch.tensor(t0), **clock, **kw)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_traced_loops_match_reference_at_other_lengths():
    """The scripted loops (what torch.jit.trace, hence the legacy ONNX exporter,
    records) keep T dynamic: traced at one T, they run another."""
    p, w, h0, kw = _leaky_args(LEAKY_CASES["dilation_skip_leak_reverse"], T=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(lambda p_, h_: _export.leaky_rnn_scan(p_, w, h_, **kw), (p, h0))
    p2, _, h2, _ = _leaky_args(LEAKY_CASES["dilation_skip_leak_reverse"], T=10, B=2, seed=4)
    torch.testing.assert_close(traced(p2, h2), reference.leaky_rnn(p2, w, h2, **kw), atol=1e-12, rtol=0)

    cfg = CLOCK_CASES["p137_unequal"]
    p, w, h0, _ = _clock_args(cfg, T=5)
    clock = dict(periods=cfg["periods"], module_sizes=cfg["module_sizes"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(lambda p_, t_: _export.clockwork_rnn_scan(p_, w, h0, t0=t_, **clock),
                                 (p, torch.tensor(0)))
    p2 = _clock_args(cfg, T=13, seed=5)[0]
    for t0 in (0, 4, 9):
        want = reference.clockwork_rnn(p2, w, h0, cfg["periods"], cfg["module_sizes"], t0=t0)
        torch.testing.assert_close(traced(p2, torch.tensor(t0)), want, atol=1e-12, rtol=0)


def test_clock_mask_direction_and_phase():
    mask = _export.clock_mask(torch.tensor(2), 6, [1, 3], [1, 2])
    want = torch.tensor([[(2 + t) % P == 0 for P in (1, 3, 3)] for t in range(6)])
    assert torch.equal(mask, want)


# -- torch.export -------------------------------------------------------------

def _targets(ep):
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("config", [
    pytest.param(dict(), id="fused"),
    # bidirectional and num_layers=2 are in the ONNX test's model (each scan costs a compile here)
    pytest.param(dict(leak="learned", skip=3, dilation=2, batch_first=True), id="scan_skip_dilation"),
])
def test_torch_export_leaky_rnn_dynamic(config):
    torch.manual_seed(0)
    m = LeakyRNN(3, 5, **config).eval()
    bf, L = m.batch_first, m.num_layers * (2 if m.bidirectional else 1)
    T, B = _dims()
    x = torch.randn(4, 7, 3) if bf else torch.randn(7, 4, 3)
    ep = torch.export.export(m, (x, torch.randn(L, 4, 5)),
                             dynamic_shapes=({0: B, 1: T} if bf else {0: T, 1: B}, {1: B}))
    targets = _targets(ep)
    if config:  # skip / dilation: the scan loop, one per layer and direction, not T steps
        assert sum("scan" in t for t in targets) >= 1 and "mts_kernels.leaky_rnn_fwd.default" not in targets
    else:  # the fused op stays in the program
        assert "mts_kernels.leaky_rnn_fwd.default" in targets
    for t_, b_ in ((11, 2), (3, 5)):
        x2 = torch.randn(b_, t_, 3) if bf else torch.randn(t_, b_, 3)
        hx2 = torch.randn(L, b_, 5)
        got, want = ep.module()(x2, hx2), m(x2, hx2)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL)


def test_torch_export_clockwork_rnn_dynamic_with_t0_input():
    torch.manual_seed(0)
    m = ClockworkRNN(3, 7, periods=[1, 3, 5], module_sizes=[3, 1, 3], leak="learned").eval()
    with torch.no_grad():  # blocks no module reads (module 1 of module 0, 2 of 1): never in a result
        m.weight_hh[3:4, 0:3] = float("inf")
        m.weight_hh[4:7, 3:4] = float("nan")
    T, B = _dims()
    ep = torch.export.export(m, (torch.randn(7, 4, 3), torch.randn(1, 4, 7), torch.tensor(2)),
                             dynamic_shapes=({0: T, 1: B}, {1: B}, None))
    assert any("scan" in t for t in _targets(ep))
    for t_, b_, t0 in ((11, 2, 0), (4, 3, 7), (20, 1, 2**40 + 1)):
        x2, hx2 = torch.randn(t_, b_, 3), torch.randn(1, b_, 7)
        got, want = ep.module()(x2, hx2, torch.tensor(t0)), m(x2, hx2, t0)
        assert want[0].isfinite().all()
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL)


def test_tensor_t0_in_eager_equals_int_t0():
    torch.manual_seed(0)
    m = ClockworkRNN(3, 6, periods=[1, 2, 5])
    x = torch.randn(9, 2, 3)
    for g, w in zip(m(x, None, torch.tensor(3)), m(x, None, 3)):
        assert torch.equal(g, w)
    with pytest.raises(TypeError, match="t0"):
        m(x, None, torch.tensor(3.0))
    with pytest.raises(ValueError, match="t0"):
        m(x, None, torch.tensor([1, 2]))


def test_export_rejects_lengths_and_packed_input_clearly():
    m = LeakyRNN(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(Exception, match="lengths .* not supported by torch.export"):
        torch.export.export(m, (x,), kwargs={"lengths": torch.tensor([5, 3])})
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3]))
    with pytest.raises(Exception, match="PackedSequence input is not supported by torch.export"):
        torch.export.export(ClockworkRNN(3, 4), (packed,))


# -- ONNX ---------------------------------------------------------------------

class _Net(torch.nn.Module):
    """LeakyRNN (stacked, bidirectional, learned leak, skip, dilation, h0) into a
    batch-first ClockworkRNN (fixed leak, periods not powers of two, unequal modules)."""

    def __init__(self):
        super().__init__()
        self.leaky = LeakyRNN(3, 4, num_layers=2, bidirectional=True, leak="learned", skip=3,
                              dilation=2)
        self.clock = ClockworkRNN(8, 7, periods=[1, 3, 5], module_sizes=[3, 1, 3], leak=0.3,
                                  batch_first=True)

    def forward(self, x, hx, t0):
        y, h_leaky = self.leaky(x, hx)
        z, h_clock = self.clock(y.transpose(0, 1), None, t0)
        return z, h_leaky, h_clock


def _check_onnx(model_bytes, net):
    np = pytest.importorskip("numpy")
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for t_, b_, t0 in ((11, 2, 0), (3, 5, 7)):
        x, hx = torch.randn(t_, b_, 3), torch.randn(4, b_, 4)
        got = sess.run(None, dict(zip(names, (x.numpy(), hx.numpy(), np.array(t0, dtype=np.int64)))))
        with torch.no_grad():
            want = net(x, hx, t0)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, **TOL)


def _example():
    return torch.randn(7, 4, 3), torch.randn(4, 4, 4), torch.tensor(2)


def test_onnx_export_dynamo_runs_in_onnxruntime():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    net = _Net().eval()
    T, B = _dims()
    prog = torch.onnx.export(net, _example(), dynamic_shapes=({0: T, 1: B}, {1: B}, None),
                             dynamo=True, verbose=False)
    model = prog.model_proto
    ops = {n.op_type for n in model.graph.node}
    assert "Scan" in ops
    onnx.checker.check_model(model)
    _check_onnx(model.SerializeToString(), net)


def test_deep_transition_rnn_onnx_export_is_a_clear_error():
    pytest.importorskip("onnx")
    m = mts_kernels.DeepTransitionRNN(3, 4).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NotImplementedError, match="DeepTransitionRNN: torch.onnx.export is not supported"):
            torch.onnx.export(m, (torch.randn(5, 2, 3),), io.BytesIO(), dynamo=False)


def test_onnx_export_legacy_torchscript_runs_in_onnxruntime():
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    net = _Net().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(net, _example(), f, dynamo=False, input_names=["x", "hx", "t0"],
                          dynamic_axes={"x": {0: "T", 1: "B"}, "hx": {1: "B"}})
    _check_onnx(f.getvalue(), net)
