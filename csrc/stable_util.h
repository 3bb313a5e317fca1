#pragma once
// Helpers for host code written against torch's stable ABI (torch/csrc/stable and
// torch/headeronly only), shared by every op ported to it: argument-check
// formatting, per-dtype dispatch, tensor layout helpers and the current CUDA
// stream. Such files must never include ATen, c10 or torch/library.h: the stable
// ABI is what lets one binary load under every torch from TORCH_TARGET_VERSION on.
#ifndef TORCH_TARGET_VERSION
// Without a target the stable headers offer whatever the building torch has, and
// the binary could call shim functions older torch releases lack (setup.py passes
// the target to exactly the files that include this header).
#error "stable-ABI sources must be compiled with -DTORCH_TARGET_VERSION (see setup.py)"
#endif

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Exception.h>
#include <torch/headeronly/util/Half.h>
#include <torch/headeronly/util/shim_utils.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <iterator>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

// Hidden like torch::stable itself: types holding a torch::stable::Tensor must be
// at least as hidden, and no two extensions built against different torch headers
// can then bind each other's inline helpers.
HIDDEN_NAMESPACE_BEGIN(mts)

using torch::headeronly::ScalarType;
using torch::stable::Device;
using torch::stable::Tensor;
using IntRef = torch::headeronly::IntHeaderOnlyArrayRef;

// ---------------------------------------------------------------- messages

namespace detail {
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// TORCH_CHECK of the regular API. STD_TORCH_CHECK would prefix every message with
// the function, file and line, which TORCH_CHECK's messages (what Python shows)
// never had; the op boundary turns the std::runtime_error into a RuntimeError.
#define MTS_CHECK(cond, ...)                                                \
  do {                                                                      \
    if (!(cond)) throw std::runtime_error(::mts::detail::cat(__VA_ARGS__)); \
  } while (0)

// What c10 prints for an IntArrayRef ("[2, 5, 3]") and a Device ("cuda:0"), so
// messages read as they did; as strings because the stable types have no operator<<.
inline std::string shape_str(IntRef sizes) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  os << ']';
  return os.str();
}

inline std::string device_str(const Device& d) {
  // c10::DeviceTypeName, lower case, indexed by DeviceType.
  static constexpr const char* kNames[] = {
      "cpu",  "cuda",   "mkldnn", "opengl", "opencl", "ideep", "hip",
      "fpga", "maia",   "xla",    "vulkan", "metal",  "xpu",   "mps",
      "meta", "hpu",    "ve",     "lazy",   "ipu",    "mtia",  "privateuseone"};
  const int type = static_cast<int>(d.type());
  // A stream, not string concatenation: GCC 12 at -O3 raises a false -Wrestrict
  // on `s += ":" + std::to_string(i)` once this is inlined into a caller.
  std::ostringstream os;
  if (type >= 0 && type < static_cast<int>(std::size(kNames)))
    os << kNames[type];
  else
    os << "device_type_" << type;
  if (d.index() >= 0) os << ':' << static_cast<int>(d.index());
  return os.str();
}

// a == b for sizes (torch 2.11's headers give IntHeaderOnlyArrayRef no operator==).
inline bool same_sizes(IntRef a, IntRef b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// ---------------------------------------------------------------- dtypes

// The dtypes the kernels are written for (at::isFloatingType minus the float8
// formats, which no kernel here implements).
inline bool is_kernel_float(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half ||
         t == ScalarType::BFloat16;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// at::opmath_type: reduced-precision types compute in float.
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<torch::headeronly::Half> {
  using type = float;
};
template <>
struct OpMath<torch::headeronly::BFloat16> {
  using type = float;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

inline ScalarType opmath_dtype(ScalarType t) {
  return (t == ScalarType::Half || t == ScalarType::BFloat16) ? ScalarType::Float : t;
}

// AT_DISPATCH_FLOATING_TYPES_AND2(kHalf, kBFloat16, t, name, ...) of the regular
// API: calls f(TypeTag<scalar_t>{}) for the C++ type of `t`, e.g.
//   dispatch_floating(t, "op", [&](auto tag) { using scalar_t = typename decltype(tag)::type; });
// Same error as AT_DISPATCH for any other dtype.
template <typename F>
decltype(auto) dispatch_floating(ScalarType t, const char* name, F&& f) {
  switch (t) {
    case ScalarType::Float: return f(TypeTag<float>{});
    case ScalarType::Double: return f(TypeTag<double>{});
    case ScalarType::Half: return f(TypeTag<torch::headeronly::Half>{});
    case ScalarType::BFloat16: return f(TypeTag<torch::headeronly::BFloat16>{});
    default: break;
  }
  throw std::runtime_error(detail::cat('"', name, "\" not implemented for '", t, "'"));
}

// ---------------------------------------------------------------- layout

// c10's TensorImpl::is_non_overlapping_and_dense, which the stable Tensor does
// not expose: some permutation of the dims is contiguous (size-1 dims ignored).
inline bool is_non_overlapping_and_dense(IntRef sizes, IntRef strides) {
  const size_t dim = sizes.size();
  if (dim == 1) return sizes[0] < 2 || strides[0] == 1;
  std::vector<size_t> perm(dim);
  std::iota(perm.begin(), perm.end(), size_t(0));
  std::sort(perm.begin(), perm.end(), [&](size_t a, size_t b) {
    if (sizes[a] < 2) return false;
    if (sizes[b] < 2) return true;
    return strides[a] < strides[b];
  });
  int64_t require = 1;
  for (size_t i : perm) {
    if (sizes[i] < 2) return true;
    if (strides[i] != require) return false;
    require *= sizes[i];
  }
  return true;
}

inline std::vector<int64_t> contiguous_strides(IntRef sizes) {
  std::vector<int64_t> strides(sizes.size());
  int64_t s = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    strides[i] = s;
    s *= std::max<int64_t>(sizes[i], 1);
  }
  return strides;
}

// The strides at::empty_like(t) gives its result (memory_format=preserve, for
// tensors without a channels-last layout): t's own when t is non-overlapping and
// dense, else contiguous. For allocators that must build the tensor themselves.
inline std::vector<int64_t> empty_like_strides(const Tensor& t) {
  const IntRef sizes = t.sizes(), strides = t.strides();
  if (is_non_overlapping_and_dense(sizes, strides))
    return std::vector<int64_t>(strides.begin(), strides.end());
  return contiguous_strides(sizes);
}

// t.contiguous(). torch::stable::contiguous is a boxed dispatcher call (about a
// microsecond) even for a tensor that already is; is_contiguous is a plain getter.
inline Tensor as_contiguous(const Tensor& t) {
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

// ---------------------------------------------------------------- argument checks

// A tensor's data as T (the kernels' raw-pointer view of their operands).
template <typename T>
const T* ptr(const Tensor& t) {
  return static_cast<const T*>(t.const_data_ptr());
}
template <typename T>
T* mut(const Tensor& t) {
  return static_cast<T*>(t.mutable_data_ptr());
}

// The leading (T, B, H) operand of a recurrence kernel: 3-D, floating point, on
// a `device` device, with at least one step. Returns {T, B, H}.
inline std::array<int64_t, 3> check_sequence(const char* op, const char* lead, const Tensor& x,
                                             torch::headeronly::DeviceType device) {
  MTS_CHECK(x.dim() == 3, op, ": ", lead, " must be 3-D (T, B, H), got shape ", shape_str(x.sizes()));
  MTS_CHECK(is_kernel_float(x.scalar_type()), op, ": ", lead, " must be floating point, got ",
            torch::headeronly::toString(x.scalar_type()));
  MTS_CHECK(x.device().type() == device, op, ": ", lead, " must be a ",
            device == torch::headeronly::DeviceType::CPU ? "CPU" : "CUDA", " tensor, got ",
            device_str(x.device()));
  MTS_CHECK(x.size(0) > 0, op, ": ", lead, " needs at least one time step");
  return {x.size(0), x.size(1), x.size(2)};
}
inline std::array<int64_t, 3> check_cpu_sequence(const char* op, const char* lead, const Tensor& x) {
  return check_sequence(op, lead, x, torch::headeronly::DeviceType::CPU);
}

// Another operand of the same call: `shape`, and x's dtype and device.
inline void check_operand(const char* op, const char* name, const Tensor& t, IntRef shape, const Tensor& x) {
  MTS_CHECK(same_sizes(t.sizes(), shape), op, ": ", name, " must have shape ", shape_str(shape), ", got ",
            shape_str(t.sizes()));
  MTS_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(), op, ": ", name, " must be ",
            torch::headeronly::toString(x.scalar_type()), " on ", device_str(x.device()), ", got ",
            torch::headeronly::toString(t.scalar_type()), " on ", device_str(t.device()));
}

// A backward operand read with x's element type and layout (grad_h, saved
// outputs): `shape`, x's dtype and device, in one message; `when` qualifies it.
inline void check_like(const char* op, const char* name, const Tensor& t, IntRef shape, const Tensor& x,
                       const char* when = "") {
  MTS_CHECK(same_sizes(t.sizes(), shape) && t.scalar_type() == x.scalar_type() && t.device() == x.device(),
            op, ": ", name, " must be ", torch::headeronly::toString(x.scalar_type()), " of shape ",
            shape_str(shape), " on ", device_str(x.device()), when, ", got ",
            torch::headeronly::toString(t.scalar_type()), " of shape ", shape_str(t.sizes()), " on ",
            device_str(t.device()));
}

// ---------------------------------------------------------------- other ops

// An aten op the stable ops do not wrap, through the boxed dispatcher, e.g.
// call_aten("aten::mul", "Tensor", a, b). Every argument of the schema must be
// given (no defaults), as a type the stable ABI carries (tensors, ints, bools,
// int lists, optionals, strings; no Scalar). Returns the op's first output.
template <typename... Args>
Tensor call_aten(const char* name, const char* overload, const Args&... args) {
  std::array<StableIValue, sizeof...(Args)> stack{torch::stable::detail::from(args)...};
  TORCH_ERROR_CODE_CHECK(torch_call_dispatcher(name, overload, stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

// ---------------------------------------------------------------- CUDA

#if defined(USE_CUDA)
// c10::cuda::getCurrentCUDAStream(index).stream(), as a void* so that this header
// needs no CUDA include (cast it to cudaStream_t). The accelerator API's Stream
// only exposes its native handle from torch 2.13 on; this shim call is older.
inline void* current_cuda_stream(int32_t device_index) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream));
  return stream;
}
#endif

HIDDEN_NAMESPACE_END(mts)
