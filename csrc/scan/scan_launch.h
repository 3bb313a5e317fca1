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
//
// Variable lengths (csrc/lengths.h): lengths (B,) int64 on the device, or
// nullptr for all T steps; the kernels clamp each L_b to [0, T] and never copy
// it to the host. Row b runs the processing steps [lo_b, hi_b): [0, L_b), or
// [T - L_b, T) when len_reversed (reverse=True: the views start at time T - 1,
// so the padded times t >= L_b come first). Padded steps act as the identity
// map (a = 1, x = 0; backward g = 0), so the forward carries h0 unchanged to
// step lo_b and the backward carries dL/dh out of step lo_b unchanged to dh0;
// every output at a padded step is written as 0 (h; dx, da), padded steps are
// left out of the per-channel decay sums, and the backward's h_{k-1} of step
// lo_b is h0 (not the padded row before it).
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
  const int64_t* lengths;               // (B,) or nullptr: every row runs all T steps
  bool len_reversed;                    // padded steps first in processing order
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
  const int64_t* lengths;               // (B,) or nullptr, as in ScanFwdParams
  bool len_reversed;
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
