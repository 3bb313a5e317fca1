#pragma once
// Host-side interface of the CUDA scan kernels. Deliberately free of torch
// headers: scan_cuda.cpp (host compiler) validates tensors and fills these
// structs; the .cu files only see raw pointers, so they compile quickly.
//
// Every (B, T, D) operand has unit stride along D; the strides below are in
// elements (not bytes) and may be negative along T: the recurrence always runs
// over "processing steps" k = 0..T-1,
//     h_k = a_k * h_{k-1} + x_k            (leaky: + (1 - a_k) * x_k instead)
//     h_{-1} = h0 (or 0 when h0 == nullptr),
// and reverse=True is expressed by pointing at time T-1 with a negated stride.
// A per-channel decay has a_sb == a_st == 0 and D contiguous values.
#include <cstdint>
#include <cuda_runtime_api.h>

namespace mts {

enum class ScanDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct ScanFwdParams {
  int64_t B, T, D;
  const void* a;  int64_t a_sb, a_st;
  const void* x;  int64_t x_sb, x_st;
  const void* h0; int64_t h0_sb;        // nullptr: zero initial state
  void* h;        int64_t h_sb, h_st;
};

struct ScanBwdParams {
  int64_t B, T, D;
  const void* g;  int64_t g_sb, g_st;   // dL/dh, processing order as above
  const void* a;  int64_t a_sb, a_st;
  const void* x;  int64_t x_sb, x_st;   // v; read only when leaky
  const void* h;  int64_t h_sb, h_st;   // forward output
  const void* h0; int64_t h0_sb;        // nullptr: zero initial state
  void* dx;       int64_t dx_sb, dx_st;
  void* da;       int64_t da_sb, da_st; // per-element decay gradient; unused when per-channel
  float* da_partial;                    // per-channel decay: (scan_bwd_cuda_partials(), D) float32
                                        // rows of partial sums, summed by the caller
  void* dh0;                            // (B, D) contiguous, input dtype; always written
};

// Bytes of zero-initialised device workspace the forward / backward launch
// needs (chunk carries and look-back flags). May be 0.
int64_t scan_fwd_cuda_workspace_bytes(int64_t B, int64_t T, int64_t D);
int64_t scan_bwd_cuda_workspace_bytes(int64_t B, int64_t T, int64_t D);
// Rows of ScanBwdParams::da_partial needed for a per-channel decay.
int64_t scan_bwd_cuda_partials(int64_t B, int64_t T, int64_t D);

// Launch on `stream`. Return cudaSuccess or the first launch error; the
// caller turns errors into Python exceptions.
cudaError_t scan_fwd_cuda(const ScanFwdParams& p, ScanDtype dtype, bool leaky,
                          void* workspace, cudaStream_t stream);
cudaError_t scan_bwd_cuda(const ScanBwdParams& p, ScanDtype dtype, bool leaky,
                          bool per_channel, void* workspace, cudaStream_t stream);

}  // namespace mts
