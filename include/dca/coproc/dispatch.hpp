// dca/coproc/dispatch.hpp — from a latent count known at run time (a command line, a profile) to
// the compile-time N_L of a Coprocessor: one table of the counts a program instantiates.
//
//   return dca::dispatch_latents<1, 2, 4, 8, 16, 32>(options.latents, [&](auto n) {
//     dca::Coprocessor<float, decltype(n)::value> coprocessor(decoder, config);
//     return train(coprocessor);
//   });
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"

#include <initializer_list>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace dca {

namespace detail {

[[noreturn]] inline void fail_latent_count(index_t n, std::initializer_list<index_t> counts) {
  std::string listed;
  for (const index_t count : counts) listed += (listed.empty() ? "" : ", ") + std::to_string(count);
  fail<UsageError>("dispatch_latents: ", n, " latents are not among the compiled counts ", listed);
}

}  // namespace detail

/// Calls `f(std::integral_constant<index_t, N>{})` for the N among `Counts` that equals `n` and
/// returns what it returns. UsageError naming `n` and the counts when none does. Each count is one
/// instantiation of whatever `f` builds, so list only the counts a program needs.
template <index_t... Counts, class F>
decltype(auto) dispatch_latents(index_t n, F&& f) {
  static_assert(sizeof...(Counts) > 0, "dispatch_latents needs at least one latent count");
  constexpr index_t counts[] = {Counts...};  // any count will do: every call must return one type
  using Result = std::invoke_result_t<F&, std::integral_constant<index_t, counts[0]>>;
  if constexpr (std::is_void_v<Result>) {
    const bool found = ((n == Counts ? (f(std::integral_constant<index_t, Counts>{}), true) : false) || ...);
    if (!found) detail::fail_latent_count(n, {Counts...});
  } else {
    std::optional<Result> result;
    ((n == Counts ? (result.emplace(f(std::integral_constant<index_t, Counts>{})), true) : false) || ...);
    if (!result) detail::fail_latent_count(n, {Counts...});
    return Result(std::move(*result));
  }
}

}  // namespace dca
