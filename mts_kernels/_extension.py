"""Loading of the compiled kernels (mts_kernels._C).

Importing _C runs its static STABLE_TORCH_LIBRARY initialisers, which define the op
schemas and register the CPU (and CUDA) kernels. A build made against another
torch or CUDA is never loaded: that is how kernel libraries die with undefined
symbols or segfaults. The versions are compared first (mts_kernels/_build_info.py,
written by setup.py beside _C), and only a matching _C is imported. A build on
torch's stable ABI (_build_info's stable_abi) matches every torch from its
torch_target on with the same CUDA major; any other build matches only the torch
minor and CUDA minor it was compiled against.

When the compiled kernels cannot be used (a mismatched build, no build, or a _C
that fails to load):
  - where the Triton fallback can serve (triton installed and a CUDA GPU present,
    or TRITON_INTERPRET=1), the package imports and warns
    (CompiledKernelsUnavailableWarning) saying why and which backend runs instead;
  - with MTS_KERNELS_BACKEND=reference it imports and warns likewise (every call
    then runs the plain PyTorch loops: a way to run `python -m mts_kernels info`);
  - otherwise importing mts_kernels raises ImportError naming the built-against and
    running versions and the command that rebuilds it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import warnings
from typing import Optional

import torch


class CompiledKernelsUnavailableWarning(RuntimeWarning):
    """mts_kernels imported without its compiled kernels; the message says why and
    which backend runs instead."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SOURCE_ROOT = os.path.dirname(_PACKAGE_DIR)


def _mm(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _version_tuple(version: str) -> tuple[int, ...]:
    """(major, minor) of "2.14.1+cu130", "2.15.0a0+git..." or "2.11"."""
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in _mm(version).split("."))


def _in_source_checkout() -> bool:
    return all(os.path.exists(os.path.join(_SOURCE_ROOT, p)) for p in ("setup.py", "csrc"))


def rebuild_hint() -> str:
    """The command that builds mts_kernels for the running torch."""
    cu = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    if _in_source_checkout():
        return (f"rebuild it against the running torch: `pip install --no-build-isolation -e {_SOURCE_ROOT}` "
                f"(or `make build` there)")
    return ("rebuild it against the running torch: `pip install --no-build-isolation --no-deps "
            "--force-reinstall <mts_kernels sdist or source checkout>`, or install the mts_kernels "
            f"wheel built for it (local version +{cu}.torch{_mm(torch.__version__)})")



def _describe_build(info: Optional[dict]) -> str:
    if not info:
        return "not built"
    cuda = f"CUDA {info['torch_cuda']}" if info.get("torch_cuda") else "CPU only"
    stable = f", stable ABI: torch >= {info.get('torch_target')}" if info.get("stable_abi") else ""
    return f"torch {info.get('torch')} ({cuda}, Python {info.get('python')}{stable})"


def _describe_running() -> str:
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only torch"
    return f"torch {torch.__version__} ({cuda}, Python {platform.python_version()})"


def _mismatch(info: dict) -> Optional[str]:
    """Why a build described by `info` cannot run under this torch, or None."""
    built_torch = info.get("torch", "?")
    # A stable-ABI _C calls torch only through its versioned C shim, which later
    # torch releases keep serving; the CUDA runtime it links stays ABI compatible
    # within a major version only.
    stable = bool(info.get("stable_abi"))
    if stable:
        target = info.get("torch_target") or _mm(built_torch)
        if _version_tuple(torch.__version__) < _version_tuple(target):
            return (f"torch {_mm(torch.__version__)} is older than torch {target}, the oldest this "
                    f"stable-ABI build serves")
    elif _mm(built_torch) != _mm(torch.__version__):
        return f"torch {_mm(built_torch)} != torch {_mm(torch.__version__)}"
    built_cuda = info.get("torch_cuda")
    if built_cuda is not None:
        if torch.version.cuda is None:
            return f"it has CUDA {built_cuda} kernels but the running torch is a CPU-only build"
        if stable and built_cuda.split(".")[0] != torch.version.cuda.split(".")[0]:
            return (f"CUDA {built_cuda} and CUDA {torch.version.cuda} differ in major version "
                    f"(a stable-ABI build needs the same one)")
        if not stable and _mm(built_cuda) != _mm(torch.version.cuda):
            return f"CUDA {built_cuda} != CUDA {torch.version.cuda}"
    abi = info.get("cxx11_abi")
    if abi is not None and bool(abi) != bool(torch._C._GLIBCXX_USE_CXX11_ABI):
        return f"_GLIBCXX_USE_CXX11_ABI={int(abi)} != {int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    return None


def _load():
    """Returns (build_info or None, reason the compiled kernels are unavailable or None)."""
    try:
        from mts_kernels._build_info import BUILD_INFO
    except ImportError:
        return None, (f"mts_kernels was not compiled (no mts_kernels._build_info; running "
                      f"{_describe_running()}); {rebuild_hint()}")
    versions = f"built against {_describe_build(BUILD_INFO)}, running {_describe_running()}"
    why = _mismatch(BUILD_INFO)
    if why is not None:
        return BUILD_INFO, (f"mts_kernels._C was not loaded: it was {versions} ({why}); "
                            f"{rebuild_hint()}")
    if importlib.util.find_spec("mts_kernels._C") is None:
        return BUILD_INFO, (f"mts_kernels._C is missing from the installation ({versions}); "
                            f"{rebuild_hint()}")
    try:
        from mts_kernels import _C  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:
        return BUILD_INFO, f"mts_kernels._C failed to load ({versions}): {e}; {rebuild_hint()}"
    return BUILD_INFO, None


def triton_fallback() -> tuple[Optional[str], Optional[str]]:
    """(what the Triton backend serves, None) when it can stand in for the compiled
    kernels, else (None, why it cannot)."""
    if importlib.util.find_spec("triton") is None:
        return None, "the triton package is not installed"
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    has_gpu = torch.cuda.is_available()
    if has_gpu and interpreted:
        return ("the Triton backend runs CUDA tensors (under TRITON_INTERPRET=1: slow) and, "
                "with backend='triton', CPU tensors"), None
    if has_gpu:
        return ("the Triton backend runs CUDA tensors; CPU tensors need backend='reference' "
                "(plain PyTorch loops)"), None
    if interpreted:
        return ("the Triton backend runs under TRITON_INTERPRET=1 (the interpreter: for testing, "
                "slow): pass backend='triton' (or backend='reference') for CPU tensors"), None
    return None, "no CUDA GPU is available and TRITON_INTERPRET is not 1"


def _fallback_or_raise(reason: str) -> str:
    """Warns and returns the fallback description, or raises ImportError."""
    if os.environ.get("MTS_KERNELS_BACKEND") == "reference":
        using = "MTS_KERNELS_BACKEND=reference: every call runs the plain PyTorch loops"
    else:
        using, why_not = triton_fallback()
        if using is None:
            raise ImportError(
                f"mts_kernels cannot run: {reason}. No fallback backend either: Triton cannot serve "
                f"({why_not}). (MTS_KERNELS_BACKEND=reference imports it anyway, with the plain "
                f"PyTorch loops, e.g. for `python -m mts_kernels info`.)")
    warnings.warn(f"mts_kernels: compiled kernels unavailable: {reason}. Using the fallback: {using}.",
                  CompiledKernelsUnavailableWarning, stacklevel=3)
    return using


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
# What serves in place of the compiled kernels (None when they are loaded).
FALLBACK = None if COMPILED else _fallback_or_raise(UNAVAILABLE_REASON)
KERNELS = _registered_kernels() if COMPILED else frozenset()


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the compiled library registered a `dispatch_key` kernel for mts_kernels::op."""
    return (op, dispatch_key) in KERNELS
