// Forward CUDA scan: host entry points of scan_launch.h and the dtype / leaky
// dispatch. Kernels and the algorithm heuristic are in scan_cuda_kernels.cuh.
#include "scan_cuda_kernels.cuh"

namespace mts {
namespace {

using namespace scan_cuda;

template <typename T, bool LEAKY>
cudaError_t launch_fwd(const ScanFwdParams& p, void* workspace, cudaStream_t stream) {
  if (!use_chunked_scan(p.B, p.T, p.D)) {
    scan_fwd_seq_kernel<T, LEAKY><<<seq_blocks(p.B * p.D), kSeqThreads, 0, stream>>>(p);
  } else {
    const ChunkGeom geo = chunk_geom(p.B, p.T, p.D, kFwdChunk);
    // Tickets, tile indices and (in the kernel) channel indices are 32-bit;
    // use_chunked_scan() keeps B * D far below these limits.
    if (geo.tiles > INT_MAX || geo.channels > INT_MAX - kWarp || workspace == nullptr)
      return cudaErrorInvalidValue;
    unsigned int blocks = 0;
    const cudaError_t err = chunked_blocks(geo.tiles, &blocks);
    if (err != cudaSuccess) return err;
    scan_fwd_chunked_kernel<T, LEAKY><<<blocks, kChunkedThreads, 0, stream>>>(
        p, geo, tile_status(workspace, geo));
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_fwd(const ScanFwdParams& p, bool leaky, void* workspace, cudaStream_t stream) {
  return leaky ? launch_fwd<T, true>(p, workspace, stream)
               : launch_fwd<T, false>(p, workspace, stream);
}

}  // namespace

int64_t scan_fwd_cuda_workspace_bytes(int64_t B, int64_t T, int64_t D) {
  if (B <= 0 || T <= 0 || D <= 0 || !scan_cuda::use_chunked_scan(B, T, D)) return 0;
  return scan_cuda::status_bytes(scan_cuda::chunk_geom(B, T, D, scan_cuda::kFwdChunk));
}

cudaError_t scan_fwd_cuda(const ScanFwdParams& p, ScanDtype dtype, bool leaky, void* workspace,
                          cudaStream_t stream) {
  if (p.B <= 0 || p.T <= 0 || p.D <= 0) return cudaSuccess;
  switch (dtype) {
    case ScanDtype::kFloat32: return launch_fwd<float>(p, leaky, workspace, stream);
    case ScanDtype::kFloat16: return launch_fwd<__half>(p, leaky, workspace, stream);
    case ScanDtype::kBFloat16: return launch_fwd<__nv_bfloat16>(p, leaky, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mts
