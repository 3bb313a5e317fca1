// Backward CUDA scan: host entry points of scan_launch.h and the dtype / leaky
// dispatch. Kernels and the algorithm heuristic are in scan_cuda_kernels.cuh.
#include "scan_cuda_kernels.cuh"

namespace mts {
namespace {

using namespace scan_cuda;

template <typename T, bool LEAKY>
cudaError_t launch_bwd(const ScanBwdParams& p, bool per_channel, void* workspace,
                       cudaStream_t stream) {
  if (!use_chunked_scan(p.B, p.T, p.D)) {
    scan_bwd_seq_kernel<T, LEAKY><<<seq_blocks(p.B * p.D), kSeqThreads, 0, stream>>>(p, per_channel);
  } else {
    const ChunkGeom geo = chunk_geom(p.B, p.T, p.D, kBwdChunk);
    // Tickets, tile indices and (in the kernel) channel indices are 32-bit;
    // use_chunked_scan() keeps B * D far below these limits.
    if (geo.tiles > INT_MAX || geo.channels > INT_MAX - kWarp || workspace == nullptr)
      return cudaErrorInvalidValue;
    unsigned int blocks = 0;
    const cudaError_t err = chunked_blocks(geo.tiles, &blocks);
    if (err != cudaSuccess) return err;
    scan_bwd_chunked_kernel<T, LEAKY><<<blocks, kChunkedThreads, 0, stream>>>(
        p, geo, tile_status(workspace, geo), per_channel);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const ScanBwdParams& p, bool leaky, bool per_channel, void* workspace,
                       cudaStream_t stream) {
  return leaky ? launch_bwd<T, true>(p, per_channel, workspace, stream)
               : launch_bwd<T, false>(p, per_channel, workspace, stream);
}

}  // namespace

int64_t scan_bwd_cuda_workspace_bytes(int64_t B, int64_t T, int64_t D) {
  if (B <= 0 || T <= 0 || D <= 0 || !scan_cuda::use_chunked_scan(B, T, D)) return 0;
  return scan_cuda::status_bytes(scan_cuda::chunk_geom(B, T, D, scan_cuda::kBwdChunk));
}

int64_t scan_bwd_cuda_partials(int64_t B, int64_t T, int64_t D) {
  return scan_cuda::bwd_partial_rows(B, T, D);
}

cudaError_t scan_bwd_cuda(const ScanBwdParams& p, ScanDtype dtype, bool leaky, bool per_channel,
                          void* workspace, cudaStream_t stream) {
  if (p.B <= 0 || p.D <= 0) return cudaSuccess;
  if (per_channel && p.da_partial == nullptr) return cudaErrorInvalidValue;
  switch (dtype) {
    case ScanDtype::kFloat32: return launch_bwd<float>(p, leaky, per_channel, workspace, stream);
    case ScanDtype::kFloat16: return launch_bwd<__half>(p, leaky, per_channel, workspace, stream);
    case ScanDtype::kBFloat16:
      return launch_bwd<__nv_bfloat16>(p, leaky, per_channel, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mts
