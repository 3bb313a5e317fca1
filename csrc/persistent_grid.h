#pragma once
// The execution model of the persistent kernels written as phase programs
// (csrc/deep/deep_persistent.h). A program is a sequence of grid.segment(f)
// calls, each ending in a barrier of the whole grid (or of the block, when the
// blocks never read each other's rows); inside a segment, f(blk) runs phases
// blk.run(g), each g(tid) over the block's threads and ending in a block
// barrier. Every thread of the grid makes the same sequence of segment and run
// calls (the loops around them are uniform), so the barriers match. Written
// once, a program runs
//  * on the device (DeviceGrid, nvcc only): each thread calls the program once;
//    run() is the thread's own g(threadIdx.x) then __syncthreads(); a segment
//    ends in cooperative_groups grid.sync() (kGrid) or __syncthreads();
//  * on the host (HostGrid, the test hooks): the same program with the same
//    geometry, thread by thread. With grid sync every block runs a segment
//    before any block runs the next one. Without it the caller runs the whole
//    program once per block (`only`), the most a device can reorder blocks that
//    never wait for each other. `reverse` runs blocks and threads last-first, so
//    a barrier the program is missing, or a row read before its writer's
//    barrier, gives a wrong result in one of the two orders.
// Rows that other blocks wrote during the kernel are read with load_cg (L2,
// never a stale L1 line on the device); grid.sync() orders them across blocks.
#include <cstdint>
#include <vector>

#include "common.h"

namespace mts {
namespace persist {

template <typename T>
MTS_HD T load_cg(const T* p) {
#ifdef __CUDA_ARCH__
  return __ldcg(p);
#else
  return *p;
#endif
}

template <typename S>
struct HostBlock {
  int index, threads;
  S* smem;
  bool reverse;
  template <class F>
  void run(F&& f) const {
    for (int n = 0; n < threads; ++n) f(reverse ? threads - 1 - n : n);
  }
};

template <typename S>
struct HostGrid {
  int blocks, threads;
  bool reverse;
  int only;        // >= 0: that block alone (a program without grid sync)
  S* smem;         // blocks * smem_elems, block b's at b * smem_elems
  int64_t smem_elems;
  template <class F>
  void segment(F&& f) {
    for (int n = 0; n < blocks; ++n) {
      const int b = reverse ? blocks - 1 - n : n;
      if (only >= 0 && b != only) continue;
      const HostBlock<S> blk{b, threads, smem + b * smem_elems, reverse};
      f(blk);
    }
  }
};

// Runs program(grid) on the host: once with every block (grid sync) or once per
// block (without). storage: zero-filled shared memory of every block.
template <typename S, class Program>
void host_run(int blocks, int threads, int64_t smem_elems, bool grid_sync, bool reverse,
              Program&& program) {
  std::vector<S> storage(static_cast<size_t>(blocks) * static_cast<size_t>(smem_elems));
  if (grid_sync) {
    HostGrid<S> grid{blocks, threads, reverse, -1, storage.data(), smem_elems};
    program(grid);
    return;
  }
  for (int n = 0; n < blocks; ++n) {
    HostGrid<S> grid{blocks, threads, reverse, reverse ? blocks - 1 - n : n, storage.data(), smem_elems};
    program(grid);
  }
}

}  // namespace persist
}  // namespace mts

#ifdef __CUDACC__
#include <cooperative_groups.h>

namespace mts {
namespace persist {

template <typename S>
struct DeviceBlock {
  int index, threads;
  S* smem;
  template <class F>
  __device__ void run(F&& f) const {
    f(static_cast<int>(threadIdx.x));
    __syncthreads();
  }
};

template <typename S, bool kGrid>
struct DeviceGrid {
  S* smem;
  template <class F>
  __device__ void segment(F&& f) {
    const DeviceBlock<S> blk{static_cast<int>(blockIdx.x), static_cast<int>(blockDim.x), smem};
    f(blk);
    if constexpr (kGrid) {
      cooperative_groups::this_grid().sync();
    } else {
      __syncthreads();
    }
  }
};

}  // namespace persist
}  // namespace mts
#endif
