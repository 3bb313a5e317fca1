"""Data-parallel training of the modules over gloo, two processes on loopback:
DistributedDataParallel and FSDP2 (torch.distributed.fsdp.fully_shard) on the
CPU. Each rank trains on its half of the batch; the averaged gradients and the
parameters after one Adam step must equal one process's on the whole batch
(float64, so the only difference is the order of a few sums). Under FSDP2 no
warning may be raised, in particular not its "returned a view tensor" warning
(a module output that is a view would lose FSDP's pre-backward hook to an
in-place op); the workers record their warnings and send them back.

One spawn runs every case (process start-up dominates on a 2-core machine);
each worker has a collective timeout and the parent a deadline, so a hang fails
the test instead of blocking the suite.
"""

import os
import socket
import time
import traceback
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import mts_kernels

WORLD = 2
DEADLINE_S = 240  # a loaded 2-core machine takes ~40 s; a hang takes forever
T, B, I = 6, 6, 3  # B split evenly between the ranks (the losses are means)
LR = 1e-2

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is unavailable")


def _modules():
    # batch_first: the layout whose output used to be a transposed view; LeakyRNN
    # bidirectional and 2 layers, ClockworkRNN one direction (the copy path)
    return {
        "leaky": lambda: mts_kernels.LeakyRNN(I, 7, num_layers=2, leak="learned", skip=2,
                                              bidirectional=True, batch_first=True,
                                              dtype=torch.float64),
        "clockwork": lambda: mts_kernels.ClockworkRNN(I, 12, periods=[1, 2, 4], leak="learned",
                                                      batch_first=True, dtype=torch.float64),
    }


def _loss(model, x, y):
    out, h_n = model(x)
    return ((out - y) ** 2).mean() + h_n.pow(2).mean()


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64)
    return x, g


def _targets(name, model, g):
    D = 2 if model.bidirectional else 1
    return torch.randn(B, T, D * model.hidden_size, generator=g, dtype=torch.float64)


def _shard(t, rank):
    n = t.size(0) // WORLD
    return t[rank * n:(rank + 1) * n]


def _train_step(model, x, y):
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    _loss(model, x, y).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    opt.step()
    return grads


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _run_cases(rank, states):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    mesh = init_device_mesh("cpu", (WORLD,))
    results = {}
    for name, make in _modules().items():
        x, g = _data()
        model = make()
        y = _targets(name, model, g)
        xs, ys = _shard(x, rank), _shard(y, rank)
        for kind in ("ddp", "fsdp2"):
            m = make()
            m.load_state_dict(states[name])
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if kind == "ddp":
                    wrapped = DDP(m)
                    grads = _train_step(wrapped, xs, ys)
                    grads = {n.removeprefix("module."): v.clone() for n, v in grads.items()}
                    params = {n: p.detach().clone() for n, p in m.named_parameters()}
                else:
                    fully_shard(m, mesh=mesh)
                    grads = {n: _full(v).clone() for n, v in _train_step(m, xs, ys).items()}
                    params = {n: _full(p.detach()).clone() for n, p in m.named_parameters()}
                    # unbatched input: a one-sequence batch per rank (the squeezed outputs)
                    out, h_n = m(xs[0])
                    (out.sum() + h_n.sum()).backward()
            results[(name, kind)] = dict(grads=grads, params=params,
                                         warnings=[f"{w.category.__name__}: {w.message}" for w in caught])
    return results


def _worker(rank, port, states, out_dir):
    # exits through os._exit: a gloo process group's threads can keep a finished
    # worker alive at interpreter shutdown
    code = 1
    try:
        torch.set_num_threads(1)  # two ranks on a 2-core machine
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=WORLD, timeout=timedelta(seconds=60))
        results = _run_cases(rank, states)
        dist.barrier()
        dist.destroy_process_group()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        code = 0
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
    finally:
        os._exit(code)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(states, out_dir):
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_worker, args=(_free_port(), states, str(out_dir)), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the distributed workers did not finish within {DEADLINE_S} s")
    except mp.ProcessRaisedException as e:  # not expected: the workers catch everything
        pytest.fail(str(e))
    except mp.ProcessExitedException:
        errs = [p.read_text() for p in sorted(out_dir.glob("rank*.err"))]
        pytest.fail("a distributed worker failed:\n" + "\n".join(errs))
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join()
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory):
    torch.manual_seed(0)
    states = {name: make().state_dict() for name, make in _modules().items()}
    ranks = _spawn(states, tmp_path_factory.mktemp("dist"))
    return states, ranks


def _reference(name, state):
    # one process, the whole batch, the same loss (a mean over the whole batch)
    x, g = _data()
    model = _modules()[name]()
    model.load_state_dict(state)
    y = _targets(name, model, g)
    grads = {n: v.clone() for n, v in _train_step(model, x, y).items()}
    return grads, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
@pytest.mark.parametrize("name", ["leaky", "clockwork"])
def test_data_parallel_matches_one_process(distributed_runs, name, kind):
    states, ranks = distributed_runs
    ref_grads, ref_params = _reference(name, states[name])
    for rank, results in enumerate(ranks):
        got = results[(name, kind)]
        assert set(got["grads"]) == set(ref_grads)
        for n, ref in ref_grads.items():
            assert ref.abs().max() > 0, f"{n}: the reference gradient is all zero"
            torch.testing.assert_close(got["grads"][n], ref, rtol=1e-9, atol=1e-12,
                                       msg=lambda m: f"rank {rank} {kind} grad of {n}: {m}")
        for n, ref in ref_params.items():
            assert not torch.equal(ref, states[name][n]), f"{n}: the step did not move it"
            torch.testing.assert_close(got["params"][n], ref, rtol=1e-9, atol=1e-12,
                                       msg=lambda m: f"rank {rank} {kind} parameter {n}: {m}")


@pytest.mark.parametrize("name", ["leaky", "clockwork"])
def test_fsdp2_no_view_warning(distributed_runs, name):
    _, ranks = distributed_runs
    for rank, results in enumerate(ranks):
        caught = results[(name, "fsdp2")]["warnings"]
        assert not [w for w in caught if "view" in w], f"rank {rank}: {caught}"
        assert not caught, f"rank {rank} warned under FSDP2: {caught}"
