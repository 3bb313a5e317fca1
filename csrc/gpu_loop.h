#pragma once
// The GEMMs of the GPU time loops that run on the host stream (clockwork_rnn's
// csrc/clockwork/clockwork_loop.h, deep_transition_rnn's csrc/deep/deep_loop.h),
// for each place such a loop runs: CudaGemm (cuBLAS through the C shim, on the
// current stream, under a device guard) registers the CUDA ops; HostGemm (CPU
// BLAS on the same strided views) runs the very same loop on the host as a test
// hook, so the CPU test suite checks the loops without a GPU. Both take (rows,
// cols) row-major views with a leading dimension (view below) or transposes of
// them, which cuBLAS takes as they are.
//
// A loop's device policy derives from one of them and adds step(q) for each of
// its pointwise kernels' parameter structs.
#include <optional>

#include "rnn/leaky_rnn_impl.h"
#include "stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts, gpu_loop)

// (rows, cols) row-major view with leading dimension ld of `like`'s device and dtype.
inline Tensor view(const Tensor& like, const void* data, int64_t rows, int64_t cols, int64_t ld) {
  return torch::stable::from_blob(const_cast<void*>(data), {rows, cols}, {ld, 1}, like.device(),
                                  like.scalar_type());
}
inline Tensor tr(const Tensor& t) { return torch::stable::transpose(t, 0, 1); }

// An optional operand in the compute dtype (rnn::compute: float32 for
// float16/bfloat16, contiguous) and its pointer, nullptr when absent, beside a
// plain Tensor rather than an optional, which GCC 12 misreads as
// maybe-uninitialized inside the loops' dispatch lambdas; an absent one's Tensor
// is `stand_in`, never read.
struct Opt {
  Tensor t;
  const void* p;
  Opt(const std::optional<Tensor>& in, const Tensor& stand_in)
      : t(in ? rnn::compute(*in) : stand_in), p(in ? t.const_data_ptr() : nullptr) {}
  template <typename T>
  const T* get() const {
    return static_cast<const T*>(p);
  }
};

// The lengths operand as the step kernels read it: contiguous int64 on the
// device, or p == nullptr (every row runs every step); never read on the host.
struct Lengths {
  Tensor t;
  const int64_t* p;
  Lengths(const std::optional<Tensor>& in, const Tensor& stand_in)
      : t(in ? as_contiguous(*in) : stand_in), p(in ? ptr<int64_t>(t) : nullptr) {}
};

// One step's pointwise work on the host: the CUDA kernel's per-element body
// (step_elem, found beside the parameter struct Q) over its B * H elements, after
// the parameter check its launcher makes (step_valid).
template <class Q>
void host_step(const Q& q, const char* op) {
  MTS_CHECK(step_valid(q), op, ": invalid step parameters");
  for (int64_t i = 0; i < q.B * q.H; ++i) step_elem(q, i);
}

HIDDEN_NAMESPACE_END(mts, gpu_loop)

#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cpu.h>

#include "blas_blocked.h"

HIDDEN_NAMESPACE_BEGIN(mts, gpu_loop)

// The loops' GEMMs on the CPU (the tangent ops' CPU registration and the host
// runs of the CUDA loops): float32 / float64 in the blocked GEMMs of
// csrc/blas_blocked.h, whose blocks and reduction chunks are fixed by the shape,
// so a second order is the same on any thread count (torch's mm splits MKL's
// work by the thread count: deep_transition_rnn's second order differed by up
// to 1e-4 between 1 and 3 threads); other dtypes through torch's mm.
struct HostGemm {
  static constexpr auto kDevice = torch::headeronly::DeviceType::CPU;
  explicit HostGemm(const Tensor&) {}
  void mm(const Tensor& c, const Tensor& a, const Tensor& m) {
    if (!blocked(c, a, m, false)) TORCH_ERROR_CODE_CHECK(aoti_torch_cpu_mm_out(c.get(), a.get(), m.get()));
  }
  void addmm(const Tensor& c, const Tensor& a, const Tensor& m) {
    if (!blocked(c, a, m, true))
      TORCH_ERROR_CODE_CHECK(aoti_torch_cpu_addmm_out(c.get(), c.get(), a.get(), m.get(), 1.0, 1.0));
  }

 private:
  template <typename T>
  static void run(const Tensor& c, const Tensor& a, const Tensor& m, bool acc) {
    const int64_t M = a.size(0), K = a.size(1), N = m.size(1);
    T* cp = static_cast<T*>(c.mutable_data_ptr());
    if (!acc)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) cp[i * c.stride(0) + j * c.stride(1)] = T(0);
    const cpu::Mat<const T> am{static_cast<const T*>(a.const_data_ptr()), a.stride(0), a.stride(1)};
    const cpu::Mat<const T> mm{static_cast<const T*>(m.const_data_ptr()), m.stride(0), m.stride(1)};
    const cpu::Mat<T> cm{cp, c.stride(0), c.stride(1)};
    // a weight gradient's reduction over all steps in chunks, a step's product in blocks
    if (K >= 2 * cpu::kGramChunk)
      cpu::chunked_gemm_acc<T>(M, K, N, am, mm, cm);
    else
      cpu::blocked_gemm_acc<T>(M, K, N, am, mm, cm);
  }
  static bool blocked(const Tensor& c, const Tensor& a, const Tensor& m, bool acc) {
    const ScalarType t = c.scalar_type();
    if (a.scalar_type() != t || m.scalar_type() != t) return false;
    if (t == ScalarType::Float) {
      run<float>(c, a, m, acc);
    } else if (t == ScalarType::Double) {
      run<double>(c, a, m, acc);
    } else {
      return false;
    }
    return true;
  }
};

HIDDEN_NAMESPACE_END(mts, gpu_loop)

// CudaGemm: in the CUDA registrations only (they define MTS_GPU_LOOP_CUDA).
#ifdef MTS_GPU_LOOP_CUDA
#include <cuda_runtime_api.h>
#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cuda.h>

#include <cstdlib>
#include <string>
#include <torch/csrc/stable/accelerator.h>

HIDDEN_NAMESPACE_BEGIN(mts, gpu_loop)

inline void check_cuda(cudaError_t err, const char* what) {
  MTS_CHECK(err == cudaSuccess, "mts_kernels: ", what, " failed: ", cudaGetErrorString(err));
}

// The persistent kernels (deep_transition_rnn, clockwork_rnn), under
// MTS_KERNELS_RNN_PERSISTENT as leaky_rnn's (read at every call, so an A/B
// comparison can flip it between calls): "0" never (the cuBLAS loop), "grid"
// (testing) with the units split over grid-synchronised blocks whenever H > 1,
// anything else where the plan fits. launch(force_grid, &launched) returns the
// launcher's error; true when the kernel ran the time loop.
template <class Launch>
bool try_persistent(Launch&& launch, const char* what) {
  const char* v = std::getenv("MTS_KERNELS_RNN_PERSISTENT");
  const std::string mode = v == nullptr ? "" : v;
  if (mode == "0") return false;
  bool launched = false;
  check_cuda(launch(mode == "grid", &launched), what);
  return launched;
}

struct CudaGemm {
  static constexpr auto kDevice = torch::headeronly::DeviceType::CUDA;
  torch::stable::accelerator::DeviceGuard guard;
  cudaStream_t stream;
  explicit CudaGemm(const Tensor& like)
      : guard(like.get_device()),
        stream(static_cast<cudaStream_t>(current_cuda_stream(like.get_device()))) {}
  // c = a m
  void mm(const Tensor& c, const Tensor& a, const Tensor& m) {
    TORCH_ERROR_CODE_CHECK(aoti_torch_cuda_mm_out(c.get(), a.get(), m.get()));
  }
  // c += a m
  void addmm(const Tensor& c, const Tensor& a, const Tensor& m) {
    TORCH_ERROR_CODE_CHECK(aoti_torch_cuda_addmm_out(c.get(), c.get(), a.get(), m.get(), 1.0, 1.0));
  }
};

HIDDEN_NAMESPACE_END(mts, gpu_loop)
#endif
