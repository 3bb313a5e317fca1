// CPU registration of the dense leaky recurrence.
//
// Large steps (B*H*H above kSmallWork) use the ATen loop of leaky_rnn_impl.h: the
// per-step GEMM goes to BLAS, which is then the cost. Small steps are dominated by
// per-op dispatch overhead (several ATen ops per step, a few microseconds each), so
// they run a loop over raw pointers instead: the per-step product, the
// nonlinearity and the leak fused in one pass over a (B, H) tile that stays in L1.
#include <algorithm>
#include <cmath>
#include <vector>

#include "leaky_rnn_impl.h"

namespace mts {
namespace rnn {
namespace {

constexpr int64_t kSmallWork = int64_t(1) << 17;  // multiply-adds per step

// c[b, :] += a[b, :] @ m for a (B, H), m (H, H) row-major. Columns go in blocks of
// kCols held in registers across the whole k loop (no store-to-load chain through
// c), the block loop runs along m's rows with unit stride, so it vectorizes.
template <typename T>
inline void matmul_acc(int64_t B, int64_t H, const T* __restrict__ a, const T* __restrict__ m,
                       T* __restrict__ c) {
  constexpr int64_t kCols = 256 / sizeof(T);  // 64 float / 32 double accumulators
  for (int64_t b = 0; b < B; ++b) {
    const T* ab = a + b * H;
    T* cb = c + b * H;
    int64_t j0 = 0;
    for (; j0 + kCols <= H; j0 += kCols) {
      T acc[kCols];
      for (int64_t jj = 0; jj < kCols; ++jj) acc[jj] = cb[j0 + jj];
      for (int64_t k = 0; k < H; ++k) {
        const T av = ab[k];
        const T* mk = m + k * H + j0;
        for (int64_t jj = 0; jj < kCols; ++jj) acc[jj] += av * mk[jj];
      }
      for (int64_t jj = 0; jj < kCols; ++jj) cb[j0 + jj] = acc[jj];
    }
    if (j0 < H) {  // ragged tail
      for (int64_t k = 0; k < H; ++k) {
        const T av = ab[k];
        const T* mk = m + k * H;
        for (int64_t j = j0; j < H; ++j) cb[j] += av * mk[j];
      }
    }
  }
}

// float32 tanh as a clamped odd rational function (Eigen's ptanh_float: a few ulp),
// branch-free so the pointwise loop vectorizes; std::tanh is a scalar libm call
// that costs more than the rest of a small step.
inline float fast_tanh(float x) {
  constexpr float kClamp = 7.90531110763549805f;
  x = std::min(kClamp, std::max(-kClamp, x));
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return p / q;
}

inline float tanh_of(float z) { return fast_tanh(z); }
inline double tanh_of(double z) { return std::tanh(z); }


// The time loops over raw pointers (processing order k; reverse maps k to time).
template <typename T>
struct Raw {
  int64_t Tn, B, H, dilation, skip;
  bool reverse, tanh;
  const T* alpha;  // nullptr: no leak
  const T* w;      // forward: W^T (the product reads it row by row); backward: W
  const T* ws;     // the same for W_skip; nullptr without skip
  const T* h0;
  const T* in;     // forward: p; backward: u
  T* out;          // forward: h; backward: delta (completed in place)
  T* out2;         // forward: u (== h without leak); backward: e
  T* acc;          // forward: the (B, H) pre-activation; backward: dh0
  int64_t offset(int64_t k) const { return (reverse ? Tn - 1 - k : k) * B * H; }
};

template <typename T>
inline void fwd_steps(const Raw<T>& r) {
  const int64_t B = r.B, H = r.H, BH = B * H;
  T* z = r.acc;
  for (int64_t k = 0; k < r.Tn; ++k) {
    const T* hd = k >= r.dilation ? r.out + r.offset(k - r.dilation) : r.h0;
    std::copy(r.in + r.offset(k), r.in + r.offset(k) + BH, z);
    matmul_acc<T>(B, H, hd, r.w, z);
    if (r.ws) matmul_acc<T>(B, H, k >= r.skip ? r.out + r.offset(k - r.skip) : r.h0, r.ws, z);
    T* ht = r.out + r.offset(k);
    T* ut = r.out2 + r.offset(k);
    if (r.tanh) {
      for (int64_t i = 0; i < BH; ++i) ut[i] = tanh_of(z[i]);
    } else {
      for (int64_t i = 0; i < BH; ++i) ut[i] = z[i] > T(0) ? z[i] : T(0);
    }
    if (r.alpha) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < H; ++j) {
          const int64_t i = b * H + j;
          ht[i] = r.alpha[j] * hd[i] + (T(1) - r.alpha[j]) * ut[i];
        }
    }
  }
}

template <typename T>
inline void bwd_steps(const Raw<T>& r) {
  const int64_t B = r.B, H = r.H, BH = B * H;
  for (int64_t k = r.Tn - 1; k >= 0; --k) {
    const T* dt = r.out + r.offset(k);
    const T* ut = r.in + r.offset(k);
    T* e = r.out2 + r.offset(k);
    T* target = k >= r.dilation ? r.out + r.offset(k - r.dilation) : r.acc;
    if (r.tanh) {
      for (int64_t i = 0; i < BH; ++i) e[i] = (T(1) - ut[i] * ut[i]) * dt[i];
    } else {
      for (int64_t i = 0; i < BH; ++i) e[i] = ut[i] > T(0) ? dt[i] : T(0);
    }
    if (r.alpha) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < H; ++j) {
          const int64_t i = b * H + j;
          e[i] *= T(1) - r.alpha[j];
          target[i] += r.alpha[j] * dt[i];
        }
    }
    // dL/dh_{t-d} += e_t W (and through the skip weights)
    matmul_acc<T>(B, H, e, r.w, target);
    if (r.ws) matmul_acc<T>(B, H, e, r.ws, k >= r.skip ? r.out + r.offset(k - r.skip) : r.acc);
  }
}

// float32 is the common case: on x86-64 it is compiled twice, for the baseline
// and for x86-64-v3 (AVX2 + FMA), and the loader picks per machine (ifunc), since
// wheels cannot assume AVX2 but most machines have it. `flatten` inlines the
// templated loop into each clone, so the loop itself is compiled per target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define MTS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default"), flatten))
#else
#define MTS_CPU_CLONES
#endif

MTS_CPU_CLONES void fwd_steps_f32(const Raw<float>& r) { fwd_steps<float>(r); }
MTS_CPU_CLONES void bwd_steps_f32(const Raw<float>& r) { bwd_steps<float>(r); }
inline void run_fwd(const Raw<float>& r) { fwd_steps_f32(r); }
inline void run_bwd(const Raw<float>& r) { bwd_steps_f32(r); }
inline void run_fwd(const Raw<double>& r) { fwd_steps<double>(r); }
inline void run_bwd(const Raw<double>& r) { bwd_steps<double>(r); }

template <typename T>
void small_fwd(const Problem& pr, const at::Tensor& p, at::Tensor& h, at::Tensor& u) {
  const at::Tensor wt = pr.w.t().contiguous();
  const at::Tensor wst = pr.skip > 0 ? pr.w_skip.t().contiguous() : at::Tensor();
  std::vector<T> z(pr.s.B * pr.s.H);
  Raw<T> r{pr.s.T, pr.s.B, pr.s.H, pr.dilation, pr.skip, pr.reverse, pr.phi == Phi::kTanh,
           pr.leak ? pr.alpha.const_data_ptr<T>() : nullptr, wt.const_data_ptr<T>(),
           pr.skip > 0 ? wst.const_data_ptr<T>() : nullptr, pr.h0.const_data_ptr<T>(),
           p.const_data_ptr<T>(), h.mutable_data_ptr<T>(),
           pr.leak ? u.mutable_data_ptr<T>() : h.mutable_data_ptr<T>(), z.data()};
  run_fwd(r);
}

template <typename T>
void small_bwd(const Problem& pr, const at::Tensor& u, at::Tensor& delta, at::Tensor& e,
               at::Tensor& dh0) {
  Raw<T> r{pr.s.T, pr.s.B, pr.s.H, pr.dilation, pr.skip, pr.reverse, pr.phi == Phi::kTanh,
           pr.leak ? pr.alpha.const_data_ptr<T>() : nullptr, pr.w.const_data_ptr<T>(),
           pr.skip > 0 ? pr.w_skip.const_data_ptr<T>() : nullptr, pr.h0.const_data_ptr<T>(),
           u.const_data_ptr<T>(), delta.mutable_data_ptr<T>(), e.mutable_data_ptr<T>(),
           dh0.mutable_data_ptr<T>()};
  run_bwd(r);
}

bool is_small(const Problem& pr) { return pr.s.B * pr.s.H * pr.s.H <= kSmallWork; }

struct CpuLoop {
  static void fwd(const Problem& pr, const at::Tensor& p, at::Tensor& h, at::Tensor& u) {
    if (!is_small(pr)) return AtenLoop::fwd(pr, p, h, u);
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "leaky_rnn_fwd_cpu",
                               [&] { small_fwd<scalar_t>(pr, p, h, u); });
  }
  static void bwd(const Problem& pr, const at::Tensor& u, at::Tensor& delta, at::Tensor& e_all,
                  at::Tensor& dh0) {
    if (!is_small(pr)) return AtenLoop::bwd(pr, u, delta, e_all, dh0);
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "leaky_rnn_bwd_cpu",
                               [&] { small_bwd<scalar_t>(pr, u, delta, e_all, dh0); });
  }
};

}  // namespace
}  // namespace rnn
}  // namespace mts

TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) { mts::rnn::register_impls<mts::rnn::CpuLoop>(m); }
