#pragma once
// The scan ops' argument checks, operand preparation, output allocation and
// stride bookkeeping, shared by the CPU and CUDA registrations: a backend only
// supplies the two kernels (ScanOps<Backend> below). Python validates first with friendlier
// messages; these checks keep direct torch.ops callers from crashing the process.
// Stable ABI only (csrc/stable_util.h).
#include <optional>
#include <tuple>

#include "../lengths.h"
#include "../stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts)

// Outputs are empty_like of the D-contiguous input they correspond to, so a
// time-major input yields a time-major output (mirrored by the fake kernels).
// Kernels want unit stride along D (vector loads, coalescing); any other
// layout is accepted and copied once.
inline Tensor d_contiguous(const Tensor& t) {
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : as_contiguous(t);
}

// (base pointer, batch stride, time stride) of a (B, T, D) operand in processing
// order: reverse=True points at the last time step and negates the time stride.
struct BTDView {
  void* ptr;
  int64_t sb;
  int64_t st;
};

inline BTDView btd_view(const Tensor& t, bool reverse) {
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

inline void check_scan_args(const char* op, const Tensor& decay, const char* decay_name,
                            const Tensor& x, const char* x_name,
                            const std::optional<Tensor>& h0) {
  MTS_CHECK(x.dim() == 3, op, ": ", x_name, " must be 3-D (B, T, D), got shape ",
            shape_str(x.sizes()));
  MTS_CHECK(x.size(1) > 0, op, ": ", x_name, " needs at least one time step, got shape ",
            shape_str(x.sizes()));
  MTS_CHECK(is_kernel_float(x.scalar_type()), op, ": ", x_name,
            " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ",
            x.scalar_type());
  MTS_CHECK(decay.scalar_type() == x.scalar_type(), op, ": ", decay_name, " dtype ",
            decay.scalar_type(), " differs from ", x_name, " dtype ", x.scalar_type());
  MTS_CHECK(decay.device() == x.device(), op, ": ", decay_name, " is on ",
            device_str(decay.device()), " but ", x_name, " is on ", device_str(x.device()));
  const bool per_channel = decay.dim() == 1;
  MTS_CHECK((per_channel && decay.size(0) == x.size(2)) || same_sizes(decay.sizes(), x.sizes()),
            op, ": ", decay_name, " must have shape ", shape_str(x.sizes()), " or (", x.size(2),
            ",), got ", shape_str(decay.sizes()));
  if (h0.has_value()) {
    const Tensor& s = *h0;
    MTS_CHECK(s.dim() == 2 && s.size(0) == x.size(0) && s.size(1) == x.size(2), op,
              ": h0 must have shape (", x.size(0), ", ", x.size(2), "), got ",
              shape_str(s.sizes()));
    MTS_CHECK(s.scalar_type() == x.scalar_type() && s.device() == x.device(), op,
              ": h0 must be ", x.scalar_type(), " on ", device_str(x.device()), ", got ",
              s.scalar_type(), " on ", device_str(s.device()));
  }
}

inline void check_same_as(const char* op, const Tensor& t, const char* name, const Tensor& x) {
  MTS_CHECK(same_sizes(t.sizes(), x.sizes()) && t.scalar_type() == x.scalar_type() &&
                t.device() == x.device(),
            op, ": ", name, " must be ", x.scalar_type(), " of shape ", shape_str(x.sizes()),
            " on ", device_str(x.device()), ", got ", t.scalar_type(), " of shape ",
            shape_str(t.sizes()), " on ", device_str(t.device()));
}

// Operands made ready for a kernel: unit stride along D, per-channel decay
// contiguous, outputs allocated (h like x; dx like x; da like a; dh0 (B, D)).
// Optional members are std::optional rather than undefined tensors: a default
// torch::stable::Tensor is not free (it allocates an undefined-tensor handle).
struct ScanFwd {
  Tensor a, x, h;
  std::optional<Tensor> h0;       // none: zero initial state
  std::optional<Tensor> lengths;  // none: every sequence has T steps (csrc/lengths.h)
  int64_t B, T, D;
};

inline const void* data_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? t->const_data_ptr() : nullptr;
}

inline BTDView btd_view_or_null(const std::optional<Tensor>& t, bool reverse) {
  return t.has_value() ? btd_view(*t, reverse) : BTDView{nullptr, 0, 0};
}

inline std::optional<Tensor> contiguous_or_none(const std::optional<Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return as_contiguous(*t);
}

template <class Backend>
ScanFwd prepare_fwd(const Tensor& decay, const Tensor& x_in, const std::optional<Tensor>& h0,
                    const std::optional<Tensor>& lengths) {
  Tensor x = d_contiguous(x_in);
  Tensor a = decay.dim() == 1 ? as_contiguous(decay) : d_contiguous(decay);
  Tensor h = Backend::empty_like(x);
  return ScanFwd{a, x, h, contiguous_or_none(h0), contiguous_or_none(lengths),
                 x.size(0), x.size(1), x.size(2)};
}

struct ScanBwd {
  Tensor g, a, h;
  std::optional<Tensor> x;  // none for the linear scan (never read)
  std::optional<Tensor> h0;
  std::optional<Tensor> lengths;
  Tensor dx, dh0;
  std::optional<Tensor> da;  // none when the decay is per channel
  bool per_channel;
  int64_t B, T, D;
};

template <class Backend>
ScanBwd prepare_bwd(const Tensor& g, const Tensor& decay, const std::optional<Tensor>& x_in,
                    const Tensor& h_in, const std::optional<Tensor>& h0,
                    const std::optional<Tensor>& lengths) {
  const bool per_channel = decay.dim() == 1;
  Tensor h = d_contiguous(h_in);
  std::optional<Tensor> x;
  if (x_in.has_value()) x = d_contiguous(*x_in);
  Tensor a = per_channel ? as_contiguous(decay) : d_contiguous(decay);
  Tensor dx = Backend::empty_like(x.has_value() ? *x : h);
  std::optional<Tensor> da;
  if (!per_channel) da = Backend::empty_like(a);
  Tensor dh0 = torch::stable::new_empty(h, {h.size(0), h.size(2)});
  return ScanBwd{d_contiguous(g), a, h, x, contiguous_or_none(h0), contiguous_or_none(lengths),
                 dx, dh0, da, per_channel, h.size(0), h.size(1), h.size(2)};
}

// The per-channel decay gradient from a backend's (rows, D) float partial sums:
// rows.sum(0) in the decay's dtype.
inline Tensor sum_rows_to(const Tensor& rows, ScalarType dtype) {
  const int64_t dim0 = 0;
  Tensor sum = torch::stable::sum(rows, IntRef(dim0));
  // Each stable op is a boxed dispatcher call, even a to() that would return self.
  return sum.scalar_type() == dtype ? sum : torch::stable::to(sum, dtype);
}

// Backend: static Tensor empty_like(const Tensor&) with empty_like's layout rule;
//          static void fwd(ScanFwd&, bool reverse, bool leaky) (writes every element
//          of f.h, zeros at padded steps when f.lengths is given);
//          static std::optional<Tensor> bwd(ScanBwd&, bool reverse, bool leaky) -> the
//          per-channel decay gradient (D,) when p.per_channel, else none (p.da is filled).
template <class Backend>
struct ScanOps {
  static Tensor run_fwd(const Tensor& decay, const Tensor& x, const std::optional<Tensor>& h0,
                        bool reverse, bool leaky, const std::optional<Tensor>& lengths) {
    ScanFwd f = prepare_fwd<Backend>(decay, x, h0, lengths);
    if (f.h.numel() > 0) Backend::fwd(f, reverse, leaky);
    return f.h;
  }

  // Returns (dx, da, dh0).
  static std::tuple<Tensor, Tensor, Tensor> run_bwd(const Tensor& g, const Tensor& decay,
                                                     const std::optional<Tensor>& x,
                                                     const Tensor& h,
                                                     const std::optional<Tensor>& h0,
                                                     bool reverse, bool leaky,
                                                     const std::optional<Tensor>& lengths) {
    ScanBwd p = prepare_bwd<Backend>(g, decay, x, h, h0, lengths);
    if (p.h.numel() == 0) {
      torch::stable::zero_(p.dh0);
      return {p.dx, p.per_channel ? torch::stable::new_zeros(p.a, p.a.sizes()) : *p.da, p.dh0};
    }
    std::optional<Tensor> da_channel = Backend::bwd(p, reverse, leaky);
    return {p.dx, p.per_channel ? *da_channel : *p.da, p.dh0};
  }

  static Tensor linear_scan_fwd(Tensor a, Tensor x, std::optional<Tensor> h0, bool reverse,
                                std::optional<Tensor> lengths) {
    check_scan_args("linear_scan", a, "a", x, "x", h0);
    check_lengths("linear_scan", lengths, x.size(0), x.device());
    return run_fwd(a, x, h0, reverse, /*leaky=*/false, lengths);
  }

  static std::tuple<Tensor, Tensor, Tensor> linear_scan_bwd(Tensor grad_h, Tensor a, Tensor h,
                                                            std::optional<Tensor> h0,
                                                            bool reverse,
                                                            std::optional<Tensor> lengths) {
    check_scan_args("linear_scan_bwd", a, "a", h, "h", h0);
    check_same_as("linear_scan_bwd", grad_h, "grad_h", h);
    check_lengths("linear_scan_bwd", lengths, h.size(0), h.device());
    auto [dx, da, dh0] =
        run_bwd(grad_h, a, std::nullopt, h, h0, reverse, /*leaky=*/false, lengths);
    return {da, dx, dh0};
  }

  static Tensor leaky_integrate_fwd(Tensor v, Tensor alpha, std::optional<Tensor> h0,
                                    bool reverse, std::optional<Tensor> lengths) {
    check_scan_args("leaky_integrate", alpha, "alpha", v, "v", h0);
    check_lengths("leaky_integrate", lengths, v.size(0), v.device());
    return run_fwd(alpha, v, h0, reverse, /*leaky=*/true, lengths);
  }

  static std::tuple<Tensor, Tensor, Tensor> leaky_integrate_bwd(Tensor grad_h, Tensor v,
                                                                Tensor alpha, Tensor h,
                                                                std::optional<Tensor> h0,
                                                                bool reverse,
                                                                std::optional<Tensor> lengths) {
    check_scan_args("leaky_integrate_bwd", alpha, "alpha", v, "v", h0);
    check_same_as("leaky_integrate_bwd", grad_h, "grad_h", v);
    check_same_as("leaky_integrate_bwd", h, "h", v);
    check_lengths("leaky_integrate_bwd", lengths, v.size(0), v.device());
    return run_bwd(grad_h, alpha, v, h, h0, reverse, /*leaky=*/true, lengths);
  }

  static void register_impls(torch::stable::detail::StableLibrary& m) {
    m.impl("linear_scan_fwd", TORCH_BOX(&linear_scan_fwd));
    m.impl("linear_scan_bwd", TORCH_BOX(&linear_scan_bwd));
    m.impl("leaky_integrate_fwd", TORCH_BOX(&leaky_integrate_fwd));
    m.impl("leaky_integrate_bwd", TORCH_BOX(&leaky_integrate_bwd));
  }
};

HIDDEN_NAMESPACE_END(mts)
