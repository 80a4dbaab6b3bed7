// dca/io/safetensors.hpp — reading and writing safetensors, Hugging Face's tensor container:
//   [8-byte little-endian header length N][N bytes of JSON][data buffer]
// The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the start of the data buffer), plus an optional "__metadata__" string->string map.
// The reader validates every size, shape and offset when a file is opened, so no later access can
// leave the buffer; the writer lays tensors out as the reference implementation does and replaces
// files atomically.
//
// Longer than ~400 lines because the reader validates an untrusted file field by field (it is
// fuzzed) and shares the format's grammar — dtypes, conversions, header JSON — with the writer.
#pragma once

#include "dca/core/error.hpp"
#include "dca/io/atomic_file.hpp"
#include "dca/tensor/tensor.hpp"

#include <nlohmann/json.hpp>


#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <ostream>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace dca {

static_assert(std::endian::native == std::endian::little,
              "dca/io/safetensors.hpp copies the format's little-endian data straight into memory; a big-endian "
              "target needs byte swapping added to the reader and writer");

/// Element types of safetensors data. All are read; the writer stores F32, F64, BF16, I64 and I32.
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

/// One tensor of a safetensors file as its header describes it.
struct TensorEntry {
  std::string name;
  DType dtype;
  std::vector<index_t> shape;  // outermost first; empty for a scalar
  std::size_t begin, end;      // byte range in the data buffer (the header's data_offsets)

  /// Number of elements (1 for a scalar).
  index_t numel() const { return static_cast<index_t>((end - begin) / dtype_size(dtype)); }
};

namespace detail {

/// bfloat16 is the high half of a float, so widening is exact.
inline float bf16_to_float(std::uint16_t bits) { return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }

/// IEEE half -> float, exact for every value: subnormals become normal floats, inf stays inf and a
/// NaN keeps its sign and payload.
inline float f16_to_float(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1Fu;
  const std::uint32_t mantissa = bits & 0x3FFu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exactly representable in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
}

/// float -> bfloat16, rounding to nearest with ties to even (overflow gives inf; NaN stays NaN).
inline std::uint16_t float_to_bf16(float value) {
  const auto bits = std::bit_cast<std::uint32_t>(value);
  // Setting a quiet bit keeps a NaN whose payload lives only in the discarded half from becoming inf.
  if (std::isnan(value)) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  const std::uint32_t half_ulp = 0x7FFFu + ((bits >> 16) & 1u);  // one more when the kept half is odd: ties to even
  return static_cast<std::uint16_t>((bits + half_ulp) >> 16);
}

/// double -> bfloat16, rounding to nearest with ties to even. Rounding to float first and then to
/// bfloat16 would round twice (1 + 2^-8 + 2^-30 would become 1); rounding to float *to odd* keeps
/// which side of a bfloat16 midpoint the value lies on, so the second rounding is the correct one.
inline std::uint16_t double_to_bf16(double value) {
  float narrowed = static_cast<float>(value);
  if (!std::isnan(value) && static_cast<double>(narrowed) != value) {
    auto bits = std::bit_cast<std::uint32_t>(narrowed);
    if ((bits & 1u) == 0) bits = std::abs(static_cast<double>(narrowed)) < std::abs(value) ? bits + 1 : bits - 1;
    narrowed = std::bit_cast<float>(bits);
  }
  return float_to_bf16(narrowed);
}

/// Decodes the little-endian elements of type Stored in `in` (any alignment) into `out`.
template <class Stored, class Out, class Convert>
void decode(std::span<const std::byte> in, Out* out, Convert convert) {
  const std::size_t count = in.size() / sizeof(Stored);
  for (std::size_t i = 0; i < count; ++i) {
    Stored stored;
    std::memcpy(&stored, in.data() + i * sizeof(Stored), sizeof(Stored));
    out[i] = static_cast<Out>(convert(stored));
  }
}

/// Encodes `values` as little-endian elements of type Stored.
template <class Stored, class In, class Convert>
std::vector<std::byte> encode(std::span<const In> values, Convert convert) {
  std::vector<std::byte> out(values.size() * sizeof(Stored));
  for (std::size_t i = 0; i < values.size(); ++i) {
    const Stored stored = convert(values[i]);
    std::memcpy(out.data() + i * sizeof(Stored), &stored, sizeof(Stored));
  }
  return out;
}

// The reference implementation's limit: a real header is a few hundred bytes per tensor, so a
// larger one is corruption, and parsing it would cost memory.
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

// The deepest JSON a valid header has: header object > tensor object > shape array > extent.
// Refusing deeper nesting while parsing bounds the memory a hostile header can make us allocate.
inline constexpr int max_header_depth = 3;

// How a JSON value is described in a message: its type, and its text if that is short.
inline std::string describe(const nlohmann::json& value) {
  if (value.is_number() || value.is_boolean()) return concat(value.type_name(), " ", value.dump());
  return value.type_name();
}

// Parses the header's JSON. nlohmann keeps the last of repeated keys silently, so repeats are
// caught here: two tensors under one name would make the file ambiguous.
inline nlohmann::json parse_header(std::string_view text, const std::string& source) {
  using Event = nlohmann::json::parse_event_t;
  std::vector<std::set<std::string, std::less<>>> open_objects;
  const auto check = [&](int depth, Event event, nlohmann::json& parsed) {
    if (depth > max_header_depth)
      fail<FormatError>(source, ": the header nests JSON deeper than a safetensors header can (", max_header_depth,
                        " levels)");
    if (event == Event::object_start) open_objects.emplace_back();
    if (event == Event::object_end) open_objects.pop_back();
    if (event == Event::key && !open_objects.back().insert(parsed.get_ref<const std::string&>()).second) {
      if (open_objects.size() == 1)
        fail<FormatError>(source, ": tensor \"", parsed.get_ref<const std::string&>(),
                          "\" appears twice in the header");
      fail<FormatError>(source, ": key \"", parsed.get_ref<const std::string&>(),
                        "\" appears twice in one object of the header");
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), check);
  } catch (const nlohmann::json::exception& error) {  // parse_error, or out_of_range for a number like 1e400
    fail<FormatError>(source, ": the header is not valid JSON: ", error.what());
  }
}

// A JSON value that must be a non-negative integer (an extent or an offset).
inline std::uint64_t json_count(const nlohmann::json& value, const std::string& what) {
  if (value.is_number_unsigned()) return value.get<std::uint64_t>();
  if (value.is_number_integer()) fail<FormatError>(what, " is negative (", value.get<std::int64_t>(), ")");
  fail<FormatError>(what, " must be a non-negative integer, got ", describe(value));
}

// Validates one tensor's header entry against the dtype table and a data buffer of `data_size` bytes.
inline TensorEntry parse_entry(const std::string& name, const nlohmann::json& info, std::uint64_t data_size,
                               const std::string& source) {
  const std::string where = concat(source, ": tensor \"", name, "\"");
  if (!info.is_object())
    fail<FormatError>(where, ": expected an object with dtype, shape and data_offsets, got ", describe(info));
  const auto field = [&](const char* key) -> const nlohmann::json& {
    const auto it = info.find(key);
    if (it == info.end()) fail<FormatError>(where, ": missing \"", key, "\"");
    return *it;
  };

  const nlohmann::json& dtype_name = field("dtype");
  if (!dtype_name.is_string()) fail<FormatError>(where, ": \"dtype\" must be a string, got ", describe(dtype_name));
  const std::optional<DType> dtype = dtype_from_string(dtype_name.get_ref<const std::string&>());
  if (!dtype)
    fail<FormatError>(where, ": unsupported dtype ", dtype_name.dump(), " (supported: F32, F64, BF16, F16, I64, I32)");

  const nlohmann::json& shape_json = field("shape");
  if (!shape_json.is_array()) fail<FormatError>(where, ": \"shape\" must be an array, got ", describe(shape_json));
  std::vector<index_t> shape;
  shape.reserve(shape_json.size());  // bounded by the header's size, already checked
  // The product of the non-zero extents must fit index_t, even when a zero makes the tensor empty:
  // code downstream multiplies extents in any order (Shape::rows, strides) without checking.
  constexpr auto max_numel = static_cast<std::uint64_t>(std::numeric_limits<index_t>::max());
  std::uint64_t nonzero_product = 1;
  bool empty = false;
  for (std::size_t axis = 0; axis < shape_json.size(); ++axis) {
    const std::uint64_t extent = json_count(shape_json[axis], concat(where, ": shape[", axis, "]"));
    if (extent != 0 && nonzero_product > max_numel / extent)
      fail<FormatError>(where, ": the extents of shape ", shape_json.dump(), " multiply beyond the index range");
    nonzero_product *= extent == 0 ? 1 : extent;
    empty = empty || extent == 0;
    shape.push_back(static_cast<index_t>(extent));
  }
  const std::uint64_t numel = empty ? 0 : nonzero_product;
  const std::size_t element_size = dtype_size(*dtype);
  if (numel > std::numeric_limits<std::uint64_t>::max() / element_size)
    fail<FormatError>(where, ": the byte size of shape ", shape_json.dump(), " of ", *dtype, " overflows");
  const std::uint64_t size = numel * element_size;

  const nlohmann::json& offsets = field("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2)
    fail<FormatError>(where, ": \"data_offsets\" must be an array [begin, end], got ",
                      offsets.is_array() ? offsets.dump() : describe(offsets));
  const std::uint64_t begin = json_count(offsets[0], concat(where, ": data_offsets[0]"));
  const std::uint64_t end = json_count(offsets[1], concat(where, ": data_offsets[1]"));
  if (begin > end) fail<FormatError>(where, ": data_offsets [", begin, ", ", end, "] end before they begin");
  if (end > data_size)
    fail<FormatError>(where, ": data_offsets [", begin, ", ", end, "] reach beyond the data buffer of ", data_size,
                      " bytes");
  if (end - begin != size)
    fail<FormatError>(where, ": shape ", shape_json.dump(), " of ", *dtype, " needs ", size,
                      " bytes, but data_offsets [", begin, ", ", end, "] hold ", end - begin);
  return {name, *dtype, std::move(shape), static_cast<std::size_t>(begin), static_cast<std::size_t>(end)};
}

// Rejects a string JSON cannot hold (invalid UTF-8) when it is added, rather than when the header
// is serialised, so the message can name it.
inline void require_utf8(const std::string& text, const char* what) {
  try {
    (void)nlohmann::json(text).dump();
  } catch (const nlohmann::json::type_error&) {
    fail<UsageError>("SafeTensorsWriter: ", what, " is not valid UTF-8, which a JSON header cannot hold");
  }
}

}  // namespace detail

/// A safetensors file held in memory. Every dtype, shape, offset and size in the header is
/// validated when the file is opened; a malformed file throws FormatError with a message naming
/// the file (or "safetensors buffer"), the tensor and the values involved.
///
/// Accepted beyond the letter of the format: bytes between tensors or after the last one (the
/// reference implementation rejects them; nothing here depends on contiguity) and extra keys in a
/// tensor's entry. Rejected: everything else that is not well formed, including overlapping
/// tensors, a key repeated within one JSON object, JSON nested deeper than a header needs, shapes
/// whose non-zero extents multiply beyond index_t, and headers over 100 MB.
class SafeTensors {
 public:
  /// Reads and validates the file at `path`. IoError if the OS cannot read it; FormatError if it
  /// is not a valid safetensors file.
  static SafeTensors read(const std::filesystem::path& path) {
    return SafeTensors(read_file(path), detail::concat("safetensors file ", path));
  }

  /// Validates a whole safetensors file held in `bytes` (length prefix included) and keeps it.
  /// FormatError if it is not valid.
  static SafeTensors parse(std::vector<std::byte> bytes) { return SafeTensors(std::move(bytes), "safetensors buffer"); }

  /// Whether the file holds a tensor called `name`.
  bool contains(std::string_view name) const { return index_.find(name) != index_.end(); }

  /// Every tensor's name, in the order of the data (ascending offsets).
  std::vector<std::string> names() const {
    std::vector<std::string> names;
    names.reserve(entries_.size());
    for (const TensorEntry& e : entries_) names.push_back(e.name);
    return names;
  }

  /// Every tensor's header entry, in the order of the data (ascending offsets).
  std::span<const TensorEntry> entries() const { return entries_; }

  /// The header entry of tensor `name`; FormatError naming it if the file has no such tensor.
  const TensorEntry& entry(std::string_view name) const {
    const auto it = index_.find(name);
    if (it == index_.end())
      detail::fail<FormatError>(source_, ": no tensor named \"", name, "\" (the file holds ", entries_.size(),
                                " tensors)");
    return entries_[it->second];
  }

  /// Tensor `name` as T. F32, F64, BF16 and F16 data convert exactly when T can hold every value,
  /// which is always so except for F64 data read as float: that narrows, rounding to nearest.
  /// FormatError if the tensor is missing, holds integers, or has a rank above Shape::max_rank.
  template <Scalar T>
  Tensor<T> tensor(std::string_view name) const {
    const TensorEntry& e = entry(name);
    if (!is_floating_point(e.dtype))
      detail::fail<FormatError>(source_, ": tensor \"", name, "\" holds ", e.dtype, " integers; it cannot be read as ",
                                dtype_of<T>, " (read it with integers())");
    if (e.shape.size() > static_cast<std::size_t>(Shape::max_rank))
      detail::fail<FormatError>(source_, ": tensor \"", name, "\" has rank ", e.shape.size(),
                                ", above the maximum rank ", Shape::max_rank, " of a Tensor");
    Tensor<T> result{Shape(std::span<const index_t>(e.shape))};
    const std::span<const std::byte> data = data_of(e);
    const auto same = [](auto value) { return value; };
    switch (e.dtype) {
      case DType::f32:
        detail::decode<float>(data, result.data(), same);
        break;
      case DType::f64:
        detail::decode<double>(data, result.data(), same);
        break;
      case DType::bf16:
        detail::decode<std::uint16_t>(data, result.data(), detail::bf16_to_float);
        break;
      case DType::f16:
        detail::decode<std::uint16_t>(data, result.data(), detail::f16_to_float);
        break;
      case DType::i64:
      case DType::i32:
        break;  // rejected above
    }
    return result;
  }

  /// Tensor `name`'s I64 or I32 elements, flattened row-major (the shape is in entry(name)).
  /// FormatError if the tensor is missing or holds floating-point values.
  std::vector<std::int64_t> integers(std::string_view name) const {
    const TensorEntry& e = entry(name);
    if (is_floating_point(e.dtype))
      detail::fail<FormatError>(source_, ": tensor \"", name, "\" holds ", e.dtype,
                                " values; it cannot be read as I64 integers (read it with tensor<T>())");
    std::vector<std::int64_t> values(static_cast<std::size_t>(e.numel()));
    const std::span<const std::byte> data = data_of(e);
    const auto widen = [](auto value) { return static_cast<std::int64_t>(value); };
    if (e.dtype == DType::i64) detail::decode<std::int64_t>(data, values.data(), widen);
    if (e.dtype == DType::i32) detail::decode<std::int32_t>(data, values.data(), widen);
    return values;
  }

  /// The header's "__metadata__" map (empty if it has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// `safetensors file "<path>"` or `safetensors buffer`: how messages name this file, for callers
  /// reporting their own errors about it (a checkpoint missing a parameter, ...).
  const std::string& source() const { return source_; }

 private:
  SafeTensors(std::vector<std::byte> bytes, std::string source) : source_(std::move(source)), bytes_(std::move(bytes)) {
    using detail::fail;
    if (bytes_.size() < 8)
      fail<FormatError>(source_, ": ", bytes_.size(), " bytes is too short for the 8-byte header length");
    std::uint64_t header_size;
    std::memcpy(&header_size, bytes_.data(), 8);
    if (header_size > detail::max_header_bytes)
      fail<FormatError>(source_, ": header length ", header_size, " exceeds the limit of ", detail::max_header_bytes,
                        " bytes");
    if (header_size > bytes_.size() - 8)
      fail<FormatError>(source_, ": header length ", header_size, " exceeds the ", bytes_.size() - 8,
                        " bytes after the length prefix");
    data_start_ = 8 + static_cast<std::size_t>(header_size);
    const std::uint64_t data_size = bytes_.size() - data_start_;

    const nlohmann::json header =
        detail::parse_header({reinterpret_cast<const char*>(bytes_.data()) + 8, data_start_ - 8}, source_);
    if (!header.is_object())
      fail<FormatError>(source_, ": the header must be a JSON object, got ", detail::describe(header));
    for (const auto& [name, info] : header.items()) {
      if (name == "__metadata__")
        read_metadata(info);
      else
        entries_.push_back(detail::parse_entry(name, info, data_size, source_));
    }

    std::sort(entries_.begin(), entries_.end(), [](const TensorEntry& a, const TensorEntry& b) {
      return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
    });
    for (std::size_t i = 1; i < entries_.size(); ++i) {
      const TensorEntry& before = entries_[i - 1];
      const TensorEntry& after = entries_[i];
      if (after.begin < before.end)
        fail<FormatError>(source_, ": tensors \"", before.name, "\" (data_offsets [", before.begin, ", ", before.end,
                          "]) and \"", after.name, "\" (data_offsets [", after.begin, ", ", after.end, "]) overlap");
    }
    for (std::size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].name, i);
  }

  void read_metadata(const nlohmann::json& info) {
    if (!info.is_object())
      detail::fail<FormatError>(source_, ": \"__metadata__\" must be an object of strings, got ",
                                detail::describe(info));
    for (const auto& [key, value] : info.items()) {
      if (!value.is_string())
        detail::fail<FormatError>(source_, ": metadata \"", key, "\" must be a string, got ", detail::describe(value));
      metadata_.emplace(key, value.get<std::string>());
    }
  }

  std::span<const std::byte> data_of(const TensorEntry& e) const {
    return {bytes_.data() + data_start_ + e.begin, e.end - e.begin};
  }

  std::string source_;
  std::vector<std::byte> bytes_;                           // the whole file
  std::size_t data_start_ = 0;                             // where the data buffer begins in bytes_
  std::vector<TensorEntry> entries_;                       // sorted by offset
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in entries_
  std::map<std::string, std::string> metadata_;
};

/// Builds a safetensors file. Tensors are copied (and converted) when added, so the data passed
/// in need not outlive the writer. Like the reference implementation, the writer lays tensors out
/// by element size (largest first), then by name, and pads the header with spaces to a multiple of
/// 8 bytes, so every tensor's data is aligned to its element size.
class SafeTensorsWriter {
 public:
  /// Adds a floating-point tensor stored as F32, F64 or BF16. Narrowing (double to F32, anything to
  /// BF16) rounds to nearest, ties to even, directly from the source value. UsageError for another
  /// dtype, a name already added or the reserved name "__metadata__".
  template <Scalar T>
  void add(std::string name, TensorView<const T> tensor, DType stored_as = dtype_of<T>) {
    check_name(name);
    const std::span<const T> values = tensor.span();
    std::vector<std::byte> data;
    if (stored_as == DType::f32)
      data = detail::encode<float>(values, [](T v) { return static_cast<float>(v); });
    else if (stored_as == DType::f64)
      data = detail::encode<double>(values, [](T v) { return static_cast<double>(v); });
    else if (stored_as == DType::bf16)
      data = detail::encode<std::uint16_t>(values, [](T v) { return to_bf16(v); });
    else
      detail::fail<UsageError>("SafeTensorsWriter::add: tensor \"", name, "\" cannot be stored as ", stored_as,
                               " (floating-point tensors are stored as F32, F64 or BF16)");
    const auto extents = tensor.shape().extents();
    insert({std::move(name), stored_as, {extents.begin(), extents.end()}, std::move(data)});
  }
  template <Scalar T>
  void add(std::string name, const Tensor<T>& tensor, DType stored_as = dtype_of<T>) {
    add(std::move(name), tensor.view(), stored_as);
  }

  /// Adds an integer tensor of the given shape (row-major `values`) stored as I64 or I32.
  /// ShapeError if the shape has a negative extent or does not hold values.size() elements;
  /// RangeError if a value does not fit I32; UsageError as for add().
  void add_integers(std::string name, std::span<const std::int64_t> values, std::vector<index_t> shape,
                    DType stored_as = DType::i64) {
    check_name(name);
    if (stored_as != DType::i64 && stored_as != DType::i32)
      detail::fail<UsageError>("SafeTensorsWriter::add_integers: tensor \"", name, "\" cannot be stored as ", stored_as,
                               " (integer tensors are stored as I64 or I32)");
    std::size_t numel = 1;
    bool overflow = false;
    for (std::size_t axis = 0; axis < shape.size(); ++axis) {
      if (shape[axis] < 0)
        detail::fail<ShapeError>("SafeTensorsWriter::add_integers: tensor \"", name, "\": extent ", shape[axis],
                                 " at axis ", axis, " is negative");
      const auto extent = static_cast<std::size_t>(shape[axis]);
      overflow = overflow || (extent != 0 && numel > std::numeric_limits<std::size_t>::max() / extent);
      numel *= extent;
    }
    if (overflow || numel != values.size())
      detail::fail<ShapeError>("SafeTensorsWriter::add_integers: tensor \"", name, "\": shape ",
                               nlohmann::json(shape).dump(), " does not hold ", values.size(), " values");
    std::vector<std::byte> data;
    if (stored_as == DType::i64) data = detail::encode<std::int64_t>(values, [](std::int64_t v) { return v; });
    if (stored_as == DType::i32) {
      for (std::size_t i = 0; i < values.size(); ++i)
        if (values[i] < std::numeric_limits<std::int32_t>::min() ||
            values[i] > std::numeric_limits<std::int32_t>::max())
          detail::fail<RangeError>("SafeTensorsWriter::add_integers: tensor \"", name, "\": value ", values[i],
                                   " at index ", i, " does not fit I32");
      data = detail::encode<std::int32_t>(values, [](std::int64_t v) { return static_cast<std::int32_t>(v); });
    }
    insert({std::move(name), stored_as, std::move(shape), std::move(data)});
  }

  /// Sets (or replaces) a "__metadata__" entry.
  void set_metadata(std::string key, std::string value) {
    detail::require_utf8(key, "a metadata key");
    detail::require_utf8(value, "a metadata value");
    metadata_.insert_or_assign(std::move(key), std::move(value));
  }

  /// The complete file.
  std::vector<std::byte> bytes() const {
    std::vector<const Pending*> order;
    for (const Pending& p : tensors_) order.push_back(&p);
    std::sort(order.begin(), order.end(), [](const Pending* a, const Pending* b) {
      const std::size_t a_size = dtype_size(a->dtype), b_size = dtype_size(b->dtype);
      return a_size != b_size ? a_size > b_size : a->name < b->name;
    });

    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const Pending* p : order) {
      header[p->name] = {{"dtype", std::string(to_string(p->dtype))},
                         {"shape", p->shape},
                         {"data_offsets", {offset, offset + p->data.size()}}};
      offset += p->data.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');

    std::vector<std::byte> file(8 + text.size() + offset);
    const std::uint64_t header_size = text.size();
    std::memcpy(file.data(), &header_size, 8);
    std::memcpy(file.data() + 8, text.data(), text.size());
    std::byte* data = file.data() + 8 + text.size();
    for (const Pending* p : order) data = std::copy(p->data.begin(), p->data.end(), data);
    return file;
  }

  /// Writes the file atomically: it is written to a temporary file beside `path`, flushed to the
  /// device and renamed over `path`, so `path` holds the old file or the complete new one, never a
  /// prefix, even after a crash. IoError on failure, leaving `path` untouched and no temporary file.
  void write(const std::filesystem::path& path) const { write_file_atomically(path, bytes()); }

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<index_t> shape;
    std::vector<std::byte> data;  // encoded
  };

  static std::uint16_t to_bf16(float v) { return detail::float_to_bf16(v); }
  static std::uint16_t to_bf16(double v) { return detail::double_to_bf16(v); }

  void check_name(const std::string& name) const {
    if (name == "__metadata__")
      detail::fail<UsageError>(
          "SafeTensorsWriter: \"__metadata__\" is reserved for the metadata map, not a tensor name");
    if (names_.contains(name)) detail::fail<UsageError>("SafeTensorsWriter: tensor \"", name, "\" was already added");
    detail::require_utf8(name, "a tensor name");
  }

  void insert(Pending pending) {
    names_.insert(pending.name);
    tensors_.push_back(std::move(pending));
  }

  std::vector<Pending> tensors_;  // in the order added
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace dca
