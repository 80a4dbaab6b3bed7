// Specification of the GEMM dispatch (core/gemm.hpp): both paths compute the same products, and
// the path is chosen as the header says. ctest also runs this suite with DCA_GEMM=eigen,
// DCA_GEMM=blas and OPENBLAS_CORETYPE=Prescott set (tests/CMakeLists.txt), so every op's tests
// run on each path and the fallback is reproduced on any CPU.
#include "dca/core/gemm.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <vector>

using dca::GemmPath;
using dca::index_t;
using dca::SimdLevel;

namespace {

template <class T>
using Matrix = dca::RowMatrix<T>;

std::vector<GemmPath> available_paths() {
#if defined(DCA_HAVE_BLAS)
  return {GemmPath::blas, GemmPath::eigen};
#else
  return {GemmPath::eigen};
#endif
}

std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

// Sets an environment variable for the current scope and restores it afterwards.
struct ScopedEnv {
  std::string name;
  std::optional<std::string> saved;
  ScopedEnv(const char* n, const char* value) : name(n) {
    if (const char* old = std::getenv(n)) saved = old;
    setenv(n, value, 1);
  }
  ~ScopedEnv() {
    if (saved)
      setenv(name.c_str(), saved->c_str(), 1);
    else
      unsetenv(name.c_str());
  }
};

// Checks dst == alpha·op(A)·op(B) + (accumulate ? before : 0) elementwise against a double
// triple loop, within the textbook GEMM rounding bound 2·k·eps·(|alpha|·|op(A)|·|op(B)| + |before|).
template <class T, class Dst, class Lhs, class Rhs>
void check_against_reference(const Dst& dst, const Matrix<T>& before, const Lhs& lhs, const Rhs& rhs, double alpha,
                             bool accumulate) {
  const double eps = std::numeric_limits<T>::epsilon();
  double worst = 0;
  for (index_t i = 0; i < dst.rows(); ++i)
    for (index_t j = 0; j < dst.cols(); ++j) {
      double exact = 0, magnitude = 0;
      for (index_t p = 0; p < lhs.cols(); ++p) {
        exact += static_cast<double>(lhs(i, p)) * static_cast<double>(rhs(p, j));
        magnitude += std::abs(static_cast<double>(lhs(i, p)) * static_cast<double>(rhs(p, j)));
      }
      exact *= alpha;
      magnitude *= std::abs(alpha);
      if (accumulate) exact += before(i, j), magnitude += std::abs(before(i, j));
      const double bound = 2.0 * static_cast<double>(lhs.cols() + 1) * eps * magnitude + 1e-300;
      worst = std::max(worst, std::abs(static_cast<double>(dst(i, j)) - exact) / bound);
    }
  CHECK(worst <= 1.0);
}

// One product on one path: operands are blocks of larger random matrices (strided, offset), each
// optionally the transpose of its storage; the destination is a block whose surroundings must not
// change.
template <class T>
void check_product(GemmPath path, index_t m, index_t n, index_t k, bool trans_a, bool trans_b, bool accumulate,
                   T alpha) {
  CAPTURE(m);
  CAPTURE(n);
  CAPTURE(k);
  CAPTURE(trans_a);
  CAPTURE(trans_b);
  CAPTURE(accumulate);
  CAPTURE(path == GemmPath::blas ? "blas" : "eigen");
  const auto random = [](index_t rows, index_t cols, std::uint64_t seed) {
    return dca::test::random_tensor<T>(dca::Shape{rows, cols}, seed).matrix().eval();
  };
  // Storage with 3 extra rows and 5 extra columns around each operand.
  const Matrix<T> a_store = trans_a ? random(k + 3, m + 5, 1) : random(m + 3, k + 5, 1);
  const Matrix<T> b_store = trans_b ? random(n + 3, k + 5, 2) : random(k + 3, n + 5, 2);
  Matrix<T> c_store = random(m + 3, n + 5, 3);
  const Matrix<T> c_initial = c_store;
  const auto a_block = trans_a ? a_store.block(1, 2, k, m) : a_store.block(1, 2, m, k);
  const auto b_block = trans_b ? b_store.block(2, 1, n, k) : b_store.block(2, 1, k, n);
  auto c_block = c_store.block(1, 3, m, n);
  const Matrix<T> before = c_block;
  const auto run = [&](const auto& lhs, const auto& rhs) {
    dca::detail::gemm_on(path, c_block, lhs, rhs, alpha, accumulate);
    check_against_reference<T>(c_block, before, lhs, rhs, static_cast<double>(alpha), accumulate);
  };
  if (!trans_a && !trans_b) run(a_block, b_block);
  if (!trans_a && trans_b) run(a_block, b_block.transpose());
  if (trans_a && !trans_b) run(a_block.transpose(), b_block);
  if (trans_a && trans_b) run(a_block.transpose(), b_block.transpose());
  Matrix<T> outside = c_store - c_initial;
  outside.block(1, 3, m, n).setZero();
  CHECK(outside.cwiseAbs().maxCoeff() == T(0));
}

}  // namespace

TEST_CASE("gemm computes every transpose variant into strided blocks on both paths, in float and double") {
  // Shapes on both sides of the small-product threshold, single rows and columns, and per-head sizes.
  const index_t shapes[][3] = {{1, 7, 5}, {3, 4, 5}, {7, 1, 30}, {37, 23, 41}, {64, 32, 64}, {100, 70, 130}};
  for (GemmPath path : available_paths())
    for (const auto& s : shapes)
      for (int variant = 0; variant < 8; ++variant) {
        const bool trans_a = variant & 1, trans_b = variant & 2, accumulate = variant & 4;
        check_product<float>(path, s[0], s[1], s[2], trans_a, trans_b, accumulate, 0.75f);
        check_product<double>(path, s[0], s[1], s[2], trans_a, trans_b, accumulate, -1.25);
      }
}

TEST_CASE("gemm writes into a transposed destination and evaluates operands that are not views, on both paths") {
  const auto random = [](index_t rows, index_t cols, std::uint64_t seed) {
    return dca::test::random_tensor<float>(dca::Shape{rows, cols}, seed).matrix().eval();
  };
  for (GemmPath path : available_paths())
    for (const bool accumulate : {false, true}) {
      CAPTURE(accumulate);
      const Matrix<float> a = random(37, 23, 4), b = random(23, 41, 5);
      Matrix<float> c = random(41, 37, 6);  // receives (a·b)ᵀ
      const Matrix<float> before = c.transpose();
      dca::detail::gemm_on(path, c.transpose(), a, b, 0.5f, accumulate);
      check_against_reference<float>(c.transpose(), before, a, b, 0.5, accumulate);
      Matrix<float> d = random(37, 41, 7);  // an expression operand: Eigen evaluates it as it stands
      const Matrix<float> d_before = d;
      dca::detail::gemm_on(path, d, a * 2.0f, b, 0.25f, accumulate);
      check_against_reference<float>(d, d_before, (a * 2.0f).eval(), b, 0.25, accumulate);
    }
}

TEST_CASE("gemm with an empty inner dimension sets or keeps the destination") {
  for (GemmPath path : available_paths()) {
    Matrix<float> a(4, 0), b(0, 3), c = Matrix<float>::Constant(4, 3, 2.0f);
    dca::detail::gemm_on(path, c, a, b, 1.0f, true);
    CHECK(c.maxCoeff() == 2.0f);
    CHECK(c.minCoeff() == 2.0f);
    dca::detail::gemm_on(path, c, a, b, 1.0f, false);
    CHECK(c.cwiseAbs().maxCoeff() == 0.0f);
  }
}

TEST_CASE("gemm refuses operands whose shapes do not chain, naming them") {
  Matrix<double> a(3, 4), b(5, 2), c(3, 2);
  CHECK_THROWS_WITH_AS(dca::detail::gemm(c, a, b), "gemm: [3,4]·[5,2] into [3,2]", dca::ShapeError);
}

TEST_CASE("the two paths agree on the same products to within float rounding") {
  if (available_paths().size() < 2) return;
  const Matrix<float> a = dca::test::random_tensor<float>(dca::Shape{96, 80}, 7).matrix();
  const Matrix<float> b = dca::test::random_tensor<float>(dca::Shape{64, 80}, 8).matrix();
  Matrix<float> on_blas(96, 64), on_eigen(96, 64);
  dca::detail::gemm_on(GemmPath::blas, on_blas, a, b.transpose(), 1.0f, false);
  dca::detail::gemm_on(GemmPath::eigen, on_eigen, a, b.transpose(), 1.0f, false);
  // |a|,|b| < 1 and k = 80: each sum is bounded by 80, its rounding by ~2·80·eps·80.
  CHECK((on_blas - on_eigen).cwiseAbs().maxCoeff() < 2 * 80 * 80 * std::numeric_limits<float>::epsilon());
  CHECK((on_blas - on_eigen).cwiseAbs().maxCoeff() <= on_blas.cwiseAbs().maxCoeff() * 1e-5f);
}

TEST_CASE("OpenBLAS kernel sets are rated by the instruction set they use") {
  using dca::detail::openblas_core_level;
  CHECK(openblas_core_level("Prescott") == SimdLevel::sse);
  CHECK(openblas_core_level("Nehalem") == SimdLevel::sse);
  CHECK(openblas_core_level("Sandybridge") == SimdLevel::avx);
  CHECK(openblas_core_level("Haswell") == SimdLevel::avx2);
  CHECK(openblas_core_level("Zen") == SimdLevel::avx2);
  CHECK(openblas_core_level("SkylakeX") == SimdLevel::avx512);
  CHECK(openblas_core_level("COOPERLAKE") == SimdLevel::avx512);
  CHECK_FALSE(openblas_core_level("NeoverseN1").has_value());
  for (SimdLevel level : {SimdLevel::sse, SimdLevel::avx, SimdLevel::avx2, SimdLevel::avx512})
    CHECK(openblas_core_level(dca::detail::openblas_core_for(level)) == level);
}

TEST_CASE("gemm_backend names its path and follows DCA_GEMM, avoiding a BLAS fallback below the CPU") {
  const dca::GemmBackend& backend = dca::gemm_backend();
  INFO(dca::gemm_backend_summary());
  CHECK_FALSE(backend.name.empty());
  CHECK_FALSE(backend.reason.empty());
  CHECK(backend.cpu.find(dca::to_string(dca::detail::cpu_simd_level())) != std::string::npos);
  const std::string request = env_or_empty("DCA_GEMM"), forced_core = env_or_empty("OPENBLAS_CORETYPE");
  if (request == "eigen") {
    CHECK(backend.path == GemmPath::eigen);
    CHECK(backend.name.find("Eigen") == 0);
    return;
  }
#if defined(DCA_HAVE_BLAS)
  REQUIRE(backend.path == GemmPath::blas);
  if (backend.blas_core.empty()) return;  // a BLAS other than OpenBLAS: nothing more to check
  const auto core_level = dca::detail::openblas_core_level(backend.blas_core);
  if (request == "blas") {
    CHECK_FALSE(backend.fallback_avoided);
    if (!forced_core.empty()) CHECK(core_level == dca::detail::openblas_core_level(forced_core));
    return;
  }
  // Automatic: the kernels in use are never below the CPU's instruction set.
  if (core_level) CHECK(*core_level >= dca::detail::cpu_simd_level());
  if (forced_core == "Prescott" && dca::detail::cpu_simd_level() > SimdLevel::sse) {
    CHECK(backend.fallback_avoided);
    CHECK(backend.reason.find("Prescott") != std::string::npos);
    CHECK(env_or_empty("OPENBLAS_CORETYPE") == "Prescott");  // the environment is restored
  }
#else
  CHECK(backend.path == GemmPath::eigen);
#endif
}

TEST_CASE("an unknown DCA_GEMM value is refused with a message naming it and the choices") {
  ScopedEnv env("DCA_GEMM", "mkl");
  CHECK_THROWS_WITH_AS(dca::detail::select_gemm_backend(),
                       "DCA_GEMM=mkl is not a GEMM path; use auto (the default), blas or eigen", dca::UsageError);
}

TEST_CASE("DCA_GEMM=eigen selects Eigen's kernels and says so") {
  ScopedEnv env("DCA_GEMM", "eigen");
  const dca::GemmBackend backend = dca::detail::select_gemm_backend();
  CHECK(backend.path == GemmPath::eigen);
  CHECK(backend.reason == "forced by DCA_GEMM=eigen");
  CHECK(backend.blas_core.empty());
}

TEST_CASE("an installed observer is told of every product with its shape and transposes, and nothing once removed") {
  struct Seen {
    std::vector<dca::GemmCall> calls;
    static void observe(const dca::GemmCall& call, void* self) { static_cast<Seen*>(self)->calls.push_back(call); }
  } seen;
  const Matrix<double> a = dca::test::random_tensor<double>(dca::Shape{7, 5}, 1).matrix();
  const Matrix<double> b = dca::test::random_tensor<double>(dca::Shape{9, 5}, 2).matrix();
  Matrix<double> c(7, 9), d(5, 5);
  dca::set_gemm_observer(&Seen::observe, &seen);
  dca::detail::gemm(c, a, b.transpose());
  dca::detail::gemm_add(d, a.transpose(), a, 2.0);
  dca::set_gemm_observer(nullptr);
  dca::detail::gemm(c, a, b.transpose());
  REQUIRE(seen.calls.size() == 2);
  const dca::GemmCall& first = seen.calls[0];
  CHECK((first.m == 7 && first.n == 9 && first.k == 5));
  CHECK((!first.transpose_a && first.transpose_b && !first.accumulate && first.double_precision));
  const dca::GemmCall& second = seen.calls[1];
  CHECK((second.m == 5 && second.n == 5 && second.k == 7));
  CHECK((second.transpose_a && !second.transpose_b && second.accumulate));
}
