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

// c[b, :] += a[b, :] @ m for a (B, H), m (H, H) row-major: the inner loop runs
// along m's rows, unit stride, so it vectorizes.
template <typename T>
inline void matmul_acc(int64_t B, int64_t H, const T* __restrict__ a, const T* __restrict__ m,
                       T* __restrict__ c) {
  for (int64_t b = 0; b < B; ++b) {
    T* __restrict__ cb = c + b * H;
    const T* ab = a + b * H;
    for (int64_t k = 0; k < H; ++k) {
      const T av = ab[k];
      const T* __restrict__ mk = m + k * H;
      for (int64_t j = 0; j < H; ++j) cb[j] += av * mk[j];
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

template <typename T>
inline T phi_of(Phi phi, T z) { return phi == Phi::kTanh ? tanh_of(z) : (z > T(0) ? z : T(0)); }

template <typename T>
inline T dphi_of(Phi phi, T u) { return phi == Phi::kTanh ? T(1) - u * u : (u > T(0) ? T(1) : T(0)); }

template <typename T>
void small_fwd(const Problem& pr, const at::Tensor& p_t, at::Tensor& h_t, at::Tensor& u_t) {
  const int64_t Tn = pr.s.T, B = pr.s.B, H = pr.s.H, BH = B * H;
  // z_t = p_t + h_{t-d} W^T: the product reads W^T row by row.
  const at::Tensor wt = pr.w.t().contiguous();
  const at::Tensor wst = pr.skip > 0 ? pr.w_skip.t().contiguous() : at::Tensor();
  const T* p = p_t.const_data_ptr<T>();
  const T* h0 = pr.h0.const_data_ptr<T>();
  const T* alpha = pr.leak ? pr.alpha.const_data_ptr<T>() : nullptr;
  T* h = h_t.mutable_data_ptr<T>();
  T* u = pr.leak ? u_t.mutable_data_ptr<T>() : h;
  std::vector<T> z(BH);
  auto row = [&](const T* base, int64_t k) { return base + time_of(k, Tn, pr.reverse) * BH; };
  for (int64_t k = 0; k < Tn; ++k) {
    const T* hd = k >= pr.dilation ? row(h, k - pr.dilation) : h0;
    std::copy(row(p, k), row(p, k) + BH, z.begin());
    matmul_acc<T>(B, H, hd, wt.const_data_ptr<T>(), z.data());
    if (pr.skip > 0)
      matmul_acc<T>(B, H, k >= pr.skip ? row(h, k - pr.skip) : h0, wst.const_data_ptr<T>(), z.data());
    T* ht = h + time_of(k, Tn, pr.reverse) * BH;
    T* ut = u + time_of(k, Tn, pr.reverse) * BH;
    for (int64_t i = 0; i < BH; ++i) ut[i] = phi_of<T>(pr.phi, z[i]);
    if (alpha) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < H; ++j) {
          const int64_t i = b * H + j;
          ht[i] = alpha[j] * hd[i] + (T(1) - alpha[j]) * ut[i];
        }
    }
  }
}

template <typename T>
void small_bwd(const Problem& pr, const at::Tensor& u_t, at::Tensor& delta_t, at::Tensor& e_t,
               at::Tensor& dh0_t) {
  const int64_t Tn = pr.s.T, B = pr.s.B, H = pr.s.H, BH = B * H;
  const T* u = u_t.const_data_ptr<T>();
  const T* w = pr.w.const_data_ptr<T>();
  const T* ws = pr.skip > 0 ? pr.w_skip.const_data_ptr<T>() : nullptr;
  const T* alpha = pr.leak ? pr.alpha.const_data_ptr<T>() : nullptr;
  T* delta = delta_t.mutable_data_ptr<T>();
  T* e_all = e_t.mutable_data_ptr<T>();
  T* dh0 = dh0_t.mutable_data_ptr<T>();
  auto offset = [&](int64_t k) { return time_of(k, Tn, pr.reverse) * BH; };
  for (int64_t k = Tn - 1; k >= 0; --k) {
    const T* dt = delta + offset(k);
    const T* ut = u + offset(k);
    T* e = e_all + offset(k);
    T* target = k >= pr.dilation ? delta + offset(k - pr.dilation) : dh0;
    for (int64_t i = 0; i < BH; ++i) e[i] = dphi_of<T>(pr.phi, ut[i]) * dt[i];
    if (alpha) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < H; ++j) {
          const int64_t i = b * H + j;
          e[i] *= T(1) - alpha[j];
          target[i] += alpha[j] * dt[i];
        }
    }
    // dL/dh_{t-d} += e_t W (and through the skip weights)
    matmul_acc<T>(B, H, e, w, target);
    if (ws) matmul_acc<T>(B, H, e, ws, k >= pr.skip ? delta + offset(k - pr.skip) : dh0);
  }
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
