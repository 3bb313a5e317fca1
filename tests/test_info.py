"""`python -m mts_kernels info`, run as a subprocess as a user runs it."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mts_kernels import _extension

ROOT = Path(__file__).resolve().parents[1]
OPS = ("linear_scan", "leaky_integrate", "leaky_rnn", "clockwork_rnn")


def _info(*args, backend=None):
    env = {k: v for k, v in os.environ.items() if k not in ("MTS_KERNELS_BACKEND", "TRITON_INTERPRET")}
    if backend is not None:
        env["MTS_KERNELS_BACKEND"] = backend
    return subprocess.run([sys.executable, "-m", "mts_kernels", "info", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@functools.lru_cache(maxsize=None)
def _json(backend=None):
    proc = _info("--json", backend=backend)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_default_backends():
    info = _json()
    assert info["requested_backend"] == "auto"
    cpu = info["backends"]["cpu"]
    expected = "cpu" if _extension.COMPILED else None
    for op in OPS:
        if expected:
            assert cpu["serves"][op] == expected, cpu
    cuda = info["backends"]["cuda"]
    if not torch.cuda.is_available():
        # compiled or not, nothing runs CUDA tensors without a GPU: never "available"
        for name in ("cuda", "triton"):
            assert cuda["backends"][name] != "available", cuda
        if _extension.has_kernel("leaky_rnn_fwd", "CUDA"):
            assert cuda["backends"]["cuda"].startswith("compiled, but cannot run"), cuda
        for op in OPS:
            assert cuda["serves"][op].startswith("none ("), cuda
        assert cuda["auto"].startswith("none ("), cuda


def test_reference_backend_serves_every_op():
    info = _json("reference")
    assert info["requested_backend"] == "reference"
    for device in ("cpu", "cuda"):
        for op in OPS:
            assert info["backends"][device]["serves"][op] == "reference"
    # the automatic choice and what each backend can do are reported unchanged
    assert info["backends"]["cpu"]["backends"] == _json()["backends"]["cpu"]["backends"]


def test_unavailable_requested_backend_says_why():
    info = _json("triton")  # CPU tensors need TRITON_INTERPRET=1, unset here
    for op in OPS:
        served = info["backends"]["cpu"]["serves"][op]
        assert served.startswith("none (") and "backend='triton'" in served, served


def test_bogus_backend_is_an_error():
    for args in ((), ("--json",)):
        proc = _info(*args, backend="bogus")
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert proc.stdout == ""
        assert "MTS_KERNELS_BACKEND='bogus' is not a backend" in proc.stderr
        assert "reference" in proc.stderr  # lists the valid names


def test_cpu_description():
    info = _json()
    c = info["cpu"]
    assert c["model"] and c["model"] != "unknown"
    assert c["torch_threads"] == int(subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True, text=True, timeout=60).stdout)
    assert c["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    flags = set()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    for ext in ("avx2", "avx512f", "fma"):
        assert (ext in c["vector_extensions"]) == (ext in flags)


def test_text_output():
    proc = _info()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "MTS_KERNELS_BACKEND: auto" in out
    assert "torch threads:" in out and "CPU:" in out and "vector ext.:" in out
    for op in OPS:
        assert f"{op:<19} served by" in out
    if not torch.cuda.is_available():
        cuda_part = out.split("cuda tensors")[1]
        assert "cannot run" in cuda_part
        for line in cuda_part.splitlines():
            if line.strip().startswith(("cuda ", "triton ")):
                assert "available" != line.split()[-1], line
