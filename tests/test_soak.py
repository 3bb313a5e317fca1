"""Soak: 10,000 forward + backward calls of every op (and the packed module path)
at small sizes, with resident memory flat after warm-up; and repeated large CPU
outputs, whose huge-page blocks the cache keeps for reuse within its bound
(kCacheLimit = 512 MiB in csrc/huge_page_cache.h). Marked slow; `make test` runs it."""

import os

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import mts_kernels

pytestmark = pytest.mark.slow

CALLS = 10_000
WARMUP = 500
MIB = 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cases():
    gen = torch.Generator().manual_seed(0)
    B, T, H = 3, 16, 8
    x = torch.randn(B, T, H, generator=gen, requires_grad=True)
    a = torch.rand(B, T, H, generator=gen, requires_grad=True)
    p = torch.randn(T, B, H, generator=gen, requires_grad=True)
    w = (torch.randn(H, H, generator=gen) / H ** 0.5).requires_grad_()
    alpha = torch.rand(H, generator=gen, requires_grad=True)
    L = torch.tensor([16, 5, 0])
    rnn = mts_kernels.LeakyRNN(H, H, leak="learned", skip=2, bidirectional=True)
    packed = pack_padded_sequence(torch.randn(T, B, H, generator=gen), torch.tensor([16, 9, 2]))
    return {
        "linear_scan": lambda: mts_kernels.linear_scan(a, x, lengths=L, reverse=True).sum(),
        "leaky_integrate": lambda: mts_kernels.leaky_integrate(x, a, lengths=L).sum(),
        "leaky_rnn": lambda: mts_kernels.leaky_rnn(p, w, alpha=alpha, skip=3, weight_skip=w,
                                                   dilation=2, lengths=L, reverse=True).sum(),
        "clockwork_rnn": lambda: mts_kernels.clockwork_rnn(p, w, periods=[1, 3], module_sizes=[5, 3],
                                                           alpha=alpha, t0=2, lengths=L).sum(),
        "LeakyRNN_packed": lambda: rnn(packed)[0].data.sum(),
    }


@pytest.mark.parametrize("op", list(_cases()))
def test_soak_rss_flat(op):
    loss_of = _cases()[op]
    for _ in range(WARMUP):
        loss_of().backward()
    before = _rss()
    for _ in range(CALLS):
        loss_of().backward()
    grown = _rss() - before
    assert grown < 4 * MIB, f"{op}: RSS grew {grown / MIB:.1f} MiB over {CALLS} calls"


def test_large_outputs_reuse_cached_blocks():
    """8 MiB outputs come from the huge-page block cache: repeated calls reuse its
    blocks instead of growing, and what it keeps stays under its 512 MiB bound."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4096, 128, generator=gen)  # 8 MiB per output
    a = torch.rand(128, generator=gen)
    for _ in range(20):
        mts_kernels.linear_scan(a, x)
    before = _rss()
    for _ in range(500):
        mts_kernels.linear_scan(a, x)
    assert _rss() - before < 32 * MIB
    held = [mts_kernels.linear_scan(a, x) for _ in range(8)]  # live at once: 64 MiB
    del held
    assert _rss() - before < 512 * MIB + 32 * MIB
