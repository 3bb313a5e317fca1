#pragma once
// Device code shared by scan_cuda_fwd.cu and scan_cuda_bwd.cu (private to
// them; no torch headers). Two algorithms, picked by use_chunked_scan():
//
//  * Sequential: one thread per channel (b, d) walks all T steps. Threads run
//    along the flattened channel index n = b * D + d, so a warp touches 32
//    consecutive d of one time row (coalesced). Each thread issues the loads of
//    a group of future steps before using any of them, so enough bytes are in
//    flight per thread when there are many channels.
//
//  * Chunked single-pass scan over time: a tile is 32 consecutive channels
//    (one per lane) x a chunk of L steps; data warp w of the block owns
//    S = L / W consecutive steps and keeps them in registers. The data warps
//    compose their steps into affine maps (shared memory); a control warp
//    composes those into the tile's map and takes the tile's carry-in by
//    decoupled look-back over the tiles of the same channels in earlier
//    chunks; the data warps then replay their steps from registers. Every
//    operand is read once and every output written once. Blocks are
//    persistent and loop over tiles in ticket order.
//    The maps' composition and application (and why a zero carry is taken
//    apart) are in scan_combine.h; tests/test_scan_combine.py checks this
//    order on the CPU through its host emulation (scan_emulate_cpu.cpp).
//
// Tile statuses (look-back): per (tile, lane) an int flag and three floats in
// structure-of-arrays form, so the 32 lanes of a warp touch one 128-byte line
// per array. A lane stores its payload, then st.release's its own flag; a
// reader ld.acquire's the flag before reading the payload. Each payload slot is
// written once per launch, so the protocol needs no cross-lane reasoning.
// Progress: tiles are handed out in ticket order (chunk-major), a tile only
// waits on tiles with smaller tickets, each of which has been claimed by a
// running block, and a tile publishes its aggregate before it waits on
// anything itself (see next_ticket for the persistent loop).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "../common.h"
#include "scan_launch.h"
#include "scan_combine.h"
#include "scan_math.h"

#define MTS_DEV __device__ __forceinline__

namespace mts {
namespace scan_cuda {

// ---------------------------------------------------------------------------
// Launch geometry and algorithm choice (host and device).

// Sequential kernels: steps whose loads are issued together per thread.
// Forward holds a, x per step (2 registers), backward g, a, h_{k-1} (+ v): the
// groups keep ~64 values in flight per thread either way.
constexpr int kSeqThreads = 128;
constexpr int kSeqFwdSteps = 16;
constexpr int kSeqBwdSteps = 8;

// Chunked kernels: kDataWarps warps x S steps per thread, L = kDataWarps * S
// steps per tile, plus one control warp for the ticket, the look-back and the
// statuses. The control warp holds no tile data, so the data warps' registers
// never coexist with the look-back's: 512 threads at <= 64 registers give 2
// resident blocks (32 warps) per SM. One block's tile (32 ch x L steps) alone
// keeps 30-60 KiB of loads in flight, 2-4x what an H100 SM needs to cover
// DRAM latency, so the SM stays busy while the other block waits in its
// look-back. Larger tiles mean fewer look-backs and a smaller workspace
// (16 B per lane and tile, i.e. 16 / L bytes per element).
// kWarp, kDataWarps, kFwdSteps, kBwdSteps and the chunk lengths are in
// scan_combine.h (the host emulation of the combine order uses them too).
constexpr int kChunkedThreads = (kDataWarps + 1) * kWarp;
constexpr int kChunkedMinBlocks = 2;

// Heuristic (must depend on B, T, D only: the workspace / partial-row sizes
// the caller allocates are derived from the same decision).
//  - With >= 64Ki channels the sequential kernel has >= ~500 threads per SM,
//    each with a group of 8-16 steps of loads in flight: several MiB
//    outstanding, more than DRAM latency x bandwidth, so it runs at the memory
//    floor with no workspace, no look-back and no extra launches.
//  - Fewer channels cannot fill the GPU one thread per channel; time must be
//    split, so the chunked scan is used, unless T is so short (< 64) that the
//    sequential kernel's few dependent load groups cost about as much as the
//    chunked kernel's fixed costs (workspace zeroing, ticket, look-back).
constexpr int64_t kSeqMinChannels = int64_t(1) << 16;
constexpr int64_t kChunkedMinSteps = 64;

inline bool use_chunked_scan(int64_t B, int64_t T, int64_t D) {
  return B * D < kSeqMinChannels && T >= kChunkedMinSteps;
}

struct ChunkGeom {
  int64_t channels;  // B * D
  int64_t groups;    // tiles per chunk: ceil(B * D / 32)
  int64_t chunks;    // ceil(T / L)
  int64_t tiles;     // groups * chunks = number of tickets (< 2^31, checked at launch)
  int64_t lanes;     // status slots per tile: min(B * D, 32)
};

inline ChunkGeom chunk_geom(int64_t B, int64_t T, int64_t D, int64_t L) {
  ChunkGeom g;
  g.channels = B * D;
  g.groups = (g.channels + kWarp - 1) / kWarp;
  g.chunks = (T + L - 1) / L;
  g.tiles = g.groups * g.chunks;
  g.lanes = g.channels < kWarp ? g.channels : kWarp;
  return g;
}

constexpr int64_t kWsAlign = 256;
inline int64_t ws_align(int64_t bytes) { return (bytes + kWsAlign - 1) / kWsAlign * kWsAlign; }

// Workspace: [ticket counter][flags][aggregate A][aggregate X][inclusive],
// each array tiles * lanes elements, each region 256-byte aligned.
inline int64_t status_bytes(const ChunkGeom& g) {
  return kWsAlign + 4 * ws_align(g.tiles * g.lanes * 4);
}

struct TileStatus {
  unsigned int* ticket;
  int* flag;
  float* agg_a;
  float* agg_x;
  float* incl;
};

inline TileStatus tile_status(void* ws, const ChunkGeom& g) {
  char* p = static_cast<char*>(ws);
  const int64_t arr = ws_align(g.tiles * g.lanes * 4);
  TileStatus s;
  s.ticket = reinterpret_cast<unsigned int*>(p);
  s.flag = reinterpret_cast<int*>(p + kWsAlign);
  s.agg_a = reinterpret_cast<float*>(p + kWsAlign + arr);
  s.agg_x = reinterpret_cast<float*>(p + kWsAlign + 2 * arr);
  s.incl = reinterpret_cast<float*>(p + kWsAlign + 3 * arr);
  return s;
}

// Grid of the persistent chunked kernels: the resident capacity (each block
// loops over tickets), or fewer when there are fewer tiles. Residency is not
// required for correctness, only for speed: a block that never starts holds
// no ticket.
// A failed query also leaves its error in the runtime's last-error slot, where
// the launch check of some later, unrelated kernel would report it as its
// own: it is taken out here, and returned (thrown by the caller) instead.
inline cudaError_t chunked_blocks(int64_t tiles, unsigned int* blocks) {
  int dev = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return err;
  }
  const int64_t cap = static_cast<int64_t>(sms > 0 ? sms : 1) * kChunkedMinBlocks;
  *blocks = static_cast<unsigned int>(tiles < cap ? tiles : cap);
  return cudaSuccess;
}

// Grid of the sequential kernels: one thread per channel; the kernels
// grid-stride, so capping the grid only matters beyond 2^37 channels.
inline unsigned int seq_blocks(int64_t channels) {
  const int64_t blocks = (channels + kSeqThreads - 1) / kSeqThreads;
  return static_cast<unsigned int>(blocks < (int64_t(1) << 30) ? blocks : (int64_t(1) << 30));
}

// ---------------------------------------------------------------------------
// Element access: storage dtype <-> float32 state. Explicit conversions only
// (torch builds with __CUDA_NO_HALF_CONVERSIONS__ and friends).

MTS_DEV float to_float(float v) { return v; }
MTS_DEV float to_float(__half v) { return __half2float(v); }
MTS_DEV float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
struct FromFloat;
template <>
struct FromFloat<float> {
  static MTS_DEV float cvt(float v) { return v; }
};
template <>
struct FromFloat<__half> {
  static MTS_DEV __half cvt(float v) { return __float2half_rn(v); }
};
template <>
struct FromFloat<__nv_bfloat16> {
  static MTS_DEV __nv_bfloat16 cvt(float v) { return __float2bfloat16_rn(v); }
};

// Plain (coherent, L1-cached) loads, not __ldg: a non-coherent load may be
// sunk by ptxas past the stores that follow it (it promises no aliasing), and
// ptxas does so to save registers, which serialises a thread's load groups.
// A plain load must stay ahead of any later store, so each group's loads are
// all issued before its first store. L1 still serves the stride-0
// per-channel decay.
template <typename T>
MTS_DEV float load(const T* base, int64_t off) {
  return to_float(base[off]);
}

template <typename T>
MTS_DEV void store(T* base, int64_t off, float v) {
  base[off] = FromFloat<T>::cvt(v);
}

// ---------------------------------------------------------------------------
// Look-back status protocol.

constexpr int kFlagAggregate = 1;  // agg_a / agg_x hold the tile's own composition
constexpr int kFlagInclusive = 2;  // incl holds the state after the tile

MTS_DEV void store_release(int* p, int v) {
  asm volatile("st.release.gpu.b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

MTS_DEV int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Payload accesses are strong (relaxed, L2-coherent) and, being volatile asm
// with a memory clobber, stay in program order around the flag accesses.
MTS_DEV void store_relaxed(float* p, float v) {
  asm volatile("st.relaxed.gpu.f32 [%0], %1;" ::"l"(p), "f"(v) : "memory");
}

MTS_DEV float load_relaxed(const float* p) {
  float v;
  asm volatile("ld.relaxed.gpu.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
  return v;
}

MTS_DEV void publish_aggregate(const TileStatus& s, int64_t slot, Affine<float> agg) {
  store_relaxed(s.agg_a + slot, agg.A);
  store_relaxed(s.agg_x + slot, agg.X);
  store_release(s.flag + slot, kFlagAggregate);
}

MTS_DEV void publish_inclusive(const TileStatus& s, int64_t slot, float state) {
  store_relaxed(s.incl + slot, state);
  store_release(s.flag + slot, kFlagInclusive);
}

// Called by one full warp. Returns, for this lane's channel, the state entering
// tile `ticket` (whose predecessor, ticket - groups, exists): walks back over
// earlier tiles of the same channels, composing their aggregates until one has
// published its inclusive state. Chunk-major tickets make the predecessor of
// a tile always hold a smaller ticket; the first tile of every channel
// publishes an inclusive state directly, so the walk never passes it.
// The tile's own aggregate is published (where `publish`) only once the
// first poll has not settled every lane, i.e. before walking on or waiting:
// in the common case the predecessor is long finished and one acquire load
// replaces a release store. Lanes without a channel return 0 and never touch
// the statuses.
MTS_DEV float look_back(const TileStatus& s, int64_t ticket, const ChunkGeom& geo, int lane,
                        bool active, bool publish, Affine<float> tile) {
  Affine<float> acc{1.f, 0.f};  // composition of the tiles walked so far, in order
  int64_t pred = ticket - geo.groups;
  bool done = !active, published = false;
  float state = 0.f;
  for (;;) {
    bool wait = false;
    if (!done) {
      const int64_t slot = pred * geo.lanes + lane;
      const int f = load_acquire(s.flag + slot);
      if (f == kFlagInclusive) {
        const float inc = load_relaxed(s.incl + slot);
        state = affine_apply(acc, inc);
        done = true;
      } else if (f == kFlagAggregate) {
        const Affine<float> agg{load_relaxed(s.agg_a + slot), load_relaxed(s.agg_x + slot)};
        acc = affine_then(agg, acc);
        pred -= geo.groups;
      } else {
        wait = true;
      }
    }
    if (__all_sync(0xffffffffu, done)) break;
    if (!published) {
      if (publish) publish_aggregate(s, ticket * geo.lanes + lane, tile);
      published = true;
    }
    // The predecessor is still loading its tile: back off instead of hammering L2.
    if (__any_sync(0xffffffffu, wait)) __nanosleep(64);
  }
  return state;
}

// Block-wide barrier 0 over all threads, in its non-.aligned form: the chunked
// kernels reach it from the control warp's and the data warps' separate code
// paths (keeping the two roles' registers apart), which PTX allows for
// barrier.sync but not for bar.sync / __syncthreads (= barrier.sync.aligned,
// "all threads execute the same barrier instruction"). sm_70+.
MTS_DEV void block_sync() { asm volatile("barrier.sync 0;" ::: "memory"); }

// Tiles are handed out by an atomic ticket, not by blockIdx, so every smaller
// ticket belongs to a block that is already running. The chunked kernels are
// persistent (grid = resident capacity, each block loops over tickets); the
// control warp takes the next ticket while the current tile is processed, so
// neither the atomic's latency nor a block launch sits between two tiles.
// A block holds at most its current and its next ticket and finishes the
// current one first; by induction on the smallest unfinished ticket, every
// claimed tile completes.
//
// A ticket and where its tile sits: rank = position of its chunk in
// processing order, group = which 32 channels. Decoded once by the control
// warp and passed through shared memory, so the data warps spend no registers
// on the division.
struct Ticket {
  unsigned int ticket, rank, group;
};

MTS_DEV Ticket next_ticket(const TileStatus& s, const ChunkGeom& geo) {
  const unsigned int t = atomicAdd(s.ticket, 1u);
  const unsigned int groups = static_cast<unsigned int>(geo.groups);  // tiles < 2^31
  return Ticket{t, t / groups, t % groups};
}

// This lane's channel in a tile: n = b * D + d (32-bit: the launcher
// guarantees B * D + 32 < 2^31), active when n < B * D.
struct TileCoord {
  int64_t rank;
  int n;
  bool active;
};

MTS_DEV TileCoord tile_coord(const Ticket& t, const ChunkGeom& geo, int lane) {
  TileCoord c;
  c.rank = t.rank;
  c.n = static_cast<int>(t.group) * kWarp + lane;
  c.active = c.n < geo.channels;
  return c;
}

// S consecutive steps of one operand (offsets off + i * st) as float; only
// steps first <= i < nv exist (first is 0 or 1), the others read as `fill`.
// FULL (first == 0, nv == S): a plain pointer walk, unpredicated, so the loads
// issue back to back with one live address per operand. Otherwise (ragged
// tiles at the end of time, lanes past B * D) the loads are predicated; the
// running offset is plain integer arithmetic, dereferenced only when valid.
template <bool FULL, int S, typename T>
MTS_DEV void load_steps(float (&v)[S], const T* base, int64_t off, int64_t st, int first, int nv,
                        float fill) {
  if (FULL) {
    const T* ptr = base + off;
#pragma unroll
    for (int i = 0; i < S; ++i) {
      if (i > 0) ptr += st;
      v[i] = to_float(*ptr);
    }
  } else {
#pragma unroll
    for (int i = 0; i < S; ++i) {
      v[i] = fill;
      if (i >= first && i < nv) v[i] = load(base, off);
      off += st;
    }
  }
}

// ---------------------------------------------------------------------------
// Variable lengths (scan_launch.h): row b runs the processing steps [lo, hi).

struct StepWindow {
  int64_t lo, hi;
};

// lengths == nullptr: [0, T). L_b is clamped to [0, T] (device values, never
// checked on the host).
MTS_DEV StepWindow step_window(const int64_t* lengths, bool reversed, int64_t b, int64_t T) {
  if (lengths == nullptr) return StepWindow{0, T};
  int64_t L = lengths[b];
  L = L < 0 ? 0 : (L > T ? T : L);
  return reversed ? StepWindow{T - L, T} : StepWindow{0, L};
}

// v clamped to [0, S] as an int (a step count within one group of S steps).
template <int S>
MTS_DEV int clamp_steps(int64_t v) {
  return v <= 0 ? 0 : (v < S ? static_cast<int>(v) : S);
}

// Zeros at steps [k_begin, k_end) of one channel (offset `off` of step 0).
template <typename T>
MTS_DEV void zero_steps(T* base, int64_t off, int64_t st, int64_t k_begin, int64_t k_end) {
#pragma unroll 1
  for (int64_t k = k_begin; k < k_end; ++k) store(base, off + k * st, 0.f);
}

// ---------------------------------------------------------------------------
// Forward.

// U steps of one channel from `state`; returns the state after them.
template <bool FULL, bool LEAKY, int U, typename T>
MTS_DEV float fwd_seq_steps(const ScanFwdParams& p, const T* a, const T* x, T* h, int64_t oa,
                            int64_t ox, int64_t oh, int nv, float state) {
  float av[U], xv[U];
  load_steps<FULL>(av, a, oa, p.a_st, 0, nv, 1.f);
  load_steps<FULL>(xv, x, ox, p.x_st, 0, nv, 0.f);
#pragma unroll
  for (int i = 0; i < U; ++i) {
    if (FULL || i < nv) {
      state = scan_step<LEAKY>(av[i], xv[i], state);
      store(h, oh + i * p.h_st, state);
    }
  }
  return state;
}

/// h_k = a_k h_{k-1} + x_k (leaky: a_k h_{k-1} + (1 - a_k) x_k), h_{-1} = h0 or 0.
/// One thread per channel n = b * D + d, sequential over k in groups of
/// kSeqFwdSteps steps whose loads are all issued before the group is used.
template <typename T, bool LEAKY>
__global__ void __launch_bounds__(kSeqThreads) scan_fwd_seq_kernel(const ScanFwdParams p) {
  constexpr int U = kSeqFwdSteps;
  const T* a = static_cast<const T*>(p.a);
  const T* x = static_cast<const T*>(p.x);
  const T* h0 = static_cast<const T*>(p.h0);
  T* h = static_cast<T*>(p.h);
  const int64_t channels = p.B * p.D;
  const int64_t grid_stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < channels;
       n += grid_stride) {
    const int64_t b = n / p.D, d = n - b * p.D;
    // Only the steps [lo, hi) run (all T without lengths); padded steps are 0.
    const StepWindow w = step_window(p.lengths, p.len_reversed, b, p.T);
    if (p.lengths != nullptr) {
      zero_steps(h, b * p.h_sb + d, p.h_st, 0, w.lo);
      zero_steps(h, b * p.h_sb + d, p.h_st, w.hi, p.T);
    }
    int64_t oa = b * p.a_sb + w.lo * p.a_st + d, ox = b * p.x_sb + w.lo * p.x_st + d,
            oh = b * p.h_sb + w.lo * p.h_st + d;
    float state = h0 ? load(h0, b * p.h0_sb + d) : 0.f;
    int64_t k0 = w.lo;
    for (; k0 + U <= w.hi; k0 += U) {
      state = fwd_seq_steps<true, LEAKY, U>(p, a, x, h, oa, ox, oh, U, state);
      oa += U * p.a_st;
      ox += U * p.x_st;
      oh += U * p.h_st;
    }
    if (k0 < w.hi)
      fwd_seq_steps<false, LEAKY, U>(p, a, x, h, oa, ox, oh, static_cast<int>(w.hi - k0), state);
  }
}

/// h_k = a_k h_{k-1} + x_k (leaky: a_k h_{k-1} + (1 - a_k) x_k), h_{-1} = h0 or 0.
/// Persistent blocks, one tile (32 channels x kFwdChunk steps, chunk-major
/// tickets) per iteration. Data warp w: loads its kFwdSteps steps, composes
/// them into one affine map (shared memory), then replays them from the state
/// entering its segment. Control warp: composes the warps' maps into the
/// tile's, takes the carry-in by decoupled look-back, publishes the statuses.
/// Both roles run the same barriers per iteration in their own code.
template <typename T, bool LEAKY>
__global__ void __launch_bounds__(kChunkedThreads, kChunkedMinBlocks)
    scan_fwd_chunked_kernel(const ScanFwdParams p, const ChunkGeom geo, const TileStatus st) {
  constexpr int W = kDataWarps, S = kFwdSteps;
  __shared__ float s_a[W][kWarp];
  __shared__ float s_x[W][kWarp];
  __shared__ float s_carry[kWarp];
  __shared__ Ticket s_ticket;

  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int D = static_cast<int>(p.D);  // D <= B * D < 2^31 (checked by the launcher)

  if (warp == W) {  // control warp
    if (lane == 0) s_ticket = next_ticket(st, geo);
    block_sync();  // first ticket is in shared memory
    for (;;) {
      const Ticket t = s_ticket;
      if (t.ticket >= geo.tiles) return;
      Ticket next{};
      if (lane == 0) next = next_ticket(st, geo);  // its latency overlaps the tile's loads
      const int64_t ticket = t.ticket;
      const TileCoord c = tile_coord(t, geo, lane);
      float init = 0.f;
      if (c.rank == 0 && c.active && p.h0 != nullptr) {
        const int b = c.n / D;
        init = load(static_cast<const T*>(p.h0), b * p.h0_sb + (c.n - b * D));
      }
      block_sync();  // 1: segment maps are in shared memory, everyone has read s_ticket
      if (lane == 0) s_ticket = next;  // read by all after barrier 2
      Affine<float> tile{1.f, 0.f};
#pragma unroll
      for (int w = 0; w < W; ++w)
        tile = affine_then(tile, Affine<float>{s_a[w][lane], s_x[w][lane]});
      const bool publish = c.active && ticket + geo.groups < geo.tiles;  // has a successor
      const float carry =
          c.rank == 0 ? init : look_back(st, ticket, geo, lane, c.active, publish, tile);
      s_carry[lane] = carry;
      block_sync();  // 2: carry-in is in shared memory
      if (publish) publish_inclusive(st, ticket * geo.lanes + lane, affine_apply(tile, carry));
    }
  }

  const T* a = static_cast<const T*>(p.a);
  const T* x = static_cast<const T*>(p.x);
  T* h = static_cast<T*>(p.h);
  block_sync();  // first ticket is in shared memory
  for (;;) {
    const Ticket t = s_ticket;
    if (t.ticket >= geo.tiles) return;
    const TileCoord c = tile_coord(t, geo, lane);
    const int b = c.active ? c.n / D : 0;
    const int d = c.active ? c.n - b * D : 0;
    const int64_t k0 = c.rank * kFwdChunk + static_cast<int64_t>(warp) * S;
    // Steps i < nt of this warp exist (k0 + i < T); those in [first, nv) run,
    // the others are padding (lengths) with h = 0.
    const int nt = c.active ? clamp_steps<S>(p.T - k0) : 0;
    int first = 0, nv = nt;
    if (p.lengths != nullptr && c.active) {
      const StepWindow w = step_window(p.lengths, p.len_reversed, b, p.T);
      first = clamp_steps<S>(w.lo - k0);
      nv = clamp_steps<S>(w.hi - k0);
    }

    // Steps past T, padded steps and lanes past B * D are the identity map a = 1, x = 0.
    const int64_t oa = b * p.a_sb + k0 * p.a_st + d;
    const int64_t ox = b * p.x_sb + k0 * p.x_st + d;
    float av[S], xv[S];
    if (first == 0 && nv == S) {
      load_steps<true>(av, a, oa, p.a_st, 0, S, 1.f);
      load_steps<true>(xv, x, ox, p.x_st, 0, S, 0.f);
    } else {
      load_steps<false>(av, a, oa, p.a_st, first, nv, 1.f);
      load_steps<false>(xv, x, ox, p.x_st, first, nv, 0.f);
    }

    Affine<float> seg = affine_identity<float>();
#pragma unroll
    for (int i = 0; i < S; ++i) seg = affine_fwd_step<LEAKY>(seg, av[i], xv[i]);
    s_a[warp][lane] = seg.A;
    s_x[warp][lane] = seg.X;
    block_sync();  // 1: segment maps are in shared memory

    // Map from the tile's carry-in to the state entering this warp's segment.
    Affine<float> pre{1.f, 0.f};
#pragma unroll
    for (int w = 0; w < W - 1; ++w)
      if (w < warp) pre = affine_then(pre, Affine<float>{s_a[w][lane], s_x[w][lane]});
    block_sync();  // 2: carry-in is in shared memory

    float state = affine_apply(pre, s_carry[lane]);
    const int64_t oh = b * p.h_sb + k0 * p.h_st + d;
#pragma unroll
    for (int i = 0; i < S; ++i) {
      state = scan_step<LEAKY>(av[i], xv[i], state);  // the identity where i is not in [first, nv)
      if (i < nt) store(h, oh + i * p.h_st, (i >= first && i < nv) ? state : 0.f);
    }
  }
}

// ---------------------------------------------------------------------------
// Backward. With the carry c (gradient reaching h_k from step k + 1):
//   delta_k = g_k + c,  dx_k = scan_grad_input(a_k, delta_k),
//   da_k = scan_grad_decay(delta_k, h_{k-1}, x_k),  c <- a_k delta_k,
// from k = T - 1 (c = 0) down to 0; dh0 = final c. The carry map of step k,
// c -> a_k (g_k + c), is affine in c with the decay of the same step, so the
// chunked kernel composes it like the forward, only in reverse time.

// scan_grad_decay is linear in delta: da_k = delta_k * scan_grad_decay(1, h_{k-1}, x_k)
// bit for bit (the factor 1 is exact, the final product is the same). Folding
// x_k in as soon as it is loaded frees its registers for the rest of the tile.
template <bool LEAKY, int S>
MTS_DEV void fold_decay_grad(float (&hv)[S], const float (&xv)[S]) {
#pragma unroll
  for (int i = 0; i < S; ++i) hv[i] = scan_grad_decay<LEAKY>(1.f, hv[i], xv[i]);
}

struct BwdCursor {  // offsets of step kt (h: of h_{kt-1}); step kt - i is i strides back
  int64_t g, a, x, h, dx, da;
};

// Steps kt, kt - 1, ..., kt - nv + 1 of one channel. FULL: nv == U and all
// these steps are >= 1 (h_{k-1} is a row of h); otherwise the group may end
// at step 0, whose h_{k-1} is `init` (h0).
template <bool FULL, bool LEAKY, int U, typename T>
MTS_DEV void bwd_seq_steps(const ScanBwdParams& p, bool per_channel, const BwdCursor& c, int nv,
                           float init, float& carry, float& da_sum) {
  const T* g = static_cast<const T*>(p.g);
  const T* a = static_cast<const T*>(p.a);
  const T* x = static_cast<const T*>(p.x);
  const T* h = static_cast<const T*>(p.h);
  T* dx = static_cast<T*>(p.dx);
  T* da = static_cast<T*>(p.da);
  float gv[U], av[U], hv[U], xv[U];
  load_steps<FULL>(gv, g, c.g, -p.g_st, 0, nv, 0.f);
  load_steps<FULL>(av, a, c.a, -p.a_st, 0, nv, 1.f);
  if (LEAKY)
    load_steps<FULL>(xv, x, c.x, -p.x_st, 0, nv, 0.f);
  else
#pragma unroll
    for (int i = 0; i < U; ++i) xv[i] = 0.f;
  // In the last group, the step nv - 1 is step 0: its h_{k-1} row does not exist.
  load_steps<FULL>(hv, h, c.h, -p.h_st, 0, FULL ? U : nv - 1, 0.f);
  if (!FULL) {
#pragma unroll
    for (int i = 0; i < U; ++i)
      if (i == nv - 1) hv[i] = init;
  }
  fold_decay_grad<LEAKY>(hv, xv);
#pragma unroll
  for (int i = 0; i < U; ++i) {
    if (FULL || i < nv) {
      const float delta = gv[i] + carry;
      store(dx, c.dx - i * p.dx_st, scan_grad_input<LEAKY>(av[i], delta));
      const float dak = delta * hv[i];
      if (per_channel)
        da_sum += dak;
      else
        store(da, c.da - i * p.da_st, dak);
      carry = av[i] * delta;
    }
  }
}

/// Reverse-time recurrence above, one thread per channel n = b * D + d, in
/// groups of kSeqBwdSteps steps whose loads are all issued before use.
template <typename T, bool LEAKY>
__global__ void __launch_bounds__(kSeqThreads)
    scan_bwd_seq_kernel(const ScanBwdParams p, const bool per_channel) {
  constexpr int U = kSeqBwdSteps;
  const T* h0 = static_cast<const T*>(p.h0);
  T* dh0 = static_cast<T*>(p.dh0);
  const int64_t channels = p.B * p.D;
  const int64_t grid_stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < channels;
       n += grid_stride) {
    const int64_t b = n / p.D, d = n - b * p.D;
    const float init = h0 ? load(h0, b * p.h0_sb + d) : 0.f;
    // Only the steps [lo, hi) run (all T without lengths): the carry enters
    // step hi - 1 as 0 and leaves step lo as dh0, and step lo's h_{k-1} is h0.
    const StepWindow w = step_window(p.lengths, p.len_reversed, b, p.T);
    if (p.lengths != nullptr) {  // padded steps: dx = da = 0
      T* dx = static_cast<T*>(p.dx);
      zero_steps(dx, b * p.dx_sb + d, p.dx_st, 0, w.lo);
      zero_steps(dx, b * p.dx_sb + d, p.dx_st, w.hi, p.T);
      if (!per_channel) {
        T* da = static_cast<T*>(p.da);
        zero_steps(da, b * p.da_sb + d, p.da_st, 0, w.lo);
        zero_steps(da, b * p.da_sb + d, p.da_st, w.hi, p.T);
      }
    }
    const int64_t kt = w.hi - 1;
    int64_t m = w.hi - w.lo;  // steps left to run, kt - (m - 1) = lo
    BwdCursor c;
    c.g = b * p.g_sb + kt * p.g_st + d;
    c.a = b * p.a_sb + kt * p.a_st + d;
    c.x = LEAKY ? b * p.x_sb + kt * p.x_st + d : 0;
    c.h = b * p.h_sb + (kt - 1) * p.h_st + d;
    c.dx = b * p.dx_sb + kt * p.dx_st + d;
    c.da = per_channel ? 0 : b * p.da_sb + kt * p.da_st + d;
    float carry = 0.f, da_sum = 0.f;
    for (; m > U; m -= U) {
      bwd_seq_steps<true, LEAKY, U, T>(p, per_channel, c, U, init, carry, da_sum);
      c.g -= U * p.g_st;
      c.a -= U * p.a_st;
      c.x -= U * p.x_st;
      c.h -= U * p.h_st;
      c.dx -= U * p.dx_st;
      c.da -= U * p.da_st;
    }
    if (m > 0)
      bwd_seq_steps<false, LEAKY, U, T>(p, per_channel, c, static_cast<int>(m), init, carry,
                                        da_sum);
    store(dh0, n, carry);
    // Row b of the (B, D) partial sums, i.e. element n.
    if (per_channel) p.da_partial[n] = da_sum;
  }
}

/// Reverse-time recurrence above. Persistent blocks, one tile (32 channels x
/// kBwdChunk steps) per iteration; tickets run over chunks from the last in
/// time to the first. Data warps compose their steps' carry maps, the control
/// warp composes the tile's and takes its carry-in by decoupled look-back, the
/// data warps replay their steps from registers. Per-channel decay: the tile's
/// da is summed over its steps (fixed order) into row (chunk * B + b) of
/// da_partial.
template <typename T, bool LEAKY>
__global__ void __launch_bounds__(kChunkedThreads, kChunkedMinBlocks)
    scan_bwd_chunked_kernel(const ScanBwdParams p, const ChunkGeom geo, const TileStatus st,
                            const bool per_channel) {
  constexpr int W = kDataWarps, S = kBwdSteps;
  __shared__ float s_a[W][kWarp];
  __shared__ float s_x[W][kWarp];
  __shared__ float s_da[W][kWarp];
  __shared__ float s_carry[kWarp];
  __shared__ Ticket s_ticket;

  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int D = static_cast<int>(p.D);  // D <= B * D < 2^31 (checked by the launcher)

  if (warp == W) {  // control warp
    if (lane == 0) s_ticket = next_ticket(st, geo);
    block_sync();  // first ticket is in shared memory
    for (;;) {
      const Ticket t = s_ticket;
      if (t.ticket >= geo.tiles) return;
      Ticket next{};
      if (lane == 0) next = next_ticket(st, geo);  // its latency overlaps the tile's loads
      const int64_t ticket = t.ticket;
      const TileCoord c = tile_coord(t, geo, lane);
      block_sync();  // 1: segment maps are in shared memory, everyone has read s_ticket
      if (lane == 0) s_ticket = next;  // read by all after barrier 2
      Affine<float> tile{1.f, 0.f};
#pragma unroll
      for (int w = W - 1; w >= 0; --w)
        tile = affine_then(tile, Affine<float>{s_a[w][lane], s_x[w][lane]});
      const bool publish = c.active && ticket + geo.groups < geo.tiles;  // has a successor
      // Nothing flows back past step T - 1 into the first chunk processed.
      const float carry =
          c.rank == 0 ? 0.f : look_back(st, ticket, geo, lane, c.active, publish, tile);
      s_carry[lane] = carry;
      block_sync();  // 2: carry-in is in shared memory
      const float out = affine_apply(tile, carry);  // carry leaving the tile's first step
      if (publish) publish_inclusive(st, ticket * geo.lanes + lane, out);
      const int64_t chunk = geo.chunks - 1 - c.rank;
      // The carry leaving step 0 is dL/dh0 (the composed value, not the data
      // warps' sequential replay: no register of theirs has to outlive the tile).
      if (chunk == 0 && c.active) store(static_cast<T*>(p.dh0), static_cast<int64_t>(c.n), out);
      if (per_channel) {
        block_sync();  // 3: per-warp da sums are in shared memory
        if (c.active) {
          float sum = 0.f;
#pragma unroll
          for (int w = 0; w < W; ++w) sum += s_da[w][lane];
          p.da_partial[chunk * geo.channels + c.n] = sum;  // row chunk * B + b, column d
        }
      }
    }
  }

  const T* g = static_cast<const T*>(p.g);
  const T* a = static_cast<const T*>(p.a);
  const T* x = static_cast<const T*>(p.x);
  const T* h = static_cast<const T*>(p.h);
  T* dx = static_cast<T*>(p.dx);
  T* da = static_cast<T*>(p.da);
  block_sync();  // first ticket is in shared memory
  for (;;) {
    const Ticket t = s_ticket;
    if (t.ticket >= geo.tiles) return;
    const TileCoord c = tile_coord(t, geo, lane);
    const int b = c.active ? c.n / D : 0;
    const int d = c.active ? c.n - b * D : 0;
    const int64_t chunk = geo.chunks - 1 - c.rank;
    const int64_t k0 = chunk * kBwdChunk + static_cast<int64_t>(warp) * S;
    // Steps i < nt of this warp exist (k0 + i < T); those in [first, nv) run
    // (steps [lo, hi) of the row), the others are padding with dx = da = 0.
    const int nt = c.active ? clamp_steps<S>(p.T - k0) : 0;
    int64_t lo = 0;
    int first = 0, nv = nt;
    if (p.lengths != nullptr && c.active) {
      const StepWindow w = step_window(p.lengths, p.len_reversed, b, p.T);
      lo = w.lo;
      first = clamp_steps<S>(w.lo - k0);
      nv = clamp_steps<S>(w.hi - k0);
    }

    // h_{k-1} is read shifted by one step, so a warp loads the rows
    // k0 - 1 .. k0 + S - 2 of h and every row is read once overall; only the
    // row's first step lo takes h0 instead (steps before lo are padding, so
    // every h row from hf on is read: hf = lo - k0 + 1 when lo is in this warp).
    const bool starts_here = lo >= k0 && lo < k0 + S;
    const float init = (starts_here && c.active && p.h0 != nullptr)
                           ? load(static_cast<const T*>(p.h0), b * p.h0_sb + d)
                           : 0.f;
    const int hf = lo >= k0 ? first + 1 : 0;
    const int64_t og = b * p.g_sb + k0 * p.g_st + d;
    const int64_t oa = b * p.a_sb + k0 * p.a_st + d;
    const int64_t ox = LEAKY ? b * p.x_sb + k0 * p.x_st + d : 0;
    const int64_t oh = b * p.h_sb + (k0 - 1) * p.h_st + d;
    // Steps past T, padded steps and lanes past B * D: g = 0, a = 1 is the identity carry map.
    float gv[S], av[S], hv[S], xv[S];
#pragma unroll
    for (int i = 0; i < S; ++i) xv[i] = 0.f;
    if (nv == S && lo < k0) {  // then first == 0 and every h_{k-1} is a row of h
      load_steps<true>(gv, g, og, p.g_st, 0, S, 0.f);
      load_steps<true>(av, a, oa, p.a_st, 0, S, 1.f);
      if (LEAKY) load_steps<true>(xv, x, ox, p.x_st, 0, S, 0.f);
      load_steps<true>(hv, h, oh, p.h_st, 0, S, 0.f);
      fold_decay_grad<LEAKY>(hv, xv);
    } else {
      // Filling with init puts h0 at step lo (index hf - 1); the other filled
      // steps are outside [first, nv) and never used.
      load_steps<false>(hv, h, oh, p.h_st, hf, nv, init);
      if (LEAKY) load_steps<false>(xv, x, ox, p.x_st, first, nv, 0.f);
      fold_decay_grad<LEAKY>(hv, xv);
      load_steps<false>(gv, g, og, p.g_st, first, nv, 0.f);
      load_steps<false>(av, a, oa, p.a_st, first, nv, 1.f);
    }

    // Carry entering the segment's last step -> leaving its first.
    Affine<float> seg = affine_identity<float>();
#pragma unroll
    for (int i = S - 1; i >= 0; --i) seg = affine_bwd_step(seg, av[i], gv[i]);
    s_a[warp][lane] = seg.A;
    s_x[warp][lane] = seg.X;
    block_sync();  // 1: segment maps are in shared memory

    // Map from the tile's carry-in (entering its last step) to the carry
    // entering this warp's last step: the composition of the later warps.
    Affine<float> pre{1.f, 0.f};
#pragma unroll
    for (int w = W - 1; w > 0; --w)
      if (w > warp) pre = affine_then(pre, Affine<float>{s_a[w][lane], s_x[w][lane]});
    block_sync();  // 2: carry-in is in shared memory

    float carry = affine_apply(pre, s_carry[lane]);
    float da_sum = 0.f;
    const int64_t odx = b * p.dx_sb + k0 * p.dx_st + d;
    const int64_t oda = per_channel ? 0 : b * p.da_sb + k0 * p.da_st + d;
#pragma unroll
    for (int i = S - 1; i >= 0; --i) {
      // Where i is not in [first, nv), g = 0 and a = 1: the carry passes unchanged.
      const float delta = gv[i] + carry;
      const bool run = i >= first && i < nv;
      if (i < nt) {
        store(dx, odx + i * p.dx_st, run ? scan_grad_input<LEAKY>(av[i], delta) : 0.f);
        const float dak = run ? delta * hv[i] : 0.f;
        if (per_channel)
          da_sum += dak;
        else
          store(da, oda + i * p.da_st, dak);
      }
      carry = av[i] * delta;
    }
    if (per_channel) {  // uniform over the grid, like the control warp's branch
      s_da[warp][lane] = da_sum;
      block_sync();  // 3: per-warp da sums are in shared memory
    }
  }
}

// Rows of da_partial each algorithm writes (kept next to the kernels that write them).
inline int64_t bwd_partial_rows(int64_t B, int64_t T, int64_t D) {
  if (!use_chunked_scan(B, T, D)) return B;
  return B * chunk_geom(B, T, D, kBwdChunk).chunks;
}

}  // namespace scan_cuda
}  // namespace mts
