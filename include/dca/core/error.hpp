// dca/core/error.hpp — the exceptions the library throws. Every message names the operation and
// the shapes or values involved, so a user can tell what went wrong without a debugger.
#pragma once

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace dca {

/// Operands whose shapes do not fit the operation.
struct ShapeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// A value outside its allowed range (token id >= vocabulary, position beyond a limit, ...).
struct RangeError : std::out_of_range {
  using std::out_of_range::out_of_range;
};

/// Using the library in a way its state forbids (a value from a released tape, backward twice
/// from a non-scalar without a seed, ...).
struct UsageError : std::logic_error {
  using std::logic_error::logic_error;
};

/// An operation produced NaN or infinity while the tape's finite-value check was on.
struct NonFiniteError : std::domain_error {
  using std::domain_error::domain_error;
};

/// A training run whose loss or gradient norm became NaN or infinite: thrown by the training loop
/// at that step, before the optimizer update, so the parameters, the optimizer state and any
/// checkpoint are those of the last good step. The message names the step, the loss, the norm and
/// the first parameter whose gradient is not finite. A NonFiniteError, so code that already
/// catches those catches it too.
struct DivergenceError : NonFiniteError {
  using NonFiniteError::NonFiniteError;
};

/// A file or byte stream that is not what it claims to be (truncated or malformed safetensors,
/// inconsistent config.json, a checkpoint missing a tensor, ...).
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The operating system refused a file operation (missing file, no permission, disk full).
struct IoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

// A value for a message: any NaN as "nan", whatever its sign bit, which means nothing and would
// otherwise print as "-nan" on some platforms and "nan" on others.
inline double shown(double value) { return std::isnan(value) ? std::numeric_limits<double>::quiet_NaN() : value; }

template <class Error, class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  throw Error(concat(std::forward<Parts>(parts)...));
}

}  // namespace detail
}  // namespace dca
