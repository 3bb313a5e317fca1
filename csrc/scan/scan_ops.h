#pragma once
// The scan ops' argument checks, operand preparation, output allocation and
// stride bookkeeping, shared by the CPU and CUDA registrations: a backend only
// supplies the two kernels (ScanOps<Backend> below). Python validates first with friendlier
// messages; these checks keep direct torch.ops callers from crashing the process.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace mts {

// Outputs are at::empty_like of the D-contiguous input they correspond to, so a
// time-major input yields a time-major output (mirrored by the fake kernels).
// Kernels want unit stride along D (vector loads, coalescing); any other
// layout is accepted and copied once.
inline at::Tensor d_contiguous(const at::Tensor& t) {
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

// (base pointer, batch stride, time stride) of a (B, T, D) operand in processing
// order: reverse=True points at the last time step and negates the time stride.
struct BTDView {
  void* ptr;
  int64_t sb;
  int64_t st;
};

inline BTDView btd_view(const at::Tensor& t, bool reverse) {
  if (t.dim() == 1) return BTDView{t.data_ptr(), 0, 0};  // per-channel: broadcast over b and t
  int64_t T = t.size(1);
  char* base = static_cast<char*>(t.data_ptr());
  int64_t sb = t.stride(0), st = t.stride(1);
  if (reverse && T > 0) {
    base += (T - 1) * st * static_cast<int64_t>(t.element_size());
    st = -st;
  }
  return BTDView{base, sb, st};
}

inline void check_scan_args(const char* op, const at::Tensor& decay, const char* decay_name,
                            const at::Tensor& x, const char* x_name,
                            const c10::optional<at::Tensor>& h0) {
  TORCH_CHECK(x.dim() == 3, op, ": ", x_name, " must be 3-D (B, T, D), got shape ", x.sizes());
  TORCH_CHECK(x.size(1) > 0, op, ": ", x_name, " needs at least one time step, got shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": ", x_name,
              " must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(decay.scalar_type() == x.scalar_type(), op, ": ", decay_name, " dtype ",
              decay.scalar_type(), " differs from ", x_name, " dtype ", x.scalar_type());
  TORCH_CHECK(decay.device() == x.device(), op, ": ", decay_name, " is on ", decay.device(),
              " but ", x_name, " is on ", x.device());
  const bool per_channel = decay.dim() == 1;
  TORCH_CHECK((per_channel && decay.size(0) == x.size(2)) || decay.sizes() == x.sizes(), op, ": ",
              decay_name, " must have shape ", x.sizes(), " or (", x.size(2), ",), got ",
              decay.sizes());
  if (h0.has_value()) {
    const at::Tensor& s = *h0;
    TORCH_CHECK(s.dim() == 2 && s.size(0) == x.size(0) && s.size(1) == x.size(2), op,
                ": h0 must have shape (", x.size(0), ", ", x.size(2), "), got ", s.sizes());
    TORCH_CHECK(s.scalar_type() == x.scalar_type() && s.device() == x.device(), op,
                ": h0 must be ", x.scalar_type(), " on ", x.device(), ", got ", s.scalar_type(),
                " on ", s.device());
  }
}

inline void check_same_as(const char* op, const at::Tensor& t, const char* name,
                          const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type() &&
                  t.device() == x.device(),
              op, ": ", name, " must be ", x.scalar_type(), " of shape ", x.sizes(), " on ",
              x.device(), ", got ", t.scalar_type(), " of shape ", t.sizes(), " on ", t.device());
}

// Operands made ready for a kernel: unit stride along D, per-channel decay
// contiguous, outputs allocated (h like x; dx like x; da like a; dh0 (B, D)).
struct ScanFwd {
  at::Tensor a, x, h0, h;  // h0 undefined: zero initial state
  int64_t B, T, D;
};

template <class Backend>
ScanFwd prepare_fwd(const at::Tensor& decay, const at::Tensor& x_in,
                    const c10::optional<at::Tensor>& h0) {
  ScanFwd f;
  f.x = d_contiguous(x_in);
  f.a = decay.dim() == 1 ? decay.contiguous() : d_contiguous(decay);
  f.h0 = h0.has_value() ? h0->contiguous() : at::Tensor();
  f.h = Backend::empty_like(f.x);
  f.B = f.x.size(0);
  f.T = f.x.size(1);
  f.D = f.x.size(2);
  return f;
}

struct ScanBwd {
  at::Tensor g, a, x, h, h0;  // x undefined for the linear scan (never read)
  at::Tensor dx, da, dh0;     // da undefined when the decay is per channel
  bool per_channel;
  int64_t B, T, D;
};

template <class Backend>
ScanBwd prepare_bwd(const at::Tensor& g, const at::Tensor& decay, const at::Tensor& x,
                    const at::Tensor& h, const c10::optional<at::Tensor>& h0) {
  ScanBwd p;
  p.g = d_contiguous(g);
  p.h = d_contiguous(h);
  p.x = x.defined() ? d_contiguous(x) : at::Tensor();
  p.per_channel = decay.dim() == 1;
  p.a = p.per_channel ? decay.contiguous() : d_contiguous(decay);
  p.h0 = h0.has_value() ? h0->contiguous() : at::Tensor();
  p.dx = Backend::empty_like(p.x.defined() ? p.x : p.h);
  p.da = p.per_channel ? at::Tensor() : Backend::empty_like(p.a);
  p.dh0 = at::empty({p.h.size(0), p.h.size(2)}, p.h.options());
  p.B = p.h.size(0);
  p.T = p.h.size(1);
  p.D = p.h.size(2);
  return p;
}

// Backend: static at::Tensor empty_like(const at::Tensor&) with at::empty_like's layout rule;
//          static void fwd(ScanFwd&, bool reverse, bool leaky);
//          static at::Tensor bwd(ScanBwd&, bool reverse, bool leaky) -> the per-channel
//          decay gradient (D,) when p.per_channel, else undefined (p.da is filled).
template <class Backend>
struct ScanOps {
  static at::Tensor run_fwd(const at::Tensor& decay, const at::Tensor& x,
                            const c10::optional<at::Tensor>& h0, bool reverse, bool leaky) {
    ScanFwd f = prepare_fwd<Backend>(decay, x, h0);
    if (f.h.numel() > 0) Backend::fwd(f, reverse, leaky);
    return f.h;
  }

  // Returns (dx, da, dh0).
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> run_bwd(
      const at::Tensor& g, const at::Tensor& decay, const at::Tensor& x, const at::Tensor& h,
      const c10::optional<at::Tensor>& h0, bool reverse, bool leaky) {
    ScanBwd p = prepare_bwd<Backend>(g, decay, x, h, h0);
    if (p.h.numel() == 0) {
      p.dh0.zero_();
      return {p.dx, p.per_channel ? at::zeros_like(p.a) : p.da, p.dh0};
    }
    at::Tensor da_channel = Backend::bwd(p, reverse, leaky);
    return {p.dx, p.per_channel ? da_channel : p.da, p.dh0};
  }

  static at::Tensor linear_scan_fwd(const at::Tensor& a, const at::Tensor& x,
                                    const c10::optional<at::Tensor>& h0, bool reverse) {
    check_scan_args("linear_scan", a, "a", x, "x", h0);
    return run_fwd(a, x, h0, reverse, /*leaky=*/false);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_scan_bwd(
      const at::Tensor& grad_h, const at::Tensor& a, const at::Tensor& h,
      const c10::optional<at::Tensor>& h0, bool reverse) {
    check_scan_args("linear_scan_bwd", a, "a", h, "h", h0);
    check_same_as("linear_scan_bwd", grad_h, "grad_h", h);
    auto [dx, da, dh0] = run_bwd(grad_h, a, at::Tensor(), h, h0, reverse, /*leaky=*/false);
    return {da, dx, dh0};
  }

  static at::Tensor leaky_integrate_fwd(const at::Tensor& v, const at::Tensor& alpha,
                                        const c10::optional<at::Tensor>& h0, bool reverse) {
    check_scan_args("leaky_integrate", alpha, "alpha", v, "v", h0);
    return run_fwd(alpha, v, h0, reverse, /*leaky=*/true);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> leaky_integrate_bwd(
      const at::Tensor& grad_h, const at::Tensor& v, const at::Tensor& alpha,
      const at::Tensor& h, const c10::optional<at::Tensor>& h0, bool reverse) {
    check_scan_args("leaky_integrate_bwd", alpha, "alpha", v, "v", h0);
    check_same_as("leaky_integrate_bwd", grad_h, "grad_h", v);
    check_same_as("leaky_integrate_bwd", h, "h", v);
    return run_bwd(grad_h, alpha, v, h, h0, reverse, /*leaky=*/true);
  }

  static void register_impls(torch::Library& m) {
    m.impl("linear_scan_fwd", &linear_scan_fwd);
    m.impl("linear_scan_bwd", &linear_scan_bwd);
    m.impl("leaky_integrate_fwd", &leaky_integrate_fwd);
    m.impl("leaky_integrate_bwd", &leaky_integrate_bwd);
  }
};

}  // namespace mts
