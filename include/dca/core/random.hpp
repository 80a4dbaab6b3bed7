// dca/core/random.hpp — a seeded random source whose outputs are the same on every platform.
// std::mt19937_64's bit stream is specified by the standard, but the std:: distributions are not,
// so the mappings to integers, uniforms and normals are written out here.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"

#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <numbers>
#include <random>
#include <sstream>
#include <string>

namespace dca {

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}

  /// 64 random bits.
  std::uint64_t bits() { return engine_(); }
  /// Uniform in [0, 1), 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  /// Standard normal (Box–Muller; the second value of each pair is kept for the next call).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    const double u2 = uniform();
    const double radius = std::sqrt(-2.0 * std::log(u1));
    spare_ = radius * std::sin(2.0 * std::numbers::pi * u2);
    has_spare_ = true;
    return radius * std::cos(2.0 * std::numbers::pi * u2);
  }
  /// Uniform integer in [0, n), without modulo bias: draws below 2⁶⁴ mod n are rejected, so the
  /// accepted range holds a whole number of copies of [0, n).
  index_t below(index_t n) {
    if (n < 1) detail::fail<RangeError>("Rng::below: n must be ≥ 1, got ", n);
    const auto range = static_cast<std::uint64_t>(n);
    const std::uint64_t threshold = (0 - range) % range;
    std::uint64_t draw = engine_();
    while (draw < threshold) draw = engine_();
    return static_cast<index_t>(draw % range);
  }

  /// The generator's complete state as text (portable: the standard specifies mt19937_64's
  /// stream and its text form), for checkpoints.
  std::string state() const {
    std::ostringstream out;
    out << engine_ << ' ' << has_spare_ << ' ' << std::hexfloat << spare_;
    return out.str();
  }
  /// Restores a state from `state()`; throws FormatError if the text is not one.
  void set_state(const std::string& text) {
    std::istringstream in(text);
    std::mt19937_64 engine;
    bool has_spare = false;
    double spare = 0;
    std::string spare_text;
    in >> engine >> has_spare >> spare_text;
    if (!in) detail::fail<FormatError>("Rng::set_state: not a generator state (", text.size(), " characters)");
    spare = std::strtod(spare_text.c_str(), nullptr);
    engine_ = engine;
    has_spare_ = has_spare;
    spare_ = spare;
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace dca
