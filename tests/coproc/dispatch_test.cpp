// Specification of dispatch_latents: a latent count known at run time reaches the matching
// compile-time N_L, and a count the program was not compiled for is refused by name.
#include "dca/coproc/coprocessor.hpp"
#include "dca/coproc/dispatch.hpp"

#include <doctest/doctest.h>

using dca::index_t;

TEST_CASE("dispatch_latents runs the instantiation whose count matches and returns what it returns") {
  for (const index_t n : {1, 2, 4}) {
    CAPTURE(n);
    const index_t compiled = dca::dispatch_latents<1, 2, 4>(
        n, [](auto count) { return decltype(count)::value; });
    CHECK(compiled == n);
  }
  index_t calls = 0, seen = 0;
  dca::dispatch_latents<8, 16>(16, [&](auto count) {
    ++calls;
    seen = decltype(count)::value;
  });
  CHECK(calls == 1);
  CHECK(seen == 16);
}

TEST_CASE("dispatch_latents names a count it was not compiled for, and the counts it was") {
  CHECK_THROWS_WITH_AS((dca::dispatch_latents<1, 2, 4>(3, [](auto) { return 0; })),
                       doctest::Contains("3 latents are not among the compiled counts 1, 2, 4"), dca::UsageError);
  CHECK_THROWS_AS(dca::dispatch_latents<1>(0, [](auto) {}), dca::UsageError);
}
