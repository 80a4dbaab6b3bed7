// libFuzzer target for the safetensors reader and writer (dca/io/safetensors.hpp). The contract:
// for any bytes, SafeTensors::parse either throws dca::FormatError or returns a file whose every
// tensor reads without leaving the buffer; reading a tensor as the wrong kind throws FormatError;
// converting a tensor into existing memory (read_into) gives the same bits as reading it whole, and
// a destination of another shape throws FormatError without being touched; a file rebuilt from
// what was read (floating-point data widened to F64, integers in their own dtype) parses back to
// the same metadata, shapes and bits; and BF16 and F16 data written again in their own dtype, from
// float or from double, keep their bits (rounding a representable value must not change it).
// Anything else (a sanitizer report, another exception escaping, an abort from `require`) is a bug.
//
// SafeTensors::read (a memory-mapped file) runs the very same validation on the mapped bytes —
// one private constructor serves both — so fuzzing parse covers the reader of files too.
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -I include -isystem /usr/include/eigen3 \
//       tests/fuzz/safetensors_fuzz.cpp -o safetensors_fuzz && ./safetensors_fuzz tests/fuzz/corpus
#include "dca/io/safetensors.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

// An abort is what libFuzzer records as a crash, with the input that caused it.
void require(bool condition) {
  if (!condition) std::abort();
}

template <class Read>
bool throws_format_error(Read read) {
  try {
    read();
  } catch (const dca::FormatError&) {
    return true;
  }
  return false;
}

// Bitwise equality, so NaN payloads and signed zeros count.
bool same_bits(const dca::Tensor<double>& a, const dca::Tensor<double>& b) {
  return a.shape() == b.shape() &&
         std::equal(a.span().begin(), a.span().end(), b.span().begin(), [](double x, double y) {
           return std::bit_cast<std::uint64_t>(x) == std::bit_cast<std::uint64_t>(y);
         });
}

// Bitwise equality of floats, except that any NaN matches any NaN: the writer quiets NaNs.
bool same_values(const dca::Tensor<float>& a, const dca::Tensor<float>& b) {
  return a.shape() == b.shape() && std::equal(a.span().begin(), a.span().end(), b.span().begin(), [](float x, float y) {
           return (std::isnan(x) && std::isnan(y)) ||
                  std::bit_cast<std::uint32_t>(x) == std::bit_cast<std::uint32_t>(y);
         });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes(size);
  if (size != 0) std::memcpy(bytes.data(), data, size);
  std::optional<dca::SafeTensors> file;
  try {
    file.emplace(dca::SafeTensors::parse(std::move(bytes)));
  } catch (const dca::FormatError&) {
    return 0;
  }

  dca::SafeTensorsWriter copy, half_from_float, half_from_double;  // BF16 and F16 data, stored again as such
  for (const auto& [key, value] : file->metadata()) copy.set_metadata(key, value);
  std::vector<std::string> copied, half_names;
  for (const dca::TensorEntry& e : file->entries()) {
    require(file->contains(e.name) && &file->entry(e.name) == &e);
    if (dca::is_floating_point(e.dtype)) {
      require(throws_format_error([&] { (void)file->integers(e.name); }));
      if (e.shape.size() > static_cast<std::size_t>(dca::Shape::max_rank)) {
        require(throws_format_error([&] { (void)file->tensor<float>(e.name); }));
        continue;
      }
      require(file->tensor<float>(e.name).numel() == e.numel());
      const dca::Tensor<double> whole = file->tensor<double>(e.name);
      dca::Tensor<double> into(whole.shape(), -1.0);
      file->read_into(e.name, into.view());
      require(same_bits(into, whole));
      if (whole.numel() > 0) {  // a destination of another shape is refused and left alone
        dca::Tensor<double> wrong(dca::Shape{whole.numel() + 1}, -1.0);
        require(throws_format_error([&] { file->read_into(e.name, wrong.view()); }));
        require(std::all_of(wrong.span().begin(), wrong.span().end(), [](double v) { return v == -1.0; }));
      }
      copy.add(e.name, whole, dca::DType::f64);
      if (e.dtype == dca::DType::bf16 || e.dtype == dca::DType::f16) {
        half_from_float.add(e.name, file->tensor<float>(e.name), e.dtype);
        half_from_double.add(e.name, whole, e.dtype);
        half_names.push_back(e.name);
      }
    } else {
      require(throws_format_error([&] { (void)file->tensor<float>(e.name); }));
      copy.add_integers(e.name, file->integers(e.name), e.shape, e.dtype);
    }
    copied.push_back(e.name);
  }

  const dca::SafeTensors again = dca::SafeTensors::parse(copy.bytes());
  require(again.metadata() == file->metadata());
  require(again.entries().size() == copied.size());
  for (const std::string& name : copied) {
    const dca::TensorEntry& original = file->entry(name);
    require(again.entry(name).shape == original.shape);
    if (dca::is_floating_point(original.dtype))
      require(same_bits(again.tensor<double>(name), file->tensor<double>(name)));
    else
      require(again.entry(name).dtype == original.dtype && again.integers(name) == file->integers(name));
  }
  const dca::SafeTensors from_float = dca::SafeTensors::parse(half_from_float.bytes());
  const dca::SafeTensors from_double = dca::SafeTensors::parse(half_from_double.bytes());
  for (const std::string& name : half_names) {
    require(from_float.entry(name).dtype == file->entry(name).dtype);
    require(same_values(from_float.tensor<float>(name), file->tensor<float>(name)));
    require(same_values(from_double.tensor<float>(name), file->tensor<float>(name)));
  }
  return 0;
}
