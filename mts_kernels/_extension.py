"""Loading of the compiled kernels (mts_kernels._C).

Importing _C runs its static TORCH_LIBRARY initialisers, which define the op
schemas and register the CPU (and CUDA) kernels. A build made against another
torch or CUDA is never loaded: that is how kernel libraries die with undefined
symbols or segfaults. Instead the reason is kept, and the package runs on
whatever backend remains (Triton, the reference loops), or, if none can
serve, raises ImportError with the command that rebuilds it.
"""

from __future__ import annotations

import importlib.util

import torch

REBUILD_HINT = (
    "rebuild it against the running torch: `pip install --no-build-isolation -e .` in a source "
    "checkout (or `make build`), or install the wheel built for this torch"
)


def _mm(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _load():
    """Returns (build_info or None, reason the compiled kernels are unavailable or None)."""
    try:
        from mts_kernels._build_info import BUILD_INFO
    except ImportError:
        return None, f"mts_kernels was not compiled (no mts_kernels._build_info); {REBUILD_HINT}"
    built_torch, running_torch = BUILD_INFO["torch"], torch.__version__
    if _mm(built_torch) != _mm(running_torch):
        return BUILD_INFO, (
            f"mts_kernels._C was built against torch {built_torch} but torch {running_torch} is "
            f"running; {REBUILD_HINT}"
        )
    built_cuda = BUILD_INFO.get("torch_cuda")
    if built_cuda is not None and torch.version.cuda is not None and _mm(built_cuda) != _mm(
        torch.version.cuda
    ):
        return BUILD_INFO, (
            f"mts_kernels._C was built against CUDA {built_cuda} but torch runs CUDA "
            f"{torch.version.cuda}; {REBUILD_HINT}"
        )
    if importlib.util.find_spec("mts_kernels._C") is None:
        return BUILD_INFO, f"mts_kernels._C is missing from the installation; {REBUILD_HINT}"
    try:
        from mts_kernels import _C  # noqa: F401
    except (ImportError, OSError) as e:
        return BUILD_INFO, f"mts_kernels._C failed to load ({e}); {REBUILD_HINT}"
    return BUILD_INFO, None


def _registered_kernels():
    """{(op, dispatch key)} registered by the compiled library. Registration is
    static (it happens when _C loads), so this is read once and later lookups are
    plain set membership, which torch.compile traces without graph breaks."""
    found = set()
    for name in torch._C._dispatch_get_all_op_names():
        if name.startswith("mts_kernels::"):
            for key in ("CPU", "CUDA"):
                if torch._C._dispatch_has_kernel_for_dispatch_key(name, key):
                    found.add((name.split("::", 1)[1], key))
    return frozenset(found)


BUILD_INFO, UNAVAILABLE_REASON = _load()
COMPILED = UNAVAILABLE_REASON is None
KERNELS = _registered_kernels() if COMPILED else frozenset()


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the compiled library registered a `dispatch_key` kernel for mts_kernels::op."""
    return (op, dispatch_key) in KERNELS
