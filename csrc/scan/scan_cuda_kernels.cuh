#pragma once
// Device code shared by scan_cuda_fwd.cu and scan_cuda_bwd*.cu (private to
// them; no torch headers). Two algorithms, picked by use_chunked_scan():
//
//  * Sequential: one thread per channel (b, d) walks all T steps. Threads run
//    along the flattened channel index n = b * D + d, so a warp touches 32
//    consecutive d of one time row (coalesced). Each thread issues the loads of
//    a group of future steps before using any of them, so enough bytes are in
//    flight per thread when there are many channels.
//
//  * Chunked single-pass scan over time: a tile is 32 consecutive channels
//    (one per lane) x a chunk of L steps; warp w of the block owns S = L / W
//    consecutive steps and keeps them in registers. The block composes its
//    steps into per-warp affine maps, combines the warps through shared
//    memory, takes its carry-in by decoupled look-back over the tiles of the
//    same channels in earlier chunks, then replays its steps from registers.
//    Every operand is read once and every output written once.
//
// Tile statuses (look-back): per (tile, lane) an int flag and three floats in
// structure-of-arrays form, so the 32 lanes of a warp touch one 128-byte line
// per array. A lane stores its payload, then st.release's its own flag; a
// reader ld.acquire's the flag before reading the payload. Each payload slot is
// written once per launch, so the protocol needs no cross-lane reasoning.
// Progress: tiles are handed out in ticket order (chunk-major), a tile only
// waits on tiles with smaller tickets, every such tile is already running, and
// publishes its aggregate before it waits on anything itself.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "../common.h"
#include "scan_launch.h"
#include "scan_math.h"

#define MTS_DEV __device__ __forceinline__

namespace mts {
namespace scan_cuda {

// ---------------------------------------------------------------------------
// Launch geometry and algorithm choice (host and device).

constexpr int kWarp = 32;

// Sequential kernels: steps whose loads are issued together per thread.
// Forward holds a, x per step (2 registers), backward g, a, h_{k-1} (+ v): the
// groups keep ~64 values in flight per thread either way.
constexpr int kSeqThreads = 128;
constexpr int kSeqFwdSteps = 16;
constexpr int kSeqBwdSteps = 8;

// Chunked kernels: W warps x S steps per thread, L = W * S steps per tile.
// 512 threads and <= 64 registers give 2 resident blocks (32 warps) per SM;
// one block's tile (32 ch x L steps) alone keeps 32-64 KiB of loads in
// flight, about 2-4x what an H100 SM needs to cover DRAM latency, so the SM
// stays busy while the other block waits in its look-back. Larger tiles mean
// fewer look-backs and a smaller workspace (16 B per lane and tile).
constexpr int kFwdWarps = 16;
constexpr int kFwdSteps = 16;  // a, x: 32 registers
constexpr int kFwdChunk = kFwdWarps * kFwdSteps;
constexpr int kBwdWarps = 16;
constexpr int kBwdSteps = 8;   // g, a, h_{k-1}, v: 32 registers
constexpr int kBwdChunk = kBwdWarps * kBwdSteps;
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
  int64_t tiles;     // groups * chunks (== grid size, < 2^31)
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

// Operands are never written by the kernel that reads them (outputs are
// freshly allocated), so the read-only path is safe; it also serves the
// stride-0 per-channel decay from L1.
template <typename T>
MTS_DEV float load(const T* base, int64_t off) {
  return to_float(__ldg(base + off));
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
// Lanes without a channel return 0 and never touch the statuses.
MTS_DEV float look_back(const TileStatus& s, int64_t ticket, const ChunkGeom& geo, int lane,
                        bool active) {
  Affine<float> acc{1.f, 0.f};  // composition of the tiles walked so far, in order
  int64_t pred = ticket - geo.groups;
  bool done = !active;
  float state = 0.f;
  for (;;) {
    bool wait = false;
    if (!done) {
      const int64_t slot = pred * geo.lanes + lane;
      const int f = load_acquire(s.flag + slot);
      if (f == kFlagInclusive) {
        const float inc = load_relaxed(s.incl + slot);
        state = acc.A * inc + acc.X;
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
    // The predecessor is still loading its tile: back off instead of hammering L2.
    if (__any_sync(0xffffffffu, wait)) __nanosleep(64);
  }
  return state;
}

// Tile handed out in launch order of its first instruction, not of blockIdx, so
// that every smaller ticket belongs to a block that is already resident.
MTS_DEV unsigned int take_ticket(const TileStatus& s, unsigned int* smem) {
  if (threadIdx.x == 0) *smem = atomicAdd(s.ticket, 1u);
  __syncthreads();
  return *smem;
}

// ---------------------------------------------------------------------------
// Forward.

/// h_k = a_k h_{k-1} + x_k (leaky: a_k h_{k-1} + (1 - a_k) x_k), h_{-1} = h0 or 0.
/// One thread per channel n = b * D + d, sequential over k.
template <typename T, bool LEAKY>
__global__ void __launch_bounds__(kSeqThreads) scan_fwd_seq_kernel(const ScanFwdParams p) {
  constexpr int U = kSeqFwdSteps;
  const T* __restrict__ a = static_cast<const T*>(p.a);
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ h0 = static_cast<const T*>(p.h0);
  T* __restrict__ h = static_cast<T*>(p.h);
  const int64_t channels = p.B * p.D;
  const int64_t grid_stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < channels;
       n += grid_stride) {
    const int64_t b = n / p.D, d = n - b * p.D;
    int64_t oa = b * p.a_sb + d, ox = b * p.x_sb + d, oh = b * p.h_sb + d;
    float state = h0 ? load(h0, b * p.h0_sb + d) : 0.f;
    for (int64_t k0 = 0; k0 < p.T; k0 += U) {
      const int nv = p.T - k0 < U ? static_cast<int>(p.T - k0) : U;
      float av[U], xv[U];
#pragma unroll
      for (int i = 0; i < U; ++i) {
        const bool ok = i < nv;
        av[i] = load(a, ok ? oa + i * p.a_st : oa);
        xv[i] = load(x, ok ? ox + i * p.x_st : ox);
      }
#pragma unroll
      for (int i = 0; i < U; ++i) {
        if (i < nv) {
          state = scan_step<LEAKY>(av[i], xv[i], state);
          store(h, oh + i * p.h_st, state);
        }
      }
      oa += U * p.a_st;
      ox += U * p.x_st;
      oh += U * p.h_st;
    }
  }
}

/// h_k = a_k h_{k-1} + x_k (leaky: a_k h_{k-1} + (1 - a_k) x_k), h_{-1} = h0 or 0.
/// One block per tile (32 channels x kFwdChunk steps, chunk-major tickets):
/// per-warp affine maps -> block prefix in shared memory -> decoupled look-back
/// for the carry-in -> replay of the steps from registers.
template <typename T, bool LEAKY>
__global__ void __launch_bounds__(kFwdWarps * kWarp, kChunkedMinBlocks)
    scan_fwd_chunked_kernel(const ScanFwdParams p, const ChunkGeom geo, const TileStatus st) {
  constexpr int W = kFwdWarps, S = kFwdSteps;
  __shared__ float s_a[W][kWarp];
  __shared__ float s_x[W][kWarp];
  __shared__ float s_carry[kWarp];
  __shared__ unsigned int s_ticket;

  const T* __restrict__ a = static_cast<const T*>(p.a);
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ h0 = static_cast<const T*>(p.h0);
  T* __restrict__ h = static_cast<T*>(p.h);

  const unsigned int ticket = take_ticket(st, &s_ticket);
  const unsigned int groups = static_cast<unsigned int>(geo.groups);  // tiles < 2^31
  const int64_t chunk = ticket / groups;
  const int64_t group = ticket % groups;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t n = group * kWarp + lane;
  const bool active = n < geo.channels;
  const int64_t b = active ? n / p.D : 0;
  const int64_t d = active ? n - b * p.D : 0;
  const int64_t k0 = chunk * kFwdChunk + static_cast<int64_t>(warp) * S;
  const int64_t left = active ? p.T - k0 : 0;
  const int nv = left <= 0 ? 0 : (left < S ? static_cast<int>(left) : S);

  // Carry-in of the first chunk, fetched early so it is not on the critical path.
  float init = 0.f;
  if (chunk == 0 && warp == 0 && active && h0 != nullptr) init = load(h0, b * p.h0_sb + d);

  // Steps past T (and lanes past B * D) become the identity map a = 1, x = 0.
  // Their loads are not skipped but redirected to element 0 (always valid), so
  // every load is unconditional and all of them are issued back to back.
  const int64_t oa = b * p.a_sb + k0 * p.a_st + d;
  const int64_t ox = b * p.x_sb + k0 * p.x_st + d;
  float av[S], xv[S];
#pragma unroll
  for (int i = 0; i < S; ++i) {
    const bool ok = i < nv;
    av[i] = load(a, ok ? oa + i * p.a_st : 0);
    xv[i] = load(x, ok ? ox + i * p.x_st : 0);
    av[i] = ok ? av[i] : 1.f;
    xv[i] = ok ? xv[i] : 0.f;
  }

  Affine<float> seg{1.f, 0.f};
#pragma unroll
  for (int i = 0; i < S; ++i) {
    seg.X = scan_step<LEAKY>(av[i], xv[i], seg.X);
    seg.A *= av[i];
  }
  s_a[warp][lane] = seg.A;
  s_x[warp][lane] = seg.X;
  __syncthreads();

  // Map from the tile's carry-in to the state entering this warp's segment.
  Affine<float> pre{1.f, 0.f};
#pragma unroll
  for (int w = 0; w < W - 1; ++w)
    if (w < warp) pre = affine_then(pre, Affine<float>{s_a[w][lane], s_x[w][lane]});

  if (warp == 0) {
    Affine<float> tile{1.f, 0.f};
#pragma unroll
    for (int w = 0; w < W; ++w) tile = affine_then(tile, Affine<float>{s_a[w][lane], s_x[w][lane]});
    const int64_t slot = static_cast<int64_t>(ticket) * geo.lanes + lane;
    const bool has_next = ticket + geo.groups < geo.tiles;
    float carry = init;
    if (chunk > 0) {
      if (active && has_next) publish_aggregate(st, slot, tile);
      carry = look_back(st, ticket, geo, lane, active);
    }
    if (active && has_next) publish_inclusive(st, slot, tile.A * carry + tile.X);
    s_carry[lane] = carry;
  }
  __syncthreads();

  float state = pre.A * s_carry[lane] + pre.X;
  const int64_t oh = b * p.h_sb + k0 * p.h_st + d;
#pragma unroll
  for (int i = 0; i < S; ++i) {
    if (i < nv) {
      state = scan_step<LEAKY>(av[i], xv[i], state);
      store(h, oh + i * p.h_st, state);
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

/// Reverse-time recurrence above, one thread per channel n = b * D + d.
template <typename T, bool LEAKY>
__global__ void __launch_bounds__(kSeqThreads)
    scan_bwd_seq_kernel(const ScanBwdParams p, const bool per_channel) {
  constexpr int U = kSeqBwdSteps;
  const T* __restrict__ g = static_cast<const T*>(p.g);
  const T* __restrict__ a = static_cast<const T*>(p.a);
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ h = static_cast<const T*>(p.h);
  const T* __restrict__ h0 = static_cast<const T*>(p.h0);
  T* __restrict__ dx = static_cast<T*>(p.dx);
  T* __restrict__ da = static_cast<T*>(p.da);
  T* __restrict__ dh0 = static_cast<T*>(p.dh0);
  const int64_t channels = p.B * p.D;
  const int64_t grid_stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < channels;
       n += grid_stride) {
    const int64_t b = n / p.D, d = n - b * p.D;
    const float init = h0 ? load(h0, b * p.h0_sb + d) : 0.f;
    // Offsets of step k = T - 1 (h: of h_{k-1}); step kt - i is at -i strides.
    const int64_t last = p.T - 1;
    int64_t og = b * p.g_sb + last * p.g_st + d;
    int64_t oa = b * p.a_sb + last * p.a_st + d;
    int64_t ox = LEAKY ? b * p.x_sb + last * p.x_st + d : 0;
    int64_t oh = b * p.h_sb + (last - 1) * p.h_st + d;
    int64_t odx = b * p.dx_sb + last * p.dx_st + d;
    int64_t oda = per_channel ? 0 : b * p.da_sb + last * p.da_st + d;
    float carry = 0.f, da_sum = 0.f;
    for (int64_t kt = last; kt >= 0; kt -= U) {
      // Steps kt, kt - 1, ..., kt - nv + 1; h_{k-1} of k = 0 is h0.
      const int nv = kt + 1 < U ? static_cast<int>(kt + 1) : U;
      float gv[U], av[U], hv[U], xv[U];
#pragma unroll
      for (int i = 0; i < U; ++i) {
        // Steps before 0 re-read row kt (valid) and are skipped below; so are
        // the h rows before 0 (h_{-1} is h0). No load is conditional.
        const bool ok = i < nv, hok = kt - i > 0;
        gv[i] = load(g, ok ? og - i * p.g_st : og);
        av[i] = load(a, ok ? oa - i * p.a_st : oa);
        const float hk = load(h, hok ? oh - i * p.h_st : oh + p.h_st);
        hv[i] = hok ? hk : init;
        xv[i] = LEAKY ? load(x, ok ? ox - i * p.x_st : ox) : 0.f;
      }
#pragma unroll
      for (int i = 0; i < U; ++i) {
        if (i < nv) {
          const float delta = gv[i] + carry;
          store(dx, odx - i * p.dx_st, scan_grad_input<LEAKY>(av[i], delta));
          const float dak = scan_grad_decay<LEAKY>(delta, hv[i], xv[i]);
          if (per_channel)
            da_sum += dak;
          else
            store(da, oda - i * p.da_st, dak);
          carry = av[i] * delta;
        }
      }
      og -= U * p.g_st;
      oa -= U * p.a_st;
      ox -= U * p.x_st;
      oh -= U * p.h_st;
      odx -= U * p.dx_st;
      oda -= U * p.da_st;
    }
    store(dh0, n, carry);
    // Row b of the partial sums: (B, D) rows, row-major, so element n.
    if (per_channel) p.da_partial[n] = da_sum;
  }
}

/// Reverse-time recurrence above. One block per tile (32 channels x kBwdChunk
/// steps); tickets run over chunks from the last in time to the first, the
/// carry map is composed per warp, across warps in shared memory and across
/// tiles by decoupled look-back, then the steps are replayed from registers.
/// Per-channel decay: the tile's da is summed over its steps into row
/// (chunk * B + b) of da_partial.
template <typename T, bool LEAKY>
__global__ void __launch_bounds__(kBwdWarps * kWarp, kChunkedMinBlocks)
    scan_bwd_chunked_kernel(const ScanBwdParams p, const ChunkGeom geo, const TileStatus st,
                            const bool per_channel) {
  constexpr int W = kBwdWarps, S = kBwdSteps;
  __shared__ float s_a[W][kWarp];
  __shared__ float s_x[W][kWarp];
  __shared__ float s_da[W][kWarp];
  __shared__ float s_carry[kWarp];
  __shared__ unsigned int s_ticket;

  const T* __restrict__ g = static_cast<const T*>(p.g);
  const T* __restrict__ a = static_cast<const T*>(p.a);
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ h = static_cast<const T*>(p.h);
  const T* __restrict__ h0 = static_cast<const T*>(p.h0);
  T* __restrict__ dx = static_cast<T*>(p.dx);
  T* __restrict__ da = static_cast<T*>(p.da);
  T* __restrict__ dh0 = static_cast<T*>(p.dh0);

  const unsigned int ticket = take_ticket(st, &s_ticket);
  const unsigned int groups = static_cast<unsigned int>(geo.groups);  // tiles < 2^31
  const int64_t rank = ticket / groups;  // chunks handed out before this one
  const int64_t group = ticket % groups;
  const int64_t chunk = geo.chunks - 1 - rank;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t n = group * kWarp + lane;
  const bool active = n < geo.channels;
  const int64_t b = active ? n / p.D : 0;
  const int64_t d = active ? n - b * p.D : 0;
  const int64_t k0 = chunk * kBwdChunk + static_cast<int64_t>(warp) * S;
  const int64_t left = active ? p.T - k0 : 0;
  const int nv = left <= 0 ? 0 : (left < S ? static_cast<int>(left) : S);

  // h_{k-1} is read shifted by one step, so a warp loads the rows
  // k0 - 1 .. k0 + S - 2 of h and every row is read once overall; only the
  // very first step takes h0 instead.
  const float init = (k0 == 0 && active && h0 != nullptr) ? load(h0, b * p.h0_sb + d) : 0.f;
  const int64_t og = b * p.g_sb + k0 * p.g_st + d;
  const int64_t oa = b * p.a_sb + k0 * p.a_st + d;
  const int64_t ox = LEAKY ? b * p.x_sb + k0 * p.x_st + d : 0;
  const int64_t oh = b * p.h_sb + (k0 - 1) * p.h_st + d;
  // Steps past T and lanes past B * D: g = 0, a = 1 is the identity carry map.
  // Their loads are redirected to element 0 (always valid) rather than skipped,
  // so all loads are unconditional and issue back to back.
  float gv[S], av[S], hv[S], xv[S];
#pragma unroll
  for (int i = 0; i < S; ++i) {
    const bool ok = i < nv;
    gv[i] = load(g, ok ? og + i * p.g_st : 0);
    av[i] = load(a, ok ? oa + i * p.a_st : 0);
    xv[i] = LEAKY ? load(x, ok ? ox + i * p.x_st : 0) : 0.f;
    const bool h0_row = i == 0 && k0 == 0;
    hv[i] = load(h, ok && !h0_row ? oh + i * p.h_st : 0);
    hv[i] = h0_row ? init : hv[i];
    gv[i] = ok ? gv[i] : 0.f;
    av[i] = ok ? av[i] : 1.f;
  }

  Affine<float> seg{1.f, 0.f};  // carry leaving the segment's first step, given the carry entering its last
#pragma unroll
  for (int i = S - 1; i >= 0; --i) {
    const float delta = gv[i] + seg.X;
    seg.X = av[i] * delta;
    seg.A *= av[i];
  }
  s_a[warp][lane] = seg.A;
  s_x[warp][lane] = seg.X;
  __syncthreads();

  // Map from the tile's carry-in (entering step chunk_end - 1) to the carry
  // entering this warp's last step: the composition of the later warps.
  Affine<float> pre{1.f, 0.f};
#pragma unroll
  for (int w = W - 1; w > 0; --w)
    if (w > warp) pre = affine_then(pre, Affine<float>{s_a[w][lane], s_x[w][lane]});

  if (warp == 0) {
    Affine<float> tile{1.f, 0.f};
#pragma unroll
    for (int w = W - 1; w >= 0; --w)
      tile = affine_then(tile, Affine<float>{s_a[w][lane], s_x[w][lane]});
    const int64_t slot = static_cast<int64_t>(ticket) * geo.lanes + lane;
    const bool has_next = ticket + geo.groups < geo.tiles;
    float carry = 0.f;
    if (rank > 0) {
      if (active && has_next) publish_aggregate(st, slot, tile);
      carry = look_back(st, ticket, geo, lane, active);
    }
    if (active && has_next) publish_inclusive(st, slot, tile.A * carry + tile.X);
    s_carry[lane] = carry;
  }
  __syncthreads();

  float carry = pre.A * s_carry[lane] + pre.X;
  float da_sum = 0.f;
  const int64_t odx = b * p.dx_sb + k0 * p.dx_st + d;
  const int64_t oda = per_channel ? 0 : b * p.da_sb + k0 * p.da_st + d;
#pragma unroll
  for (int i = S - 1; i >= 0; --i) {
    if (i < nv) {
      const float delta = gv[i] + carry;
      store(dx, odx + i * p.dx_st, scan_grad_input<LEAKY>(av[i], delta));
      const float dak = scan_grad_decay<LEAKY>(delta, hv[i], xv[i]);
      if (per_channel)
        da_sum += dak;
      else
        store(da, oda + i * p.da_st, dak);
      carry = av[i] * delta;
    }
  }
  if (k0 == 0 && active) store(dh0, n, carry);

  if (per_channel) {  // uniform over the grid: the barrier is reached by all threads
    s_da[warp][lane] = da_sum;
    __syncthreads();
    if (warp == 0 && active) {
      float sum = 0.f;
#pragma unroll
      for (int w = 0; w < W; ++w) sum += s_da[w][lane];
      p.da_partial[(chunk * p.B + b) * p.D + d] = sum;
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
