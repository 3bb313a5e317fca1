"""demo/copy_memory.py: the data generator's format and the chance baseline, and
one or two training steps of each model (at a tiny size; trained accuracy is the
demo's business, not a test's)."""

import importlib.util
import math
import os
import types

import pytest
import torch

import mts_kernels

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "copy_memory.py")


@pytest.fixture(scope="module")
def cm():
    spec = importlib.util.spec_from_file_location("copy_memory_demo", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _available(cm):
    return [n for n in cm.MODEL_NAMES if n != "deep" or hasattr(mts_kernels, "DeepTransitionRNN")]


@pytest.mark.parametrize("delay", [1, 7, 200])
def test_batch_format(cm, delay):
    B = 5
    x, y = cm.copy_memory_batch(B, delay, torch.Generator().manual_seed(delay))
    T = 2 * 10 + delay
    assert x.shape == (T, B, 10) and x.dtype == torch.float32
    assert y.shape == (10, B) and y.dtype == torch.int64
    assert ((y >= 0) & (y < 8)).all()
    assert torch.equal(x.sum(-1), torch.ones(T, B))  # one-hot at every step
    idx = x.argmax(-1)
    assert torch.equal(idx[:10], y)  # the symbols first, on channels 0..7
    expected = torch.full((T, B), cm.BLANK, dtype=torch.int64)
    expected[:10] = y
    expected[10 + delay - 1] = cm.DELIMITER  # the last step before the recall
    assert torch.equal(idx, expected)
    recall = cm.recall_positions(delay)
    assert list(recall) == list(range(T - 10, T))
    assert recall[0] - 9 == delay + 1 and recall[0] == 10 + delay  # symbol i recalled delay + 10 steps later
    assert (idx[recall[0]:] == cm.BLANK).all()  # no hint in the input while recalling


def test_batch_seeded_and_bad_delay(cm):
    a = cm.copy_memory_batch(3, 4, torch.Generator().manual_seed(1))
    b = cm.copy_memory_batch(3, 4, torch.Generator().manual_seed(1))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="delay"):
            cm.copy_memory_batch(3, bad)


def test_chance_baseline(cm):
    # the best memoryless prediction is the symbols' marginal distribution: uniform
    # over 8, i.e. cross-entropy log 8 and accuracy 1/8 at every recall position
    assert cm.CHANCE_CE == pytest.approx(math.log(8)) and cm.CHANCE_ACC == 1 / 8
    _, y = cm.copy_memory_batch(20000, 3, torch.Generator().manual_seed(0))
    freq = torch.stack([torch.bincount(row, minlength=8) for row in y]).double() / y.size(1)
    assert freq.shape == (10, 8)
    assert (freq - 1 / 8).abs().max() < 0.015
    entropy = -(freq * freq.log()).sum(-1)
    assert entropy.mean().item() == pytest.approx(cm.CHANCE_CE, abs=2e-3)
    # a model that outputs equal logits scores exactly the baseline
    acc, ce, per_position = cm.evaluate(lambda x: torch.zeros(10, x.size(1), 8), *cm.copy_memory_batch(64, 3))
    assert per_position.shape == (10,)
    assert ce == pytest.approx(cm.CHANCE_CE, rel=1e-6)


def test_parse_models(cm):
    assert cm.parse_models("rnn, lstm") == ("rnn", "lstm")
    with pytest.raises(SystemExit, match="--models"):
        cm.parse_models("rnn,gru")
    if not hasattr(mts_kernels, "DeepTransitionRNN"):
        with pytest.raises(SystemExit, match="DeepTransitionRNN"):
            cm.parse_models("all")


def test_sizes_match(cm):
    models = cm.build(_available(cm), 3000, skip=4, dilation=3, periods=[1, 2, 4], seed=0)
    counts = {name: cm.count(model) for name, (_, model) in models.items()}
    assert set(counts) == set(_available(cm))
    for name, n in counts.items():
        assert abs(n - 3000) < 0.12 * 3000, (name, n)


def test_train_steps_each_model(cm):
    args = types.SimpleNamespace(lr=1e-2, clip=1.0, seed=0, steps=2, batch=3, delay=6, eval_every=1)
    eval_set = cm.copy_memory_batch(4, args.delay, torch.Generator().manual_seed(2))
    models = cm.build(_available(cm), 600, skip=2, dilation=2, periods=[1, 2], seed=0)
    with cm.tqdm(total=2 * len(models), disable=True) as bar:
        for name, (label, model) in models.items():
            assert cm.Copier.forward(model, eval_set[0]).shape == (10, 4, 8)
            before = [p.detach().clone() for p in model.parameters()]
            sec, cpu, curve, evals = cm.train(model, args, eval_set, bar)
            assert len(curve) == 2 and all(math.isfinite(v) for v in curve), name
            assert [e[0] for e in evals] == [0, 1, 2] and 0 <= evals[-1][1] <= 1, name
            assert sec > 0 and cpu >= 0
            assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), name


def test_main_writes_table_and_png(cm, tmp_path, capsys):
    names = ",".join(n for n in _available(cm) if n in ("rnn", "clockwork"))
    assert cm.main(["--models", names, "--steps", "2", "--batch", "2", "--delay", "3", "--params", "400",
                    "--eval-every", "1", "--eval-batch", "4", "--periods", "1,2", "--threads", "1",
                    "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "torch.nn.RNN" in out and "ClockworkRNN" in out and "chance" in out
    assert (tmp_path / "copy_memory.png").stat().st_size > 1000
