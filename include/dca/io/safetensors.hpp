// dca/io/safetensors.hpp — reading and writing safetensors, Hugging Face's tensor container:
//   [8-byte little-endian header length N][N bytes of JSON][data buffer]
// The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the start of the data buffer), plus an optional "__metadata__" string->string map.
// The reader memory-maps a file (or takes a buffer) and validates every size, shape and offset when
// it is opened, so no later access can leave the bytes; it converts tensors part by part, straight
// into the caller's memory if asked (read_into), handing converted pages of a file back to the OS.
// The writer lays tensors out as the reference implementation does and replaces files atomically.
// Dtypes themselves: dca/core/dtype.hpp; shards and their index: dca/io/sharded_safetensors.hpp.
//
// Longer than ~400 lines because the reader validates an untrusted file field by field (it is
// fuzzed) and shares the format's grammar — dtypes, conversions, header JSON — with the writer.
#pragma once

#include "dca/core/dtype.hpp"
#include "dca/core/error.hpp"
#include "dca/io/atomic_file.hpp"
#include "dca/io/mapped_file.hpp"
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
#include <memory>
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

/// double -> float rounded *to odd*: truncated towards zero, then given an odd last bit if anything
/// was cut off. Rounding that float again to a format at least two bits narrower gives the same
/// result as rounding the double directly, because the odd bit keeps which side of a midpoint the
/// value lies on (rounding to nearest float first would round twice: 1 + 2^-8 + 2^-30 would land
/// on the bfloat16 midpoint 1 + 2^-8 and then round to 1). Overflow gives FLT_MAX, which still
/// rounds to infinity in bfloat16 and half.
inline float double_to_float_odd(double value) {
  float narrowed = static_cast<float>(value);
  if (!std::isnan(value) && static_cast<double>(narrowed) != value) {
    auto bits = std::bit_cast<std::uint32_t>(narrowed);
    if ((bits & 1u) == 0) bits = std::abs(static_cast<double>(narrowed)) < std::abs(value) ? bits + 1 : bits - 1;
    narrowed = std::bit_cast<float>(bits);
  }
  return narrowed;
}

/// double -> bfloat16, rounding to nearest with ties to even, directly from the double.
inline std::uint16_t double_to_bf16(double value) { return float_to_bf16(double_to_float_odd(value)); }

/// float -> IEEE half, rounding to nearest with ties to even: from 65520 (the midpoint between the
/// largest half, 65504, and 2^16) a value becomes infinity, below 2^-25 it becomes a signed zero,
/// and a NaN stays a NaN (quieted, keeping the top of its payload).
inline std::uint16_t float_to_f16(float value) {
  const auto bits = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7FFFFFFFu;
  const auto rounded = [](std::uint32_t kept, std::uint32_t rest, std::uint32_t half) {
    return kept + ((rest > half || (rest == half && (kept & 1u) != 0)) ? 1u : 0u);  // a carry moves into the exponent, as it should
  };
  if (magnitude > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u | ((magnitude >> 13) & 0x3FFu));
  if (magnitude >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // 65520 and above, inf
  if (magnitude >= 0x38800000u)  // a normal half (from 2^-14): rebias the exponent by 127 - 15, keep 10 mantissa bits
    return static_cast<std::uint16_t>(sign | rounded((magnitude - 0x38000000u) >> 13, magnitude & 0x1FFFu, 0x1000u));
  // A subnormal half counts units of 2^-24; the float is m·2^(e-150) with m's implicit bit set, so
  // it holds m >> (126 - e) units. Below 2^-25 (e < 102) that rounds to zero, and the shift would be 25 or more.
  const std::uint32_t exponent = magnitude >> 23;
  if (exponent < 102) return sign;
  const std::uint32_t mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
  const std::uint32_t shift = 126 - exponent;  // 14 to 24
  return static_cast<std::uint16_t>(
      sign | rounded(mantissa >> shift, mantissa & ((1u << shift) - 1u), 1u << (shift - 1u)));
}

/// double -> IEEE half, rounding to nearest with ties to even, directly from the double.
inline std::uint16_t double_to_f16(double value) { return float_to_f16(double_to_float_odd(value)); }

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

/// A NaN or infinite element of a stored tensor (SafeTensors::first_non_finite): its row-major
/// index and its stored value, which is finite when only the conversion overflows.
struct NonFiniteElement {
  index_t index;
  double stored;
};

/// A safetensors file, memory-mapped (`read`) or held in memory (`parse`). Every dtype, shape,
/// offset and size in the header is validated when the file is opened — the same code for both —
/// and a malformed file throws FormatError with a message naming the file (or "safetensors
/// buffer"), the tensor and the values involved.
///
/// A mapped file costs memory only for the pages being converted: `read_into` and `tensor` convert
/// a few megabytes at a time and hand each part's pages back to the OS once converted, so reading
/// every tensor of a file holds the results plus a few pages of the file. Copies share the bytes.
///
/// Accepted beyond the letter of the format: bytes between tensors or after the last one (the
/// reference implementation rejects them; nothing here depends on contiguity) and extra keys in a
/// tensor's entry. Rejected: everything else that is not well formed, including overlapping
/// tensors, a key repeated within one JSON object, JSON nested deeper than a header needs, shapes
/// whose non-zero extents multiply beyond index_t, and headers over 100 MB.
class SafeTensors {
 public:
  /// Maps and validates the file at `path`. IoError if the OS cannot open or map it; FormatError if
  /// it is not a valid safetensors file. See MappedFile for the one hazard of a mapping (another
  /// program truncating the file in place while it is read).
  static SafeTensors read(const std::filesystem::path& path) {
    auto storage = std::make_shared<Storage>();
    storage->mapped.emplace(path);
    return SafeTensors(std::move(storage), detail::concat("safetensors file ", path));
  }

  /// Validates a whole safetensors file held in `bytes` (length prefix included) and keeps it.
  /// FormatError if it is not valid.
  static SafeTensors parse(std::vector<std::byte> bytes) {
    auto storage = std::make_shared<Storage>();
    storage->owned = std::move(bytes);
    return SafeTensors(std::move(storage), "safetensors buffer");
  }

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
  std::span<const TensorEntry> entries() const& { return entries_; }
  /// Not on a temporary: `for (auto& e : SafeTensors::read(p).entries())` would read freed entries.
  std::span<const TensorEntry> entries() const&& = delete;

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
    const TensorEntry& e = floating_entry(name, dtype_of<T>);
    Tensor<T> result{Shape(std::span<const index_t>(e.shape))};
    convert_floats(e, result.data());
    return result;
  }

  /// Converts tensor `name` straight into `destination`, which must have the tensor's shape: how a
  /// model's parameters are loaded without a second copy. Conversions as for tensor(). FormatError
  /// (and `destination` untouched) if the tensor is missing, holds integers or has another shape.
  template <Scalar T>
  void read_into(std::string_view name, TensorView<T> destination) const {
    const TensorEntry& e = floating_entry(name, dtype_of<T>);
    if (!std::ranges::equal(e.shape, destination.shape().extents()))
      detail::fail<FormatError>(source_, ": tensor \"", name, "\" is ", Shape(std::span<const index_t>(e.shape)),
                                " but the destination is ", destination.shape());
    convert_floats(e, destination.data());
  }

  /// The first element of floating-point tensor `name` that is NaN or infinite once read as T (a
  /// finite F64 value beyond float's range counts, as tensor<float>() would make it infinite), or
  /// nullopt. Scans the stored bytes through a small buffer — no copy of the tensor — so a loader
  /// can refuse bad weights before it changes anything. FormatError as for tensor().
  template <Scalar T>
  std::optional<NonFiniteElement> first_non_finite(std::string_view name) const {
    const TensorEntry& e = floating_entry(name, dtype_of<T>);
    const std::size_t element = dtype_size(e.dtype);
    std::optional<NonFiniteElement> found;
    convert_in_parts(e, [&](std::span<const std::byte> part, std::size_t first) {
      constexpr std::size_t chunk = 1024;  // elements per pass: a few kilobytes on the stack
      std::array<T, chunk> values;
      const std::size_t count = part.size() / element;
      for (std::size_t begin = 0; begin < count && !found; begin += chunk) {
        const std::size_t n = std::min(chunk, count - begin);
        const std::span<const std::byte> bytes = part.subspan(begin * element, n * element);
        decode_floats(e.dtype, bytes, values.data());
        for (std::size_t i = 0; i < n; ++i) {
          if (std::isfinite(values[i])) continue;
          double stored = 0;
          decode_floats(e.dtype, bytes.subspan(i * element, element), &stored);
          found = NonFiniteElement{static_cast<index_t>(first + begin + i), stored};
          break;
        }
      }
    });
    return found;
  }

  /// Tensor `name`'s I64 or I32 elements, flattened row-major (the shape is in entry(name)).
  /// FormatError if the tensor is missing or holds floating-point values.
  std::vector<std::int64_t> integers(std::string_view name) const {
    const TensorEntry& e = entry(name);
    if (is_floating_point(e.dtype))
      detail::fail<FormatError>(source_, ": tensor \"", name, "\" holds ", e.dtype,
                                " values; it cannot be read as I64 integers (read it with tensor<T>())");
    std::vector<std::int64_t> values(static_cast<std::size_t>(e.numel()));
    const auto widen = [](auto value) { return static_cast<std::int64_t>(value); };
    convert_in_parts(e, [&](std::span<const std::byte> part, std::size_t first) {
      if (e.dtype == DType::i64) detail::decode<std::int64_t>(part, values.data() + first, widen);
      if (e.dtype == DType::i32) detail::decode<std::int32_t>(part, values.data() + first, widen);
    });
    return values;
  }

  /// The header's "__metadata__" map (empty if it has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// `safetensors file "<path>"` or `safetensors buffer`: how messages name this file, for callers
  /// reporting their own errors about it (a checkpoint missing a parameter, ...).
  const std::string& source() const { return source_; }

  /// Whether the bytes are a memory map of a file (`read`) rather than a buffer (`parse`).
  bool memory_mapped() const { return storage_->mapped.has_value(); }

 private:
  // The bytes a SafeTensors reads: a mapped file or an owned buffer. Shared, so copies are cheap
  // and never duplicate a file's data.
  struct Storage {
    std::optional<MappedFile> mapped;
    std::vector<std::byte> owned;
    std::span<const std::byte> bytes() const { return mapped ? mapped->bytes() : std::span<const std::byte>(owned); }
  };

  // How many bytes of a mapped file are converted before their pages are handed back: large
  // enough that the madvise calls cost nothing next to the conversion, small next to any model.
  static constexpr std::size_t part_bytes = std::size_t{8} << 20;

  SafeTensors(std::shared_ptr<const Storage> storage, std::string source)
      : source_(std::move(source)), storage_(std::move(storage)) {
    using detail::fail;
    const std::span<const std::byte> bytes = storage_->bytes();
    if (bytes.size() < 8) fail<FormatError>(source_, ": ", bytes.size(), " bytes is too short for the 8-byte header length");
    std::uint64_t header_size;
    std::memcpy(&header_size, bytes.data(), 8);
    if (header_size > detail::max_header_bytes)
      fail<FormatError>(source_, ": header length ", header_size, " exceeds the limit of ", detail::max_header_bytes,
                        " bytes");
    if (header_size > bytes.size() - 8)
      fail<FormatError>(source_, ": header length ", header_size, " exceeds the ", bytes.size() - 8,
                        " bytes after the length prefix");
    data_start_ = 8 + static_cast<std::size_t>(header_size);
    const std::uint64_t data_size = bytes.size() - data_start_;

    const nlohmann::json header =
        detail::parse_header({reinterpret_cast<const char*>(bytes.data()) + 8, data_start_ - 8}, source_);
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
    // The header has been parsed into entries_; its pages are not needed again.
    if (storage_->mapped) storage_->mapped->release(bytes.first(data_start_));
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

  // The entry of a floating-point tensor that can become a Tensor, or FormatError saying why not.
  const TensorEntry& floating_entry(std::string_view name, DType wanted) const {
    const TensorEntry& e = entry(name);
    if (!is_floating_point(e.dtype))
      detail::fail<FormatError>(source_, ": tensor \"", name, "\" holds ", e.dtype, " integers; it cannot be read as ",
                                wanted, " (read it with integers())");
    if (e.shape.size() > static_cast<std::size_t>(Shape::max_rank))
      detail::fail<FormatError>(source_, ": tensor \"", name, "\" has rank ", e.shape.size(),
                                ", above the maximum rank ", Shape::max_rank, " of a Tensor");
    return e;
  }

  // Converts the floating-point tensor `e` into `out` (e.numel() elements).
  template <Scalar T>
  void convert_floats(const TensorEntry& e, T* out) const {
    convert_in_parts(e, [&](std::span<const std::byte> part, std::size_t first) { decode_floats(e.dtype, part, out + first); });
  }

  // Converts the `dtype` elements in `in` to `out`.
  template <class Out>
  static void decode_floats(DType dtype, std::span<const std::byte> in, Out* out) {
    const auto same = [](auto value) { return value; };
    switch (dtype) {
      case DType::f32:
        detail::decode<float>(in, out, same);
        break;
      case DType::f64:
        detail::decode<double>(in, out, same);
        break;
      case DType::bf16:
        detail::decode<std::uint16_t>(in, out, detail::bf16_to_float);
        break;
      case DType::f16:
        detail::decode<std::uint16_t>(in, out, detail::f16_to_float);
        break;
      case DType::i64:
      case DType::i32:
        break;  // rejected by floating_entry
    }
  }

  // Calls convert(part, first element) over the tensor's data in parts of about part_bytes
  // (whole elements), handing each part's pages of a mapped file back to the OS once converted.
  template <class Convert>
  void convert_in_parts(const TensorEntry& e, Convert convert) const {
    const std::span<const std::byte> data = storage_->bytes().subspan(data_start_ + e.begin, e.end - e.begin);
    const std::size_t element = dtype_size(e.dtype);
    const std::size_t step = part_bytes / element * element;
    for (std::size_t begin = 0; begin < data.size(); begin += step) {
      const std::span<const std::byte> part = data.subspan(begin, std::min(step, data.size() - begin));
      convert(part, begin / element);
      if (storage_->mapped) storage_->mapped->release(part);
    }
  }

  std::string source_;
  std::shared_ptr<const Storage> storage_;
  std::size_t data_start_ = 0;                             // where the data buffer begins in the bytes
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
  /// Adds a floating-point tensor stored as F32, F64, BF16 or F16. Narrowing (double to F32,
  /// anything to BF16 or F16) rounds to nearest, ties to even, directly from the source value.
  /// UsageError for an integer dtype, a name already added or the reserved name "__metadata__".
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
    else if (stored_as == DType::f16)
      data = detail::encode<std::uint16_t>(values, [](T v) { return to_f16(v); });
    else
      detail::fail<UsageError>("SafeTensorsWriter::add: tensor \"", name, "\" cannot be stored as ", stored_as,
                               " (floating-point tensors are stored as F32, F64, BF16 or F16)");
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
    const std::vector<const Pending*> order = layout();
    std::vector<std::byte> file = prefix(order);
    for (const Pending* p : order) file.insert(file.end(), p->data.begin(), p->data.end());
    return file;
  }

  /// Writes the file atomically: it is written to a temporary file beside `path`, flushed to the
  /// device and renamed over `path`, so `path` holds the old file or the complete new one, never a
  /// prefix, even after a crash. IoError on failure, leaving `path` untouched and no temporary file.
  /// The tensors are written from where add() keeps them, without assembling the file in memory.
  void write(const std::filesystem::path& path) const {
    const std::vector<const Pending*> order = layout();
    const std::vector<std::byte> head = prefix(order);
    std::vector<std::span<const std::byte>> pieces{head};
    for (const Pending* p : order) pieces.emplace_back(p->data);
    write_file_atomically(path, std::span<const std::span<const std::byte>>(pieces));
  }

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<index_t> shape;
    std::vector<std::byte> data;  // encoded
  };

  // The order of the data: by element size (largest first), then by name.
  std::vector<const Pending*> layout() const {
    std::vector<const Pending*> order;
    for (const Pending& p : tensors_) order.push_back(&p);
    std::sort(order.begin(), order.end(), [](const Pending* a, const Pending* b) {
      const std::size_t a_size = dtype_size(a->dtype), b_size = dtype_size(b->dtype);
      return a_size != b_size ? a_size > b_size : a->name < b->name;
    });
    return order;
  }

  // The length prefix and the header (padded with spaces to a multiple of 8) for tensors laid out in `order`.
  std::vector<std::byte> prefix(const std::vector<const Pending*>& order) const {
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
    std::vector<std::byte> out(8 + text.size());
    const std::uint64_t header_size = text.size();
    std::memcpy(out.data(), &header_size, 8);
    std::memcpy(out.data() + 8, text.data(), text.size());
    return out;
  }

  static std::uint16_t to_bf16(float v) { return detail::float_to_bf16(v); }
  static std::uint16_t to_bf16(double v) { return detail::double_to_bf16(v); }
  static std::uint16_t to_f16(float v) { return detail::float_to_f16(v); }
  static std::uint16_t to_f16(double v) { return detail::double_to_f16(v); }

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
