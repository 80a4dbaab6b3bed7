// dca/core/gemm.hpp — every matrix product of the library, routed at run time to the fastest
// kernels this process can reach: the BLAS it was built with (OpenBLAS) or Eigen's own.
//
// Why at run time. Debian's OpenBLAS (DYNAMIC_ARCH) picks its kernels from the CPU's model number.
// On a CPU newer than the library it falls back to older kernels: generic SSE3 ("Prescott") on a
// 2023 Xeon, AVX2 ("Haswell") on an AVX-512 Zen 5 EPYC, running at 10-50% of the machine. The
// CPU's features (CPUID) say what it can run, and OpenBLAS can be asked, before the first product,
// to use the kernels those features allow. Measured (docs/performance.md): its AVX-512 kernels
// beat Eigen's by ~40% at the library's shapes, so the BLAS stays the first choice.
//
// The choice, made once per process at the first product (or the first gemm_backend() call):
//   - DCA_GEMM=eigen: Eigen's kernels, as compiled for this program (-march decides their SIMD).
//   - DCA_GEMM=blas: the BLAS exactly as it configured itself (even a generic fallback).
//   - DCA_GEMM unset or "auto": the BLAS, unless it runs kernels for an older instruction set than
//     the CPU has. Then, if it is OpenBLAS with run-time kernel selection and holds kernels for the
//     CPU's instruction set, OpenBLAS is switched to them (and a one-line note goes to stderr);
//     otherwise Eigen's kernels are used if they were compiled for at least the BLAS's level.
//   - Without a BLAS in the build (DCA_USE_BLAS=OFF or OpenBLAS not found): Eigen's kernels.
// Any other DCA_GEMM value throws UsageError from the first product, naming the value.
//
// Switching OpenBLAS's kernels rewrites a table every BLAS call reads: make the first dca product
// (or call gemm_backend()) before other threads call the BLAS.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"
#include "dca/core/instances.hpp"

#include <Eigen/Core>

#include <atomic>
#include <cctype>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(DCA_HAVE_BLAS)
#include <dlfcn.h>
#endif

namespace dca {

/// Which kernels run the library's matrix products.
enum class GemmPath {
  blas,   // the BLAS the library was built with (sgemm_/dgemm_)
  eigen,  // Eigen's own product kernels, compiled into the program
};

/// The widest vector instruction set a CPU (or a set of kernels) uses for single-precision FMA work.
enum class SimdLevel { sse, avx, avx2, avx512 };

/// "SSE", "AVX", "AVX2" or "AVX-512".
inline const char* to_string(SimdLevel level) {
  switch (level) {
    case SimdLevel::sse: return "SSE";
    case SimdLevel::avx: return "AVX";
    case SimdLevel::avx2: return "AVX2";
    case SimdLevel::avx512: return "AVX-512";
  }
  return "?";
}

/// The path this process's products take, and why (see the header comment for the rules).
struct GemmBackend {
  GemmPath path = GemmPath::eigen;
  std::string name;               // e.g. "OpenBLAS 0.3.21, SkylakeX kernels" or "Eigen 3.4.0 (AVX512, FMA, ...)"
  std::string reason;             // one sentence: why this path
  std::string blas_core;          // OpenBLAS's kernel set in use; empty when not OpenBLAS or on the Eigen path
  bool fallback_avoided = false;  // the BLAS had chosen older kernels than the CPU runs, and dca overrode it
  std::string cpu;                // "AMD EPYC (family 26, model 2), AVX-512"
};

/// One product as the library ran it: op(A):[m,k] · op(B):[k,n] into a [m,n] destination.
struct GemmCall {
  index_t m = 0, n = 0, k = 0;
  bool transpose_a = false, transpose_b = false, accumulate = false;
  bool double_precision = false;
};

/// Something told of every product the library runs, from whichever thread runs it (so it must be
/// thread-safe): benchmarks record a training step's products to time them alone, the rate the
/// step is held against. Null (the default): nothing is told; each product reads one atomic.
using GemmObserver = void (*)(const GemmCall& call, void* context);

/// Installs `observer` (called with `context`) for the whole process, or removes it (null). Call it
/// while no product runs.
void set_gemm_observer(GemmObserver observer, void* context = nullptr);

/// The GEMM path of this process, chosen at the first call (thread-safe) and fixed afterwards.
/// Throws UsageError if DCA_GEMM holds a value other than auto, blas or eigen, or asks for a BLAS
/// this build does not have.
const GemmBackend& gemm_backend();

/// "<name> — <reason>": the line examples and benchmarks print in their banners.
inline std::string gemm_backend_summary() {
  const GemmBackend& backend = gemm_backend();
  return backend.name + " — " + backend.reason;
}

namespace detail {

// ---- the CPU -------------------------------------------------------------------------------

// The CPU's widest usable vector level: CPUID features the OS also enables (libgcc checks XGETBV).
// AVX-512 means the Skylake-X subset (F, CD, BW, DQ, VL) that OpenBLAS's AVX-512 kernels need.
inline SimdLevel cpu_simd_level() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return SimdLevel::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdLevel::avx2;
  if (__builtin_cpu_supports("avx")) return SimdLevel::avx;
#endif
  return SimdLevel::sse;
}

// "AMD EPYC (family 26, model 2), AVX-512": the brand string, family and model, vector level.
inline std::string describe_cpu() {
  std::string brand;
  unsigned family = 0, model = 0;
#if defined(__x86_64__) || defined(__i386__)
  unsigned regs[12] = {};
  if (__get_cpuid(0x80000000u, &regs[0], &regs[1], &regs[2], &regs[3]) && regs[0] >= 0x80000004u) {
    for (unsigned leaf = 0; leaf < 3; ++leaf)
      __get_cpuid(0x80000002u + leaf, &regs[4 * leaf], &regs[4 * leaf + 1], &regs[4 * leaf + 2], &regs[4 * leaf + 3]);
    brand.assign(reinterpret_cast<const char*>(regs), sizeof(regs));
    brand = brand.c_str();  // up to the first NUL
  }
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
    family = (eax >> 8) & 0xf;
    model = (eax >> 4) & 0xf;
    if (family == 0xf) family += (eax >> 20) & 0xff;
    if (family == 0x6 || family >= 0xf) model |= ((eax >> 16) & 0xf) << 4;
  }
#endif
  const auto first = brand.find_first_not_of(' '), last = brand.find_last_not_of(' ');
  brand = first == std::string::npos ? std::string("unknown CPU") : brand.substr(first, last - first + 1);
  return concat(brand, " (family ", family, ", model ", model, "), ", to_string(cpu_simd_level()));
}

// The vector level of an OpenBLAS kernel set, by its gotoblas_corename(); nullopt for a name this
// table does not know (such a set is left alone).
inline std::optional<SimdLevel> openblas_core_level(std::string_view core) {
  std::string lower(core);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const char* name : {"skylakex", "cooperlake", "sapphirerapids"})
    if (lower == name) return SimdLevel::avx512;
  for (const char* name : {"haswell", "zen"})
    if (lower == name) return SimdLevel::avx2;
  for (const char* name : {"sandybridge", "bulldozer", "piledriver", "steamroller", "excavator"})
    if (lower == name) return SimdLevel::avx;
  for (const char* name : {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "nano", "opteron",
                           "opteron(sse3)", "barcelona", "bobcat", "katmai", "coppermine", "northwood", "banias",
                           "athlon"})
    if (lower == name) return SimdLevel::sse;
  return std::nullopt;
}

// The OpenBLAS kernel set (as OPENBLAS_CORETYPE spells it) written for a vector level.
inline const char* openblas_core_for(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx512: return "SkylakeX";
    case SimdLevel::avx2: return "Haswell";
    case SimdLevel::avx: return "Sandybridge";
    case SimdLevel::sse: return "Prescott";
  }
  return "Prescott";
}

// The widest level Eigen's kernels were compiled for in this translation unit.
inline SimdLevel eigen_simd_level() {
#if defined(EIGEN_VECTORIZE_AVX512)
  return SimdLevel::avx512;
#elif defined(EIGEN_VECTORIZE_AVX2) && defined(EIGEN_VECTORIZE_FMA)
  return SimdLevel::avx2;
#elif defined(EIGEN_VECTORIZE_AVX)
  return SimdLevel::avx;
#else
  return SimdLevel::sse;
#endif
}

inline std::string eigen_backend_name() {
  return concat("Eigen ", EIGEN_WORLD_VERSION, ".", EIGEN_MAJOR_VERSION, ".", EIGEN_MINOR_VERSION, " kernels (",
                Eigen::SimdInstructionSetsInUse(), ")");
}

// ---- the BLAS ------------------------------------------------------------------------------

#if defined(DCA_HAVE_BLAS)
// The Fortran BLAS entry points under names of our own (asm labels), so that no other declaration
// of sgemm_ (Eigen's blas.h returns int, OpenBLAS's f77blas.h void) can conflict with ours.
extern "C" void dca_blas_sgemm(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                               const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                               const float* beta, float* c, const int* ldc) __asm__("sgemm_");
extern "C" void dca_blas_dgemm(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                               const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
                               const double* beta, double* c, const int* ldc) __asm__("dgemm_");

// An OpenBLAS entry point by name, or null when the BLAS is not OpenBLAS (or too old to have it).
template <class Function>
Function* openblas_symbol(const char* name) {
  return reinterpret_cast<Function*>(dlsym(RTLD_DEFAULT, name));
}

// OpenBLAS's current kernel set, or "" when the BLAS is not OpenBLAS.
inline std::string openblas_core() {
  auto* corename = openblas_symbol<char*()>("openblas_get_corename");
  return corename ? std::string(corename()) : std::string();
}

// "OpenBLAS 0.3.21" from openblas_get_config(), or "OpenBLAS".
inline std::string openblas_version() {
  auto* config = openblas_symbol<char*()>("openblas_get_config");
  if (!config) return "OpenBLAS";
  const std::string text = config();
  const auto space = text.find(' ', text.find(' ') + 1);
  return text.substr(0, space);
}

// Asks a DYNAMIC_ARCH OpenBLAS to reselect its kernels as if OPENBLAS_CORETYPE=`core` had been set
// at start-up (its own selection routine, rerun; the environment is restored afterwards). Returns
// false, changing nothing, if this OpenBLAS cannot reselect or holds no kernels of that name.
inline bool switch_openblas_core(const char* core) {
  auto* quit = openblas_symbol<void()>("gotoblas_dynamic_quit");
  auto* init = openblas_symbol<void()>("gotoblas_dynamic_init");
  std::string table = "gotoblas_";
  for (const char* c = core; *c; ++c) table += static_cast<char>(std::toupper(static_cast<unsigned char>(*c)));
  if (!quit || !init || !dlsym(RTLD_DEFAULT, table.c_str())) return false;
  const char* previous = std::getenv("OPENBLAS_CORETYPE");
  const std::optional<std::string> saved = previous ? std::optional<std::string>(previous) : std::nullopt;
  setenv("OPENBLAS_CORETYPE", core, 1);
  quit();
  init();
  if (saved)
    setenv("OPENBLAS_CORETYPE", saved->c_str(), 1);
  else
    unsetenv("OPENBLAS_CORETYPE");
  return true;
}
#endif

// The whole decision (see the header comment), without caching: gemm_backend() calls it once.
inline GemmBackend select_gemm_backend() {
  GemmBackend backend;
  backend.cpu = describe_cpu();
  const char* env = std::getenv("DCA_GEMM");
  const std::string request = env && *env ? env : "auto";
  if (request != "auto" && request != "blas" && request != "eigen")
    fail<UsageError>("DCA_GEMM=", request, " is not a GEMM path; use auto (the default), blas or eigen");
  const auto use_eigen = [&](std::string reason) {
    backend.path = GemmPath::eigen;
    backend.name = eigen_backend_name();
    backend.reason = std::move(reason);
    backend.blas_core.clear();
    return backend;
  };
  if (request == "eigen") return use_eigen("forced by DCA_GEMM=eigen");
#if !defined(DCA_HAVE_BLAS)
  if (request == "blas")
    fail<UsageError>("DCA_GEMM=blas, but this build of dca has no BLAS: install libopenblas-openmp-dev and configure "
                     "with -DDCA_USE_BLAS=ON, or unset DCA_GEMM");
  return use_eigen("this build has no BLAS (DCA_USE_BLAS=OFF or OpenBLAS not found)");
#else
  backend.path = GemmPath::blas;
  backend.blas_core = openblas_core();
  const std::string version = backend.blas_core.empty() ? std::string("the BLAS") : openblas_version();
  backend.name = backend.blas_core.empty() ? version : concat(version, ", ", backend.blas_core, " kernels");
  if (request == "blas") {
    backend.reason = "forced by DCA_GEMM=blas (the BLAS's own kernel choice)";
    return backend;
  }
  const SimdLevel cpu = cpu_simd_level();
  const std::optional<SimdLevel> core = openblas_core_level(backend.blas_core);
  if (!core) {
    backend.reason = backend.blas_core.empty() ? "a BLAS other than OpenBLAS: its kernels are used as they are"
                                               : concat("OpenBLAS's ", backend.blas_core, " kernels (not rated by dca)");
    return backend;
  }
  if (*core >= cpu) {
    backend.reason = concat("OpenBLAS's ", backend.blas_core, " kernels match this CPU (", to_string(cpu), ")");
    return backend;
  }
  const std::string chosen = backend.blas_core;
  const char* wanted = openblas_core_for(cpu);
  if (switch_openblas_core(wanted) && openblas_core_level(openblas_core()) == cpu) {
    backend.blas_core = openblas_core();
    backend.name = concat(version, ", ", backend.blas_core, " kernels");
    backend.reason = concat("OpenBLAS chose its ", chosen, " (", to_string(*core), ") kernels on this ",
                            to_string(cpu), " CPU; switched to its ", backend.blas_core, " kernels");
    backend.fallback_avoided = true;
    std::fprintf(stderr, "dca: %s; DCA_GEMM=blas keeps OpenBLAS's choice, DCA_GEMM=eigen uses Eigen's kernels\n",
                 backend.reason.c_str());
    return backend;
  }
  if (eigen_simd_level() > *core) {
    backend = use_eigen(concat("OpenBLAS runs only its ", chosen, " (", to_string(*core), ") kernels on this ",
                               to_string(cpu), " CPU; Eigen's are compiled for ", to_string(eigen_simd_level())));
    backend.fallback_avoided = true;
    std::fprintf(stderr, "dca: %s; DCA_GEMM=blas keeps OpenBLAS\n", backend.reason.c_str());
    return backend;
  }
  backend.reason = concat("OpenBLAS's ", chosen, " kernels are below this CPU (", to_string(cpu),
                          "), but neither a better OpenBLAS kernel set nor faster Eigen kernels are available");
  return backend;
#endif
}

// ---- the product ---------------------------------------------------------------------------

// Below this m + n + k, Eigen's coefficient-based product beats any GEMM call (Eigen's own
// EIGEN_GEMM_TO_COEFFBASED_THRESHOLD); single rows or columns are memory-bound GEMVs, left to Eigen.
inline constexpr index_t gemm_small_size = 20;

// The process's product observer (set_gemm_observer); its context is stored before it.
struct GemmObserverSlot {
  std::atomic<GemmObserver> observer{nullptr};
  std::atomic<void*> context{nullptr};
};
inline GemmObserverSlot& gemm_observer_slot() {
  static GemmObserverSlot slot;
  return slot;
}

// One operand of a product as the kernels read it: row-major storage of [rows, cols] at `data`
// with leading dimension `ld`, of which the product reads the transpose when `transposed`.
template <class T>
struct GemmOperand {
  T* data = nullptr;
  index_t rows = 0, cols = 0, ld = 0;
  bool transposed = false;

  index_t used_rows() const { return transposed ? cols : rows; }
  index_t used_cols() const { return transposed ? rows : cols; }
};

// Whether an Eigen expression is a dense view with unit inner stride (a Map, a Block of one, or
// their transposes) that a GemmOperand can describe.
template <class Expr>
inline constexpr bool is_strided_view = std::decay_t<Expr>::InnerStrideAtCompileTime == 1 &&
                                        requires(const std::decay_t<Expr>& e) { e.data(); e.outerStride(); };

// The storage behind such a view: a column-major view of row-major storage is its transpose.
template <class Expr>
auto gemm_operand(Expr&& e) {
  using Data = std::remove_pointer_t<decltype(e.data())>;
  if constexpr (std::decay_t<Expr>::IsRowMajor)
    return GemmOperand<Data>{e.data(), e.rows(), e.cols(), e.outerStride(), false};
  else
    return GemmOperand<Data>{e.data(), e.cols(), e.rows(), e.outerStride(), true};
}

// dst = alpha·lhs·rhs (accumulate: dst += alpha·lhs·rhs) through Eigen's kernels.
template <class Dst, class Lhs, class Rhs, class T>
void gemm_eigen(Dst&& dst, const Lhs& lhs, const Rhs& rhs, T alpha, bool accumulate) {
  if (accumulate)
    dst.noalias() += alpha * lhs * rhs;
  else
    dst.noalias() = alpha * lhs * rhs;
}

// The product every view reaches, on a given path: dst:[M,N] = alpha · op(a):[M,K] · op(b):[K,N]
// (+= with accumulate); dst is not transposed. One function per scalar type, so the kernels are
// compiled once however many expression types call them (dca/core/instances.hpp).
template <Scalar T>
void gemm_strided(GemmPath path, GemmOperand<T> dst, GemmOperand<const T> a, GemmOperand<const T> b, T alpha,
                  bool accumulate) {
  const index_t m = dst.rows, n = dst.cols, k = a.used_cols();
  if (const GemmObserver observer = gemm_observer_slot().observer.load(std::memory_order_acquire))
    observer({m, n, k, a.transposed, b.transposed, accumulate, std::is_same_v<T, double>},
             gemm_observer_slot().context.load(std::memory_order_relaxed));
#if defined(DCA_HAVE_BLAS)
  if (path == GemmPath::blas && m > 1 && n > 1 && m + n + k >= gemm_small_size && m <= INT_MAX && n <= INT_MAX &&
      k <= INT_MAX && a.ld <= INT_MAX && b.ld <= INT_MAX && dst.ld <= INT_MAX && a.ld >= 1 && b.ld >= 1) {
    // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ over the same buffers.
    const char trans_b = b.transposed ? 'T' : 'N', trans_a = a.transposed ? 'T' : 'N';
    const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
    const int lda = static_cast<int>(a.ld), ldb = static_cast<int>(b.ld), ldc = static_cast<int>(dst.ld);
    const T beta = accumulate ? T(1) : T(0);
    if constexpr (std::is_same_v<T, float>)
      dca_blas_sgemm(&trans_b, &trans_a, &ni, &mi, &ki, &alpha, b.data, &ldb, a.data, &lda, &beta, dst.data, &ldc);
    else
      dca_blas_dgemm(&trans_b, &trans_a, &ni, &mi, &ki, &alpha, b.data, &ldb, a.data, &lda, &beta, dst.data, &ldc);
    return;
  }
#else
  (void)path;
#endif
  using Storage = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
  Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>> D(dst.data, m, n, Eigen::OuterStride<>(dst.ld));
  const Storage A(a.data, a.rows, a.cols, Eigen::OuterStride<>(a.ld)), B(b.data, b.rows, b.cols, Eigen::OuterStride<>(b.ld));
  if (a.transposed && b.transposed)
    gemm_eigen(D, A.transpose(), B.transpose(), alpha, accumulate);
  else if (a.transposed)
    gemm_eigen(D, A.transpose(), B, alpha, accumulate);
  else if (b.transposed)
    gemm_eigen(D, A, B.transpose(), alpha, accumulate);
  else
    gemm_eigen(D, A, B, alpha, accumulate);
}

// The same product for any Eigen operands. Views reach gemm_strided (a transposed destination as
// dstᵀ = rhsᵀ·lhsᵀ); anything else is evaluated by Eigen as it stands.
template <class Dst, class Lhs, class Rhs, class T>
void gemm_on(GemmPath path, Dst&& dst, const Lhs& lhs, const Rhs& rhs, T alpha, bool accumulate) {
  const index_t m = dst.rows(), n = dst.cols(), k = lhs.cols();
  if (lhs.rows() != m || rhs.cols() != n || rhs.rows() != k)
    fail<ShapeError>("gemm: [", lhs.rows(), ",", lhs.cols(), "]·[", rhs.rows(), ",", rhs.cols(), "] into [", m, ",", n,
                     "]");
  if (m == 0 || n == 0) return;
  using S = typename std::decay_t<Dst>::Scalar;
  if constexpr (is_strided_view<Dst> && is_strided_view<Lhs> && is_strided_view<Rhs>) {
    const GemmOperand<S> c = gemm_operand(dst);
    const GemmOperand<const S> a = gemm_operand(lhs), b = gemm_operand(rhs);
    const auto flipped = [](GemmOperand<const S> x) { return x.transposed = !x.transposed, x; };
    if (c.transposed)
      gemm_strided<S>(path, {c.data, c.rows, c.cols, c.ld, false}, flipped(b), flipped(a), static_cast<S>(alpha),
                      accumulate);
    else
      gemm_strided<S>(path, c, a, b, static_cast<S>(alpha), accumulate);
  } else {
    gemm_eigen(dst, lhs, rhs, static_cast<S>(alpha), accumulate);
  }
}

inline GemmPath gemm_path() { return gemm_backend().path; }

/// dst:[M,N] = alpha · lhs:[M,K] · rhs:[K,N]; operands are Eigen maps, blocks or their transposes.
template <class Dst, class Lhs, class Rhs, class T = typename std::decay_t<Dst>::Scalar>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, T alpha = T(1)) {
  gemm_on(gemm_path(), dst, lhs, rhs, alpha, false);
}

/// dst:[M,N] += alpha · lhs:[M,K] · rhs:[K,N]
template <class Dst, class Lhs, class Rhs, class T = typename std::decay_t<Dst>::Scalar>
void gemm_add(Dst&& dst, const Lhs& lhs, const Rhs& rhs, T alpha = T(1)) {
  gemm_on(gemm_path(), dst, lhs, rhs, alpha, true);
}

}  // namespace detail

// The float and double products a build may compile once (dca/core/instances.hpp).
#define DCA_GEMM_INSTANCES(kind, T) \
  kind void detail::gemm_strided(GemmPath, detail::GemmOperand<T>, detail::GemmOperand<const T>, \
                                 detail::GemmOperand<const T>, T, bool);
DCA_EXTERN_INSTANCES(DCA_GEMM_INSTANCES)

inline void set_gemm_observer(GemmObserver observer, void* context) {
  detail::gemm_observer_slot().context.store(context, std::memory_order_relaxed);
  detail::gemm_observer_slot().observer.store(observer, std::memory_order_release);
}

inline const GemmBackend& gemm_backend() {
  static const GemmBackend backend = detail::select_gemm_backend();
  return backend;
}

}  // namespace dca
