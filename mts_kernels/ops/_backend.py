"""Which backend runs an op call.

Automatic choice: the compiled CUDA kernels for CUDA tensors (Triton when they
were not compiled, or for float64), the compiled C++ kernels for CPU tensors.
Override per call with backend="cuda"|"triton"|"cpu"|"reference"|"auto", or for
the whole process with the environment variable MTS_KERNELS_BACKEND.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from mts_kernels import _extension

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")
ENV_VAR = "MTS_KERNELS_BACKEND"


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this call; the message says how to get it."""


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
# Forward ops that have a Triton implementation (registered by mts_kernels/ops/*).
_TRITON_OPS: set = set()


def register_triton(op: str) -> None:
    _TRITON_OPS.add(op)


def triton_available() -> bool:
    return _TRITON_INSTALLED


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cuda_compiled(op: str) -> bool:
    return _extension.has_kernel(op, "CUDA")


def cpu_compiled(op: str) -> bool:
    return _extension.has_kernel(op, "CPU")


def compiled_op_runs(op: str, tensors) -> bool:
    """Whether the compiled op `op` (no Triton or reference alternative) can take
    these tensors (None entries are absent operands): all of one dtype, on the CPU
    (or meta) where its CPU kernel was compiled, or all on CUDA where its CUDA
    kernel was."""
    ts = [t for t in tensors if t is not None]
    devices = {t.device.type for t in ts}
    on_device = ((devices <= {"cpu", "meta"} and cpu_compiled(op))
                 or (devices == {"cuda"} and cuda_compiled(op)))
    return on_device and len({t.dtype for t in ts}) == 1


def why_unavailable(backend: str, op: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when `backend` can run `op` on tensors of this device and dtype, else why not."""
    if backend == "reference":
        return None
    if backend == "cpu":
        # meta tensors: the op's fake kernel is its Meta kernel (shapes, no data)
        if device.type not in ("cpu", "meta"):
            return f"backend='cpu' runs CPU tensors, got tensors on {device}"
        if not cpu_compiled(op):
            return f"the compiled C++ kernels are unavailable: {_extension.UNAVAILABLE_REASON}"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"backend='cuda' runs CUDA tensors, got tensors on {device}"
        if dtype == torch.float64:
            return "the CUDA kernels support float32, float16 and bfloat16; use backend='triton' for float64"
        if not cuda_compiled(op):
            if not _extension.COMPILED:
                return f"the compiled kernels are unavailable: {_extension.UNAVAILABLE_REASON}"
            return ("mts_kernels was built without CUDA kernels: install a CUDA build of torch and "
                    "the CUDA toolkit (set CUDA_HOME), then `pip install --no-build-isolation -e .` "
                    "(MTS_KERNELS_FORCE_CUDA=1 makes a CPU-only build an error)")
        return None
    if backend == "triton":
        if op not in _TRITON_OPS:
            return f"there is no Triton kernel for {op.removesuffix('_fwd')}"
        if not triton_available():
            return "backend='triton' needs the triton package: `pip install triton`"
        if device.type == "cpu" and not triton_interpreted():
            return ("backend='triton' runs CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
                    "before triton is imported (the interpreter is for testing, not speed)")
        if device.type not in ("cpu", "cuda"):
            return f"backend='triton' runs CUDA tensors, got tensors on {device}"
        return None
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def resolve(requested: Optional[str], op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs this call (see the module docstring), or a clear error."""
    backend = requested if requested is not None else os.environ.get(ENV_VAR) or "auto"
    if backend not in BACKENDS:
        source = "backend" if requested is not None else ENV_VAR
        raise ValueError(f"{source}={backend!r} is not a backend; expected one of {BACKENDS}")
    if backend == "auto":
        if device.type == "cuda":
            candidates = ("cuda", "triton")
        elif device.type in ("cpu", "meta"):
            candidates = ("cpu", "triton")  # Triton only under TRITON_INTERPRET=1
        else:
            candidates = ("triton",)
        reasons = []
        for c in candidates:
            why = why_unavailable(c, op, device, dtype)
            if why is None:
                return c
            reasons.append(f"{c}: {why}")
        raise BackendUnavailableError(
            f"mts_kernels.{op}: no fast backend for {dtype} tensors on {device} ("
            + "; ".join(reasons) + "); backend='reference' runs the plain PyTorch loop")
    why = why_unavailable(backend, op, device, dtype)
    if why is not None:
        raise BackendUnavailableError(f"mts_kernels.{op}: {why}")
    return backend
