// CPU kernels of linear_scan / leaky_integrate (math in scan_math.h).
//
// Work is split over (batch, block of channels) with torch::stable::parallel_for
// (at::parallel_for behind the stable ABI: torch's thread pool); each task
// walks time sequentially with its block's state in a small local array. The
// channel loop is innermost and unit-stride, so the compiler vectorizes it, and
// each task streams rows of its operands in time order (prefetcher-friendly).
#include <algorithm>
#include <array>

#include "../cpu_alloc.h"
#include "scan_math.h"
#include "scan_ops.h"

HIDDEN_NAMESPACE_BEGIN(mts)
namespace {

constexpr int64_t kMaxBlock = 512;  // channels per task: 2 KiB of float state, stays in L1
constexpr int64_t kMinBlock = 64;

// Wide blocks keep each task's accesses sequential; narrow them only when there
// would otherwise be too few tasks to occupy every thread.
int64_t channel_block(int64_t B, int64_t D) {
  int64_t blk = std::min(D, kMaxBlock);
  const int64_t want = 4 * static_cast<int64_t>(torch::stable::get_num_threads());
  while (blk > kMinBlock && B * ((D + blk - 1) / blk) < want) blk /= 2;
  return std::max<int64_t>(blk, 1);
}

// Tasks (one channel block over all T steps) smaller than this many element steps
// are grouped, and a whole problem that small runs on the calling thread: entering
// a parallel region costs microseconds, more than such a task's work. (Before the
// stable-ABI port at::parallel_for ran inline anyway: the extension is compiled
// without -fopenmp; torch::stable::parallel_for really uses torch's thread pool.)
constexpr int64_t kMinParallelWork = int64_t(1) << 15;

int64_t task_grain(int64_t T, int64_t blk) {
  return std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(T * blk, 1));
}

template <typename T>
const T* cptr(const BTDView& v) { return static_cast<const T*>(v.ptr); }
template <typename T>
T* mptr(const BTDView& v) { return static_cast<T*>(v.ptr); }

// Row b runs L_b = len[b] steps (T without lengths); processing step k is time
// k, or L_b - 1 - k with reverse (views are passed unreversed). Outputs at the
// padded times [L_b, T) are zero-filled.
inline int64_t row_len(const int64_t* len, int64_t b, int64_t T) { return len ? len[b] : T; }

template <typename scalar_t>
void zero_tail(scalar_t* base, int64_t st, int64_t L, int64_t T, int64_t n) {
  for (int64_t t = L; t < T; ++t) std::fill(base + t * st, base + t * st + n, scalar_t(0));
}

template <typename scalar_t, bool LEAKY>
void fwd_kernel(int64_t B, int64_t T, int64_t D, BTDView a, BTDView x, const scalar_t* h0,
                int64_t h0_sb, BTDView h, const int64_t* len, bool reverse) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t blk = channel_block(B, D);
  const int64_t nblk = (D + blk - 1) / blk;
  torch::stable::parallel_for(0, B * nblk, task_grain(T, blk), [&](int64_t begin, int64_t end) {
    std::array<acc_t, kMaxBlock> state;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk;
      const int64_t d0 = (task % nblk) * blk;
      const int64_t n = std::min(blk, D - d0);
      const int64_t L = row_len(len, b, T);
      for (int64_t j = 0; j < n; ++j)
        state[j] = h0 ? static_cast<acc_t>(h0[b * h0_sb + d0 + j]) : acc_t(0);
      const scalar_t* ap = cptr<scalar_t>(a) + b * a.sb + d0;
      const scalar_t* xp = cptr<scalar_t>(x) + b * x.sb + d0;
      scalar_t* hp = mptr<scalar_t>(h) + b * h.sb + d0;
      for (int64_t k = 0; k < L; ++k) {
        const int64_t t = reverse ? L - 1 - k : k;
        const scalar_t* __restrict__ ak = ap + t * a.st;
        const scalar_t* __restrict__ xk = xp + t * x.st;
        scalar_t* __restrict__ hk = hp + t * h.st;
        for (int64_t j = 0; j < n; ++j) {
          state[j] = scan_step<LEAKY, acc_t>(static_cast<acc_t>(ak[j]), static_cast<acc_t>(xk[j]),
                                             state[j]);
          hk[j] = static_cast<scalar_t>(state[j]);
        }
      }
      zero_tail(hp, h.st, L, T, n);
    }
  });
}

// One backward step over a block of n channels, branch-free so it vectorizes.
// PER_CHANNEL: the decay gradient is accumulated into `da_row` (float partial sums,
// one row per batch element, so tasks never share an accumulator and the sum is
// deterministic) instead of written per step.
template <typename scalar_t, bool LEAKY, bool PER_CHANNEL, typename hprev_t>
inline void bwd_step(int64_t n, const scalar_t* __restrict__ gk, const scalar_t* __restrict__ ak,
                     const scalar_t* __restrict__ xk, const hprev_t* __restrict__ hprev,
                     scalar_t* __restrict__ dxk, scalar_t* __restrict__ dak,
                     opmath_t<scalar_t>* __restrict__ da_row,
                     opmath_t<scalar_t>* __restrict__ carry) {
  using acc_t = opmath_t<scalar_t>;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t a = static_cast<acc_t>(ak[j]);
    const acc_t delta = static_cast<acc_t>(gk[j]) + carry[j];
    const acc_t x = LEAKY ? static_cast<acc_t>(xk[j]) : acc_t(0);
    dxk[j] = static_cast<scalar_t>(scan_grad_input<LEAKY, acc_t>(a, delta));
    const acc_t da = scan_grad_decay<LEAKY, acc_t>(delta, static_cast<acc_t>(hprev[j]), x);
    if constexpr (PER_CHANNEL)
      da_row[j] += da;
    else
      dak[j] = static_cast<scalar_t>(da);
    carry[j] = a * delta;
  }
}

template <typename scalar_t, bool LEAKY, bool PER_CHANNEL>
void bwd_kernel(int64_t B, int64_t T, int64_t D, BTDView g, BTDView a, BTDView x, BTDView h,
                const scalar_t* h0, int64_t h0_sb, BTDView dx, BTDView da,
                opmath_t<scalar_t>* da_rows, scalar_t* dh0, const int64_t* len, bool reverse) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t blk = channel_block(B, D);
  const int64_t nblk = (D + blk - 1) / blk;
  torch::stable::parallel_for(0, B * nblk, task_grain(T, blk), [&](int64_t begin, int64_t end) {
    std::array<acc_t, kMaxBlock> carry;
    std::array<acc_t, kMaxBlock> hinit;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk;
      const int64_t d0 = (task % nblk) * blk;
      const int64_t n = std::min(blk, D - d0);
      const int64_t L = row_len(len, b, T);
      for (int64_t j = 0; j < n; ++j) {
        carry[j] = acc_t(0);
        hinit[j] = h0 ? static_cast<acc_t>(h0[b * h0_sb + d0 + j]) : acc_t(0);
      }
      acc_t* row = PER_CHANNEL ? da_rows + b * D + d0 : nullptr;
      const scalar_t* gp = cptr<scalar_t>(g) + b * g.sb + d0;
      const scalar_t* ap = cptr<scalar_t>(a) + b * a.sb + d0;
      const scalar_t* xp = LEAKY ? cptr<scalar_t>(x) + b * x.sb + d0 : nullptr;
      const scalar_t* hp = cptr<scalar_t>(h) + b * h.sb + d0;
      scalar_t* dxp = mptr<scalar_t>(dx) + b * dx.sb + d0;
      scalar_t* dap = PER_CHANNEL ? nullptr : mptr<scalar_t>(da) + b * da.sb + d0;
      auto time = [&](int64_t k) { return reverse ? L - 1 - k : k; };
      auto step = [&](int64_t k, const auto* hprev) {
        const int64_t t = time(k);
        bwd_step<scalar_t, LEAKY, PER_CHANNEL>(
            n, gp + t * g.st, ap + t * a.st, LEAKY ? xp + t * x.st : nullptr, hprev,
            dxp + t * dx.st, PER_CHANNEL ? nullptr : dap + t * da.st, row, carry.data());
      };
      for (int64_t k = L - 1; k >= 1; --k) step(k, hp + time(k - 1) * h.st);
      if (L > 0) step(0, hinit.data());  // h_{-1} is the initial state
      for (int64_t j = 0; j < n; ++j) dh0[b * D + d0 + j] = static_cast<scalar_t>(carry[j]);
      zero_tail(dxp, dx.st, L, T, n);
      if constexpr (!PER_CHANNEL) zero_tail(dap, da.st, L, T, n);
    }
  });
}

struct CpuBackend {
  static Tensor empty_like(const Tensor& t) { return empty_like_cpu(t); }

  static void fwd(ScanFwd& f, bool reverse, bool leaky) {
    std::vector<int64_t> lens;
    if (f.lengths) lens = lengths_on_host("linear_scan/leaky_integrate", *f.lengths, f.T);
    const int64_t* len = f.lengths ? lens.data() : nullptr;
    dispatch_floating(f.x.scalar_type(), "scan_fwd_cpu", [&](auto dtype_tag) {
      using scalar_t = typename decltype(dtype_tag)::type;
      const auto* h0p = static_cast<const scalar_t*>(data_or_null(f.h0));
      auto run = [&](auto leaky_tag) {
        fwd_kernel<scalar_t, decltype(leaky_tag)::value>(f.B, f.T, f.D, btd_view(f.a, false),
                                                         btd_view(f.x, false), h0p, f.D,
                                                         btd_view(f.h, false), len, reverse);
      };
      if (leaky) run(std::true_type{}); else run(std::false_type{});
    });
  }

  static std::optional<Tensor> bwd(ScanBwd& p, bool reverse, bool leaky) {
    std::vector<int64_t> lens;
    if (p.lengths) lens = lengths_on_host("linear_scan/leaky_integrate backward", *p.lengths, p.T);
    const int64_t* len = p.lengths ? lens.data() : nullptr;
    std::optional<Tensor> da_rows;
    if (p.per_channel)
      da_rows = torch::stable::new_zeros(p.h, {p.B, p.D}, opmath_dtype(p.h.scalar_type()));
    dispatch_floating(p.h.scalar_type(), "scan_bwd_cpu", [&](auto dtype_tag) {
      using scalar_t = typename decltype(dtype_tag)::type;
      using acc_t = opmath_t<scalar_t>;
      const auto* h0p = static_cast<const scalar_t*>(data_or_null(p.h0));
      const BTDView xv = btd_view_or_null(p.x, false);
      const BTDView dav = btd_view_or_null(p.da, false);
      acc_t* rows = da_rows.has_value() ? static_cast<acc_t*>(da_rows->mutable_data_ptr()) : nullptr;
      auto run = [&](auto leaky_tag, auto per_channel_tag) {
        bwd_kernel<scalar_t, decltype(leaky_tag)::value, decltype(per_channel_tag)::value>(
            p.B, p.T, p.D, btd_view(p.g, false), btd_view(p.a, false), xv,
            btd_view(p.h, false), h0p, p.D, btd_view(p.dx, false), dav, rows,
            static_cast<scalar_t*>(p.dh0.mutable_data_ptr()), len, reverse);
      };
      auto with_leak = [&](auto per_channel_tag) {
        if (leaky) run(std::true_type{}, per_channel_tag); else run(std::false_type{}, per_channel_tag);
      };
      if (p.per_channel) with_leak(std::true_type{}); else with_leak(std::false_type{});
    });
    if (!da_rows.has_value()) return std::nullopt;
    return sum_rows_to(*da_rows, p.a.scalar_type());
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) { ScanOps<CpuBackend>::register_impls(m); }

HIDDEN_NAMESPACE_END(mts)
