// benchmarks/context.hpp — the main() every dca benchmark shares: Google Benchmark's, plus the
// machine facts a speed figure needs beside it (the CPU, and which GEMM kernels ran: see
// include/dca/core/gemm.hpp), in the context block of the console, JSON and CSV outputs.
#pragma once

#include <dca/core/gemm.hpp>

#include <benchmark/benchmark.h>

#include <cstdio>
#include <exception>
#include <string_view>

namespace dca::bench {

// `--dca_gemm_backend` prints the GEMM path's summary and OpenBLAS kernel set (one line each; the
// second empty on the Eigen path) and exits, for scripts (compare_pytorch.sh).
inline int run_benchmarks(int argc, char** argv) {
  try {
    const GemmBackend& backend = gemm_backend();  // chosen before anything is timed
    if (argc == 2 && std::string_view(argv[1]) == "--dca_gemm_backend") {
      std::printf("%s\n%s\n", gemm_backend_summary().c_str(), backend.blas_core.c_str());
      return 0;
    }
    benchmark::AddCustomContext("dca_cpu", backend.cpu);
    benchmark::AddCustomContext("dca_gemm", gemm_backend_summary());
    if (!backend.blas_core.empty()) benchmark::AddCustomContext("dca_blas_core", backend.blas_core);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace dca::bench

#define DCA_BENCHMARK_MAIN() \
  int main(int argc, char** argv) { return dca::bench::run_benchmarks(argc, argv); }
