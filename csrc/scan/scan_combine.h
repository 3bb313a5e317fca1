#pragma once
// The chunked scan's combine: affine maps h -> A h + X over runs of steps, how
// they compose and how one is applied to a carry, plus the chunk geometry.
// Shared by the CUDA kernels (scan_cuda_kernels.cuh) and the host emulation of
// their combine order (scan_emulate_cpu.cpp), so `make test` checks the very
// arithmetic the GPU runs on a machine without one.
//
// Why apply is not just A * c + X: A is the product of every decay in the run,
// and for |a| > 1 it overflows long before the state does (|a| = 1.45 over
// one 240-step chunk, or the look-back's composition over several). With a
// zero carry (h0 = None, or a prefix of zero inputs) A * c + X is then
// inf * 0 = NaN where the sequential recurrence, which never forms A, gives X.
// A zero carry contributes nothing exactly (a_k * 0 = 0 at every step), so the
// result is X, what A * 0 + X gives for a finite A (up to the sign of a zero). A NaN carry
// still gives NaN (NaN == 0 is false), and a NaN decay or input inside the run
// has already made X NaN (NaN * 0 = NaN), so NaN propagates as sequentially.
//
// What composition cannot reproduce, and the sequential order can (documented,
// not fixed: it needs an exponent beside A): a nonzero carry so small that
// A * c is finite while A alone overflows gives inf; an infinite carry meeting
// an A that underflowed to 0 gives NaN where the sequential state stays inf;
// and A * c + X with both terms overflowing in opposite signs gives NaN.
// Wherever A, X and the carry are finite, results agree to rounding.
#include "../common.h"
#include "scan_math.h"

namespace mts {

template <typename acc_t>
struct Affine {
  acc_t A;
  acc_t X;
};

template <typename acc_t>
MTS_HD Affine<acc_t> affine_identity() {
  return Affine<acc_t>{acc_t(1), acc_t(0)};
}

// The state after the map, entered with `carry` (see the top of this file).
template <typename acc_t>
MTS_HD acc_t affine_apply(Affine<acc_t> m, acc_t carry) {
  return carry == acc_t(0) ? m.X : m.A * carry + m.X;
}

// First (A1, X1) then (A2, X2): the associative operator of the scan. X is the
// second map applied to X1, with apply's zero rule: the first map's zero
// output must not meet an overflowed A2.
template <typename acc_t>
MTS_HD Affine<acc_t> affine_then(Affine<acc_t> first, Affine<acc_t> second) {
  return Affine<acc_t>{second.A * first.A, affine_apply(second, first.X)};
}

// The forward map extended by one more step (a, x) at its end; from the
// identity, X is the sequential recurrence entered with 0.
template <bool LEAKY, typename acc_t>
MTS_HD Affine<acc_t> affine_fwd_step(Affine<acc_t> m, acc_t a, acc_t x) {
  return Affine<acc_t>{m.A * a, scan_step<LEAKY>(a, x, m.X)};
}

// The backward carry map extended by one earlier step: the carry c entering
// step k from k + 1 leaves it as a_k (g_k + c).
template <typename acc_t>
MTS_HD Affine<acc_t> affine_bwd_step(Affine<acc_t> m, acc_t a, acc_t g) {
  return Affine<acc_t>{m.A * a, a * (g + m.X)};
}

namespace scan_cuda {

// Geometry of the chunked kernels (scan_cuda_kernels.cuh explains the
// choice): a tile is 32 channels x one chunk of kDataWarps segments, one per
// data warp, of kFwdSteps (forward) or kBwdSteps (backward) steps each.
constexpr int kWarp = 32;
constexpr int kDataWarps = 15;
constexpr int kFwdSteps = 16;  // a, x: 32 registers
constexpr int kFwdChunk = kDataWarps * kFwdSteps;
constexpr int kBwdSteps = 8;   // g, a, h_{k-1}, v: 32 registers
constexpr int kBwdChunk = kDataWarps * kBwdSteps;

}  // namespace scan_cuda
}  // namespace mts
