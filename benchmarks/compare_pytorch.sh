#!/usr/bin/env bash
# Training-step throughput of dca (benchmarks/bench_training.cpp) and PyTorch
# (benchmarks/pytorch_training_step.py) side by side, on this machine, at both reference configs
# with 1 and 2 threads. Builds bench_training in Release first.
#
# Both sides run the same BLAS kernels: dca picks OpenBLAS's kernel set for the CPU at run time
# (include/dca/core/gemm.hpp), and PyTorch, which takes whatever OpenBLAS picks by itself (on a
# CPU newer than the library, a generic fallback), gets the same set through OPENBLAS_CORETYPE.
# The script prints the kernel set of each side.
#
#   benchmarks/compare_pytorch.sh                 # build dir: build-bench, 3 rounds
#   BUILD_DIR=build ROUNDS=5 QUIET_WAIT=600 benchmarks/compare_pytorch.sh
#
# The two run alternately, one (config, threads) pair at a time, for ROUNDS rounds, and each
# figure is the median over the rounds: on a shared machine both see the same load. Before each
# run the script waits (up to QUIET_WAIT seconds, default 300) until other processes use less than
# 10% of the CPUs, and prints how busy they were: with another process on one of two cores, the
# two-thread figures of both libraries collapse, as every parallel region waits for the thread
# that lost its core. PyTorch runs only if `/usr/bin/python3 -c "import torch"` works (Debian:
# apt-get install python3-torch libopenblas0-openmp).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-bench}
rounds=${ROUNDS:-3}
python=/usr/bin/python3

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDCA_BUILD_TESTS=OFF -DDCA_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" --target bench_training -j2 >/dev/null
bench=$build/benchmarks/bench_training

source "$root/benchmarks/quiet_machine.sh"  # others_busy, wait_for_quiet, set_torch_blas_env

have_torch=0
if "$python" -c "import torch" 2>/dev/null; then have_torch=1; fi
set_torch_blas_env "$bench"
torch_core="-"
if [ "$have_torch" = 1 ]; then
  torch_core=$(env "${torch_env[@]}" "$python" "$root/benchmarks/pytorch_training_step.py" --config tiny --threads 1 \
               --steps 1 | sed -n 's/^# torch .*, kernels \(.*\)$/\1/p')
fi

configs=("tiny 2/4/128/64/96/16" "small 4/4/256/128/256/8")
results=$(mktemp)
trap 'rm -f "$results"' EXIT

echo "# $(uname -n): $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); load:$(cut -d' ' -f1-3 /proc/loadavg)"
echo "# dca GEMMs: $dca_gemm"
echo "# BLAS kernels: dca ${dca_core:-none (Eigen)}, PyTorch $torch_core"
for round in $(seq "$rounds"); do
  for config in "${configs[@]}"; do
    name=${config%% *}
    args=${config#* }
    IFS=/ read -r layers heads d t vocab batch <<<"$args"
    for threads in 1 2; do
      filter="BM_TrainingStep/L:$layers/H:$heads/d:$d/T:$t/V:$vocab/B:$batch/threads:$threads/"
      busy=$(wait_for_quiet)
      # The counters of the one matching benchmark, found by their CSV header names.
      read -r dca_tokens dca_gflops < <("$bench" --benchmark_filter="$filter" --benchmark_min_time=1 \
          --benchmark_format=csv 2>/dev/null | awk -F, '
        /^name,/ { for (i = 1; i <= NF; ++i) col[$i] = i; next }
        /^"BM_TrainingStep/ { print $col["\"tokens/s\""], $col["\"GFLOP/s\""] }')
      torch_tokens=nan
      if [ "$have_torch" = 1 ]; then
        torch_busy=$(wait_for_quiet)
        torch_tokens=$(env "${torch_env[@]}" \
                       "$python" "$root/benchmarks/pytorch_training_step.py" --config "$name" --threads "$threads" \
                       --steps 10 | awk '/^pytorch/ {for (i = 1; i <= NF; ++i) if ($i == "tokens/s") print $(i + 1)}')
        busy="$busy/$torch_busy"
      fi
      echo "$name $threads $dca_tokens $dca_gflops $torch_tokens" >>"$results"
      echo "round $round: $name threads=$threads dca ${dca_tokens%.*} tokens/s, pytorch ${torch_tokens%.*} tokens/s" \
           "(others busy before each: $busy%)" >&2
    done
  done
done

echo
printf '%-6s %7s %15s %12s %18s %10s\n' config threads "dca tokens/s" "dca GFLOP/s" "PyTorch tokens/s" "dca/PyTorch"
for config in "${configs[@]}"; do
  name=${config%% *}
  for threads in 1 2; do
    awk -v n="$name" -v t="$threads" '
      function median(a, k,   i, j, x) {  # insertion sort, then the middle element
        for (i = 2; i <= k; ++i) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; --j) a[j + 1] = a[j]; a[j + 1] = x }
        return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
      }
      $1 == n && $2 == t { ++k; dca[k] = $3; gf[k] = $4; pt[k] = $5 }
      END {
        d = median(dca, k); g = median(gf, k)
        if (pt[1] == "nan") printf "%-6s %7d %15.0f %12.1f %18s %10s\n", n, t, d, g, "-", "-"
        else { p = median(pt, k); printf "%-6s %7d %15.0f %12.1f %18.0f %9.2fx\n", n, t, d, g, p, d / p }
      }' "$results"
  done
done
[ "$have_torch" = 1 ] || echo "(PyTorch not found: /usr/bin/python3 -c 'import torch' failed)"
