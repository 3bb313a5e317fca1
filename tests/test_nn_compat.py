"""torch.nn.RNN compatibility of LeakyRNN and ClockworkRNN: nn.RNN's positional
arguments, stacked and bidirectional ClockworkRNN against a per-sequence
composition of the reference loop, constructor errors naming the argument,
unbatched input, flatten_parameters / all_weights, meta and fake tensors,
weights_only loading of whole models, and compiled training equal to eager
(no two gradients sharing storage)."""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import mts_kernels
from _rnn_util import grads as _grads
from mts_kernels import ClockworkRNN, LeakyRNN, reference

F64 = dict(rtol=1e-10, atol=1e-10)


def _suffix(layer, direction):
    """ClockworkRNN's parameter names: layer 0 forward unsuffixed, the rest as nn.RNN."""
    return "" if layer == direction == 0 else f"_l{layer}" + ("_reverse" if direction else "")


# --------------------------------------------------------------------------- construction

def test_positional_arguments_as_nn_rnn():
    ninp, nhid, nlayers = 6, 8, 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dropout with 2 layers: no warning
        m = ClockworkRNN(ninp, nhid, nlayers, nonlinearity="tanh", dropout=0.5)
    assert (m.num_layers, m.dropout, m.nonlinearity) == (2, 0.5, "tanh")
    args = (6, 8, 3, "relu", False, True, 0.25, True)
    m, rnn = ClockworkRNN(*args), nn.RNN(*args)
    for attr in ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first",
                 "dropout", "bidirectional"):
        assert getattr(m, attr) == getattr(rnn, attr), attr
    # nn.RNN's parameter names and shapes, layer 0's forward ones without "_l0"
    want = {k.removesuffix("_l0"): tuple(v.shape) for k, v in rnn.named_parameters()}
    assert {k: tuple(v.shape) for k, v in m.named_parameters()} == want
    assert m.periods == (1, 2, 4, 8) and m.module_sizes == (2, 2, 2, 2)  # the defaults stay
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        ClockworkRNN(3, 4, dropout=0.5)


def test_single_layer_state_dict_names_unchanged():
    """The single-layer module's state_dict (weight_ih, weight_hh, bias_ih, bias_hh,
    log_tau) loads strictly, and nn.RNN-named ..._l0 keys load into it too."""
    torch.manual_seed(0)
    old = {"weight_ih": torch.randn(8, 3), "weight_hh": torch.randn(8, 8), "bias_ih": torch.randn(8),
           "bias_hh": torch.randn(8), "log_tau": torch.randn(8)}
    m = ClockworkRNN(3, 8, periods=(1, 3), leak="learned")
    assert list(m.state_dict()) == list(old)
    m.load_state_dict(old, strict=True)
    for k, v in old.items():
        assert torch.equal(getattr(m, k), v)
    m2 = ClockworkRNN(3, 8, periods=(1, 3), leak="learned")
    m2.load_state_dict({k + "_l0": v for k, v in old.items()}, strict=True)
    assert all(torch.equal(getattr(m2, k), v) for k, v in old.items())
    with pytest.raises(RuntimeError, match="Missing key"):
        m2.load_state_dict({k: v for k, v in old.items() if k != "weight_hh"}, strict=True)


def test_seeded_initialisation_unchanged_for_one_layer():
    """One layer draws its parameters in the old order (the demo's seeded runs stay
    the same): weight_ih, weight_hh, bias_ih, bias_hh, log_tau, then the mask."""
    torch.manual_seed(5)
    m = ClockworkRNN(3, 6, periods=(1, 2), leak="learned", tau_range=(2.0, 9.0))
    torch.manual_seed(5)
    b = 1 / 6 ** 0.5
    want = [torch.empty(6, 3).uniform_(-b, b), torch.empty(6, 6).uniform_(-b, b),
            torch.empty(6).uniform_(-b, b), torch.empty(6).uniform_(-b, b),
            torch.empty(6).uniform_(*torch.tensor([2.0, 9.0]).log().tolist())]
    want[1].masked_fill_(~m.block_mask(), 0.0)
    for p, w in zip(m.parameters(), want):
        assert torch.equal(p, w)


BAD_CTOR = [
    ("num_layers float", lambda c: c(8, 16, 2.5), "num_layers"),
    ("num_layers zero", lambda c: c(8, 16, 0), "num_layers"),
    ("input_size", lambda c: c(0, 16), "input_size"),
    ("hidden_size", lambda c: c(8, "16"), "hidden_size"),
    ("nonlinearity", lambda c: c(8, 16, 1, "gelu"), "nonlinearity"),
    ("nonlinearity type", lambda c: c(8, 16, 1, 3), "nonlinearity"),
    ("bias", lambda c: c(8, 16, 1, "tanh", "yes"), "bias"),
    ("batch_first", lambda c: c(8, 16, 1, "tanh", True, 2), "batch_first"),
    ("dropout high", lambda c: c(8, 16, 2, dropout=1.5), "dropout"),
    ("dropout bool", lambda c: c(8, 16, 2, dropout=True), "dropout"),
    ("dropout str", lambda c: c(8, 16, 2, dropout="0.5"), "dropout"),
    ("bidirectional", lambda c: c(8, 16, 1, bidirectional="no"), "bidirectional"),
    ("leak", lambda c: c(8, 16, leak=2.0), "leak"),
    ("tau_range", lambda c: c(8, 16, leak="learned", tau_range=(3.0, 1.0)), "tau_range"),
    ("dtype", lambda c: c(8, 16, dtype=torch.int64), "dtype"),
    ("device", lambda c: c(8, 16, device="nowhere"), "device"),
]


@pytest.mark.parametrize("cls", [ClockworkRNN, LeakyRNN])
@pytest.mark.parametrize("desc,call,name", BAD_CTOR, ids=[b[0] for b in BAD_CTOR])
def test_constructor_errors_name_the_argument(cls, desc, call, name):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: {name} must"):
        call(cls)


BAD_CLOCKWORK = [
    ("periods positional", lambda: ClockworkRNN(8, 16, (1, 2, 4)), r"num_layers must be an int >= 1, "
     r"got \(1, 2, 4\) \(the third positional argument is num_layers.*periods=\.\.\. by keyword\)"),
    ("periods int", lambda: ClockworkRNN(8, 16, periods=3), r"periods must be None or a sequence of ints"),
    ("periods str", lambda: ClockworkRNN(8, 16, periods="124"), r"periods must be None or a sequence"),
    ("periods floats", lambda: ClockworkRNN(8, 16, periods=[1.0, 2.0]), r"periods must contain ints"),
    ("periods empty", lambda: ClockworkRNN(8, 16, periods=[]), r"periods must be a non-empty sequence"),
    ("module_sizes int", lambda: ClockworkRNN(8, 16, module_sizes=4), r"module_sizes must be None or a sequence"),
    ("module_sizes sum", lambda: ClockworkRNN(8, 16, module_sizes=(4, 4)), r"module_sizes must sum to hidden_size"),
]


@pytest.mark.parametrize("desc,call,msg", BAD_CLOCKWORK, ids=[b[0] for b in BAD_CLOCKWORK])
def test_clockwork_constructor_errors(desc, call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_periods_accept_any_sequence():
    m = ClockworkRNN(3, 6, periods=range(1, 4))
    assert m.periods == (1, 2, 3) and m.module_sizes == (2, 2, 2)


@pytest.mark.parametrize("call,msg", [
    (lambda m: m(torch.randn(5, 3, 2), torch.randn(1, 3, 6)), r"hx must have shape \(4, 3, 6\), got \(1, 3, 6\)"),
    (lambda m: m(torch.randn(5, 2), torch.randn(4, 1, 6)),
     r"hx must have shape \(4, 6\) for unbatched input, got \(4, 1, 6\)"),
    (lambda m: m(torch.randn(5, 3, 2, 1)), r"input must be 3-D .* or 2-D"),
], ids=["hx layers", "hx unbatched", "input 4-D"])
def test_forward_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call(ClockworkRNN(2, 6, 2, bidirectional=True))


@pytest.mark.parametrize("cls", ["LeakyRNN", "ClockworkRNN", "DeepTransitionRNN"])
def test_unbatched_input_takes_a_2d_hx_only(cls):
    # as torch.nn.RNN (LeakyRNN had taken a (L*D, 1, H) hx with unbatched input)
    m = getattr(mts_kernels, cls)(2, 6, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match=r"hx must have shape \(4, 6\) for unbatched input, got \(4, 1, 6\)"):
        m(torch.randn(5, 2), torch.randn(4, 1, 6))
    assert m(torch.randn(5, 2), torch.randn(4, 6))[1].shape == (4, 6)


# --------------------------------------------------------------------------- stacked / bidirectional

def _oracle(m, x, hx, lengths, t0):
    """Stacked (bidirectional) clockwork network built from reference.clockwork_rnn,
    one sequence at a time: the reverse direction runs the sequence flipped within
    its own length, its k-th step at clock t0 + k. x (T, B, I), hx (L*D, B, H)."""
    T, B, _ = x.shape
    D = 2 if m.bidirectional else 1
    outs, finals = [], [[] for _ in range(m.num_layers * D)]
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        seq = x[:n, b:b + 1]
        for layer in range(m.num_layers):
            dirs = []
            for d in range(D):
                s = _suffix(layer, d)
                h0 = hx[layer * D + d, b:b + 1]
                if n == 0:
                    finals[layer * D + d].append(h0)
                    continue
                p = seq @ getattr(m, "weight_ih" + s).t() + getattr(m, "bias_ih" + s) + getattr(m, "bias_hh" + s)
                alpha = torch.exp(-torch.exp(-getattr(m, "log_tau" + s))) if m.leak == "learned" else None
                h = reference.clockwork_rnn(p.flip(0) if d else p, getattr(m, "weight_hh" + s), h0, m.periods,
                                            m.module_sizes, alpha=alpha, nonlinearity=m.nonlinearity, t0=t0)
                finals[layer * D + d].append(h[-1])
                dirs.append(h.flip(0) if d else h)
            if n:
                seq = torch.cat(dirs, -1)
        out_b = x.new_zeros(T, 1, D * m.hidden_size)
        outs.append(torch.cat([seq, out_b[n:]], 0) if n else out_b)
    return torch.cat(outs, 1), torch.stack([torch.cat(f, 0) for f in finals])


def _clockwork(num_layers=2, bidirectional=True, **kw):
    torch.manual_seed(0)
    m = ClockworkRNN(3, 7, num_layers, bidirectional=bidirectional, periods=(1, 2, 5), module_sizes=(3, 2, 2),
                     leak="learned", tau_range=(1.0, 20.0), dtype=torch.float64, **kw)
    with torch.no_grad():  # the never-read blocks too: the kernels must not read them
        for group in m.all_weights:
            group[1].copy_(torch.randn_like(group[1]) * 0.5)
    return m


CASES = {
    "full": dict(lengths=None),
    "lengths": dict(lengths=[11, 0, 4, 7]),
    "packed_sorted": dict(lengths=[11, 7, 4, 1], packed=True, enforce_sorted=True),
    "packed_unsorted": dict(lengths=[4, 11, 1, 7], packed=True, enforce_sorted=False),
    "lengths_batch_first": dict(lengths=[3, 11, 6, 2], batch_first=True),
    "one_layer_bidirectional": dict(lengths=[5, 11, 2, 8], num_layers=1, packed=True, enforce_sorted=False),
    "three_layers_forward": dict(lengths=[5, 11, 2, 8], num_layers=3, bidirectional=False),
}


@pytest.mark.parametrize("case", CASES)
def test_stacked_bidirectional_matches_reference(case):
    cfg = CASES[case]
    batch_first = cfg.get("batch_first", False)
    m = _clockwork(cfg.get("num_layers", 2), cfg.get("bidirectional", True), batch_first=batch_first)
    D = 2 if m.bidirectional else 1
    T, B, t0 = 11, 4, 3
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(m.num_layers * D, B, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    L = cfg["lengths"]
    x_in = x.transpose(0, 1) if batch_first else x
    if cfg.get("packed"):
        seq = pack_padded_sequence(x_in, torch.tensor(L), batch_first=batch_first,
                                   enforce_sorted=cfg["enforce_sorted"])
        packed_out, h_n = m(seq, hx, t0=t0)
        out, _ = pad_packed_sequence(packed_out, batch_first=batch_first, total_length=T)
    else:
        out, h_n = m(x_in, hx, t0=t0, lengths=None if L is None else torch.tensor(L))
    if batch_first:
        out = out.transpose(0, 1)
    want_out, want_h = _oracle(m, x, hx, L, t0)
    assert out.shape == (T, B, D * 7) and h_n.shape == (m.num_layers * D, B, 7)
    torch.testing.assert_close(out, want_out, **F64)
    torch.testing.assert_close(h_n, want_h, **F64)
    params = dict(m.named_parameters())
    inputs = [x, hx] + list(params.values())
    names = ["x", "hx"] + list(params)
    got, want = _grads(out, h_n, inputs), _grads(want_out, want_h, inputs)
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, **F64, msg=lambda msg: f"grad {name}: {msg}")
    mask = m.block_mask()
    for group in m.all_weights:  # the never-read blocks of every weight_hh: exactly 0
        assert torch.all(got[[id(t) for t in inputs].index(id(group[1]))][~mask] == 0)


def test_reverse_direction_clock_counts_reversed_steps():
    """The reverse direction of a one-layer bidirectional module is the forward
    clockwork recurrence over the flipped sequence with the same t0."""
    m = _clockwork(1, True)
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    out, h_n = m(x, t0=2)
    fwd = ClockworkRNN(3, 7, periods=m.periods, module_sizes=m.module_sizes, leak="learned", dtype=torch.float64)
    fwd.load_state_dict({k.removesuffix("_l0_reverse"): v for k, v in m.state_dict().items() if "reverse" in k})
    rev, h_rev = fwd(x.flip(0), t0=2)
    torch.testing.assert_close(out[..., 7:], rev.flip(0), **F64)
    torch.testing.assert_close(h_n[1:], h_rev, **F64)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_period_one_is_stacked_bidirectional_nn_rnn(packed):
    """With one module of period 1 the stacked bidirectional ClockworkRNN is
    torch.nn.RNN: its state_dict loads strictly, outputs and every gradient match."""
    torch.manual_seed(2)
    rnn = nn.RNN(5, 6, 2, bidirectional=True)
    m = ClockworkRNN(5, 6, 2, bidirectional=True, periods=(1,))
    m.load_state_dict(rnn.state_dict(), strict=True)
    x = torch.randn(8, 3, 5, requires_grad=True)
    hx = torch.randn(4, 3, 6)
    if packed:
        L = torch.tensor([3, 8, 5])
        a, h_a = m(pack_padded_sequence(x, L, enforce_sorted=False), hx)
        b, h_b = rnn(pack_padded_sequence(x, L, enforce_sorted=False), hx)
        a, b = pad_packed_sequence(a)[0], pad_packed_sequence(b)[0]
    else:
        (a, h_a), (b, h_b) = m(x, hx), rnn(x, hx)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(h_a, h_b)
    for u, v in zip(_grads(a, h_a, [x] + list(m.parameters())), _grads(b, h_b, [x] + list(rnn.parameters()))):
        torch.testing.assert_close(u, v)


def test_dropout_between_layers_only():
    """dropout=1 zeroes what layer 1 passes on in training mode (the output then
    does not depend on the input) and nothing after the last layer."""
    torch.manual_seed(3)
    m = ClockworkRNN(3, 6, 2, dropout=1.0, periods=(1, 2))
    x1, x2 = torch.randn(7, 2, 3), torch.randn(7, 2, 3)
    out1, h1 = m(x1)
    out2, h2 = m(x2)
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(h1[1], h2[1])
    assert not torch.equal(h1[0], h2[0]) and out1.abs().min() > 0
    m.eval()
    assert not torch.allclose(m(x1)[0], m(x2)[0])
    half = ClockworkRNN(3, 6, 2, dropout=0.5, periods=(1, 2))
    assert not torch.equal(half(x1)[0], half(x1)[0])
    half.eval()
    assert torch.equal(half(x1)[0], half(x1)[0])


@pytest.mark.parametrize("cls", [ClockworkRNN, LeakyRNN])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_unbatched_input(cls, batch_first):
    torch.manual_seed(4)
    m = cls(3, 6, 2, bidirectional=True, batch_first=batch_first, dtype=torch.float64)
    x = torch.randn(9, 3, dtype=torch.float64)
    hx = torch.randn(4, 6, dtype=torch.float64)
    out, h_n = m(x, hx)
    assert out.shape == (9, 12) and h_n.shape == (4, 6)
    batched = x.unsqueeze(0 if batch_first else 1)
    out_b, h_b = m(batched, hx.unsqueeze(1))
    torch.testing.assert_close(out, out_b.squeeze(0 if batch_first else 1), **F64)
    torch.testing.assert_close(h_n, h_b.squeeze(1), **F64)
    out0, h0 = m(x)  # hx=None: zeros
    torch.testing.assert_close(out0, m(x, torch.zeros_like(hx))[0], **F64)
    assert h0.shape == (4, 6)


# --------------------------------------------------------------------------- nn.RNN's API

def test_flatten_parameters_and_all_weights_as_nn_rnn():
    torch.manual_seed(5)
    rnn = nn.RNN(4, 5, 2, bidirectional=True)
    for m in (LeakyRNN.from_torch(rnn), ClockworkRNN(4, 5, 2, bidirectional=True, periods=(1,))):
        m.load_state_dict(rnn.state_dict())
        assert m.flatten_parameters() is None
        assert len(m.all_weights) == len(rnn.all_weights) == 4
        for got, want in zip(m.all_weights, rnn.all_weights):
            assert len(got) == len(want) == 4
            for a, b in zip(got, want):
                assert isinstance(a, nn.Parameter) and torch.equal(a, b)


@pytest.mark.parametrize("make,extra", [
    (lambda: LeakyRNN(3, 4, 2, bias=False, bidirectional=True, skip=2, leak="learned"), ["weight_skip", "log_tau"]),
    (lambda: ClockworkRNN(3, 4, 3, bidirectional=True, periods=(1, 2), leak="learned"), ["log_tau"]),
    (lambda: ClockworkRNN(3, 4, 2, bias=False, periods=(1, 2)), []),
], ids=["leaky_extras", "clockwork_learned", "clockwork_no_bias"])
def test_all_weights_extra_parameters_last(make, extra):
    m = make()
    D = 2 if m.bidirectional else 1
    base = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if m.bias else [])
    assert len(m.all_weights) == m.num_layers * D
    params = dict(m.named_parameters())
    seen = []
    for i, group in enumerate(m.all_weights):
        layer, d = divmod(i, D)
        s = (_suffix(layer, d) if isinstance(m, ClockworkRNN)
             else f"_l{layer}" + ("_reverse" if d else ""))
        assert [id(p) for p in group] == [id(params[n + s]) for n in base + extra]
        seen += [id(p) for p in group]
    assert sorted(seen) == sorted(id(p) for p in m.parameters())  # every parameter, once


# --------------------------------------------------------------------------- meta and fake tensors

def _modules():
    return [lambda: LeakyRNN(3, 4, 2, bidirectional=True, leak="learned", skip=2),
            lambda: ClockworkRNN(3, 4, 2, bidirectional=True, periods=(1, 3), leak="learned")]


@pytest.mark.parametrize("make", _modules(), ids=["leaky", "clockwork"])
def test_construct_on_meta_and_under_fake_mode(make):
    with torch.device("meta"):
        m = make()
    assert all(p.device.type == "meta" for p in m.parameters())
    with FakeTensorMode():
        f = make()
        assert all(torch._subclasses.fake_tensor.is_fake(p) for p in f.parameters())
    real = make()
    assert [(n, p.shape) for n, p in m.named_parameters()] == [(n, p.shape) for n, p in real.named_parameters()]
    assert [(n, p.shape) for n, p in f.named_parameters()] == [(n, p.shape) for n, p in real.named_parameters()]


@pytest.mark.parametrize("make", _modules(), ids=["leaky", "clockwork"])
def test_forward_backward_under_fake_mode(make):
    out_real, h_real = make()(torch.randn(6, 2, 3))
    with FakeTensorMode():
        m = make()
        x = torch.randn(6, 2, 3, requires_grad=True)
        out, h_n = m(x)
        assert out.shape == out_real.shape and h_n.shape == h_real.shape
        (out.sum() + h_n.sum()).backward()
        assert x.grad.shape == x.shape and all(p.grad.shape == p.shape for p in m.parameters())
        out, h_n = m(torch.randn(6, 3))  # unbatched
        assert out.shape == (6, 8) and h_n.shape == (4, 4)


@pytest.mark.parametrize("make,as_tensor", [
    pytest.param(_modules()[0], False, id="leaky-list"),
    pytest.param(_modules()[0], True, id="leaky-tensor"),
    # clockwork_rnn derives per-module length tensors from a list too
    pytest.param(_modules()[1], False, id="clockwork-list"),
    pytest.param(_modules()[1], True, id="clockwork-tensor"),
])
def test_fake_mode_with_lengths(make, as_tensor):
    with FakeTensorMode():
        m = make()
        x = torch.randn(6, 2, 3, requires_grad=True)
        out, h_n = m(x, lengths=torch.tensor([6, 4]) if as_tensor else [6, 4])
        assert out.shape == (6, 2, 8) and h_n.shape == (4, 2, 4)
        (out.sum() + h_n.sum()).backward()
        assert x.grad.shape == x.shape


@pytest.mark.parametrize("make", _modules(), ids=["leaky", "clockwork"])
def test_forward_backward_on_meta(make):
    with torch.device("meta"):
        m = make()
    x = torch.randn(6, 2, 3, device="meta", requires_grad=True)
    for kw in ({}, dict(lengths=torch.tensor([6, 4])), dict(lengths=torch.tensor([6, 4], device="meta"))):
        out, h_n = m(x, **kw)
        assert out.shape == (6, 2, 8) and h_n.shape == (4, 2, 4) and out.device.type == "meta"
        (out.sum() + h_n.sum()).backward()
        assert x.grad.shape == x.shape


# --------------------------------------------------------------------------- weights_only loading

class WordModel(nn.Module):
    """pytorch/examples word_language_model's RNNModel, with one of our RNNs."""

    def __init__(self, rnn_type, ntoken=20, ninp=6, nhid=8, nlayers=2, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        kw = dict(periods=(1, 2, 4)) if rnn_type is ClockworkRNN else dict(leak="learned", skip=2)
        self.rnn = rnn_type(ninp, nhid, nlayers, nonlinearity="tanh", dropout=dropout, **kw)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, tokens, hidden):
        emb = self.drop(self.encoder(tokens))
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(output)), hidden


@pytest.mark.parametrize("rnn_type", [LeakyRNN, ClockworkRNN])
def test_whole_model_loads_with_weights_only(rnn_type, tmp_path):
    assert rnn_type in torch.serialization.get_safe_globals()
    torch.manual_seed(6)
    model = WordModel(rnn_type).eval()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    # the user allows their own and torch's classes; ours need nothing from them
    with torch.serialization.safe_globals([WordModel, nn.Dropout, nn.Embedding, nn.Linear]):
        loaded = torch.load(path, weights_only=True)
    assert isinstance(loaded.rnn, rnn_type)
    assert loaded.rnn.flatten_parameters() is None
    tokens = torch.randint(0, 20, (7, 3))
    hidden = torch.zeros(2, 3, 8)
    for a, b in zip(model(tokens, hidden), loaded(tokens, hidden)):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- compiled training

def _train(model, params, steps, compiled):
    opt = torch.optim.SGD(params, lr=0.5)
    gen = torch.Generator().manual_seed(7)
    data = [(torch.randn(5, 2, 3, generator=gen), torch.randn(5, 2, 1, generator=gen)) for _ in range(steps)]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        out, h_n = model(x)
        loss = (out.sum(-1, keepdim=True) - y).square().mean() + h_n.square().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        opt.step()
        return loss.detach()

    fn = torch.compile(step) if compiled else step
    losses = []
    for x, y in data:
        losses.append(fn(x, y))
        ptrs = [p.grad.untyped_storage().data_ptr() for p in params]
        assert len(set(ptrs)) == len(ptrs), "two parameters' gradients share storage"
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda: LeakyRNN(3, 4, 2, bidirectional=True, leak="learned", skip=2),
    lambda: ClockworkRNN(3, 4, 2, bidirectional=True, periods=(1, 2), leak="learned"),
], ids=["leaky", "clockwork"])
def test_compiled_training_equals_eager(make):
    """A compiled training step (forward, loss, backward, clip_grad_norm_, SGD)
    gives eager's parameters: no two gradients share storage, so clipping scales
    each once."""
    torch._dynamo.reset()
    torch.manual_seed(8)
    eager = make()
    comp = copy.deepcopy(eager)
    le = _train(eager, list(eager.parameters()), 3, compiled=False)
    lc = _train(comp, list(comp.parameters()), 3, compiled=True)
    torch.testing.assert_close(torch.stack(lc), torch.stack(le), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(eager.named_parameters(), comp.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("cls", [LeakyRNN, ClockworkRNN])
def test_eager_gradients_never_share_storage(cls):
    m = cls(3, 4, 2, bidirectional=True)
    out, h_n = m(torch.randn(5, 2, 3))
    (out.sum() + h_n.sum()).backward()
    ptrs = [p.grad.untyped_storage().data_ptr() for p in m.parameters()]
    assert len(set(ptrs)) == len(ptrs)
