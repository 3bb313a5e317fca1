"""Autocast, torch.func and forward-mode AD for the custom ops.

Two routes into every op:
- the registered op (torch.ops.mts_kernels.*) with its autograd from
  torch.library.register_autograd: eager training and torch.compile;
- an autograd.Function with setup_context, jvp and vmap, taken while a torch.func
  transform (grad, vjp, jvp, vmap, jacrev, jacfwd) or forward-mode AD is active,
  which the generated autograd of register_autograd does not support (torch
  raises "must override the setup_context staticmethod" there, and forward AD
  through it returns no tangent).
Both routes run the same fused kernels and the same derivative formulas.

Autocast: the forward ops get Autocast{CPU,CUDA} kernels that cast their floating
inputs (not float64, as torch's own autocast) to the autocast dtype and call the
op below autocast: the recurrence runs in that dtype with float32 state and
accumulation inside the kernels, and the casts are recorded by autograd, so the
parameters' gradients come back in the parameters' dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_AUTOCAST_DEVICES = ("cpu", "cuda")
_ELIGIBLE = (torch.float16, torch.bfloat16, torch.float32)


def transform_active() -> bool:
    """A torch.func transform or a forward-AD dual level is active (and we are
    not tracing for torch.compile, which handles the registered ops itself)."""
    if torch.compiler.is_compiling():
        return False
    return (torch._C._functorch.peek_interpreter_stack() is not None
            or torch.autograd.forward_ad._current_level >= 0)


def nested_forward_mode() -> bool:
    """Forward mode over forward mode: more than one torch.func jvp level (jvp of a
    jvp, jacfwd(jacfwd(f))). The RNN cells' jvp rules read their saved outputs,
    whose tangents of the outer level such a composition loses, so they refuse it
    (check_forward_over_forward) rather than return a silently wrong result."""
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is None:
        return False
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    jvp = torch._C._functorch.TransformType.Jvp
    return sum(i.key() == jvp for i in retrieve_all_functorch_interpreters()) >= 2


def check_forward_over_forward(op: str) -> None:
    """A clear error for forward over forward mode through a fused RNN cell."""
    if nested_forward_mode():
        raise RuntimeError(
            f"{op}: forward mode over forward mode (a jvp of a jvp, torch.func.jacfwd(jacfwd(f))) "
            "through the fused kernels is not implemented. For Hessians use "
            "torch.func.jacrev(torch.func.jacfwd(f)) (reverse over forward), or run this computation "
            "with backend='reference' (the plain PyTorch loop, differentiable in every order)")


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype autocast casts this device's float tensors to, or None when off."""
    if device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def effective_dtype(t: Tensor, cast: Optional[torch.dtype]) -> torch.dtype:
    """The dtype a float tensor has inside an op under autocast (cast: the
    autocast dtype or None)."""
    return cast if (cast is not None and t.dtype in _ELIGIBLE) else t.dtype


def autocast_inputs(args, device_type: str, dtype: torch.dtype):
    """The op's arguments as autocast hands them on: eligible float tensors on
    this device cast to dtype (differentiably), everything else unchanged."""
    def cast(v):
        if isinstance(v, Tensor) and v.device.type == device_type and v.dtype in _ELIGIBLE:
            return v.to(dtype)
        return v

    return tuple(cast(a) for a in args)


def register_autocast(qualname: str) -> None:
    """Autocast kernels for a forward op, for each device autocast supports.

    torch.library.register_autocast takes one fixed dtype at registration; this
    casts to the dtype of the autocast region the call runs in (bfloat16 or
    float16, whichever the user chose)."""
    ns, name = qualname.split("::")
    op = getattr(getattr(torch.ops, ns), name).default
    for device_type in _AUTOCAST_DEVICES:
        key = "Autocast" + ("CPU" if device_type == "cpu" else "CUDA")
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(*args, _device_type=device_type, _excluded=excluded):
            dtype = torch.get_autocast_dtype(_device_type)
            with torch._C._ExcludeDispatchKeyGuard(_excluded):
                return op(*autocast_inputs(args, _device_type, dtype))

        torch.library.impl(qualname, key, lib=_lib(ns))(kernel)


def register_fused(name: str, suffix: str, fake_fwd, fake_bwd, backward_of, setup_context) -> None:
    """The Python side of a fused recurrence's ops mts_kernels::{name}_fwd{suffix} /
    _bwd{suffix}: fake kernels, autograd (backward_of(bwd_name) -> backward) and
    autocast of the forward."""
    fwd, bwd = f"{name}_fwd{suffix}", f"{name}_bwd{suffix}"
    torch.library.register_fake(f"mts_kernels::{fwd}")(fake_fwd)
    torch.library.register_fake(f"mts_kernels::{bwd}")(fake_bwd)
    torch.library.register_autograd(f"mts_kernels::{fwd}", backward_of(bwd), setup_context=setup_context)
    register_autocast(f"mts_kernels::{fwd}")


def per_sample(apply, args, in_dims, n: int):
    """A vmap rule by a loop: apply(*sample) for each of the n vmapped samples
    (args sliced along their in_dims), outputs stacked along dim 0; returns
    (outputs, out_dims) as an autograd.Function's vmap does."""
    outs = []
    for i in range(n):
        sample = [a.select(d, i) if (isinstance(a, Tensor) and d is not None) else a
                  for a, d in zip(args, in_dims)]
        outs.append(apply(*sample))
    return tuple(torch.stack(o) for o in zip(*outs)), (0,) * len(outs[0])


_LIBS: dict = {}


def _lib(ns: str):
    # one IMPL library per namespace, kept alive for the process
    if ns not in _LIBS:
        _LIBS[ns] = torch.library.Library(ns, "IMPL")
    return _LIBS[ns]


def batch_to_front(t: Optional[Tensor], dim: Optional[int], n: int) -> Optional[Tensor]:
    """A vmapped argument with its vmap dimension first (expanded when unbatched)."""
    if t is None:
        return None
    if dim is None:
        return t.expand(n, *t.shape)
    return t.movedim(dim, 0)
