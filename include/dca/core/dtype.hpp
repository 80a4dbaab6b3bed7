// dca/core/dtype.hpp — the element types a stored tensor may have (safetensors' dtypes). Computation
// is always float or double; a DType says how values are *stored*: in a file, and — through
// DecoderConfig::storage_dtype — in which precision a model's weights are saved. It lives in core
// rather than beside the safetensors reader so that a configuration can name one without pulling in
// the file format.
#pragma once

#include "dca/core/config.hpp"

#include <array>
#include <cstddef>
#include <optional>
#include <ostream>
#include <string_view>

namespace dca {

/// Element types of stored tensors. All are read; the safetensors writer stores every one of them.
enum class DType { f32, f64, bf16, f16, i64, i32 };

namespace detail {

struct DTypeInfo {
  std::string_view name;  // as spelled in a safetensors header
  std::size_t size;       // bytes per element
  bool floating;
};

// Indexed by DType.
inline constexpr std::array<DTypeInfo, 6> dtype_info{{
    {"F32", 4, true},
    {"F64", 8, true},
    {"BF16", 2, true},
    {"F16", 2, true},
    {"I64", 8, false},
    {"I32", 4, false},
}};

}  // namespace detail

/// The dtype's name in a safetensors header: "F32", "F64", "BF16", "F16", "I64" or "I32".
constexpr std::string_view to_string(DType dtype) { return detail::dtype_info[static_cast<std::size_t>(dtype)].name; }

/// The dtype a safetensors header names `name`, or nullopt for a dtype this library does not read.
constexpr std::optional<DType> dtype_from_string(std::string_view name) {
  for (std::size_t i = 0; i < detail::dtype_info.size(); ++i)
    if (detail::dtype_info[i].name == name) return static_cast<DType>(i);
  return std::nullopt;
}

/// Bytes per element.
constexpr std::size_t dtype_size(DType dtype) { return detail::dtype_info[static_cast<std::size_t>(dtype)].size; }

/// True for F32, F64, BF16 and F16 (read with SafeTensors::tensor); false for I64 and I32
/// (read with SafeTensors::integers).
constexpr bool is_floating_point(DType dtype) { return detail::dtype_info[static_cast<std::size_t>(dtype)].floating; }

/// The dtype that stores T without conversion: F32 for float, F64 for double.
template <Scalar T>
inline constexpr DType dtype_of = std::same_as<T, float> ? DType::f32 : DType::f64;

inline std::ostream& operator<<(std::ostream& out, DType dtype) { return out << to_string(dtype); }

}  // namespace dca
