#!/usr/bin/env bash
# The coprocessor's training step in dca (benchmarks/bench_coprocessor.cpp, BM_CoprocessorTrainingStep:
# the structured loss, backward, AdamW) and in PyTorch (benchmarks/pytorch_coprocessor_step.py, written
# the paper's way with one dense mask per row, and as a loop over the K groups against the cached
# prefix) side by side, on this machine: the small decoder at K = 8, 16, 32, 64 (T = 256, N_L = 16,
# N_A = 16, B = 1) and the reproduction's default profile (its decoder, B, T and K), with 1 and 2
# threads; dca's one-thread step against the same products run alone (BM_CoprocessorStepProductsAlone:
# the share of the step that is GEMM time at this machine's SGEMM rate) and against one core's FMA
# peak (bench_gemm BM_FmaPeak); its two-thread step against its one-thread step; and dca's structured
# loss + backward against its own dense-mask form at K = 32 and 64 (BM_CoprocessorStepStructured /
# BM_CoprocessorStepDense). Builds bench_coprocessor and bench_gemm in Release first.
#
# Before timing anything it checks that both compute the same thing: bench_coprocessor --dca_export
# writes the small setup at K = 8 and 64 and the reproduction's, and pytorch_coprocessor_step.py --check
# recomputes loss and gradients with both PyTorch variants and the AdamW step; any difference beyond
# its tolerances (loss 1e-4 relative) stops the script.
#
#   benchmarks/compare_pytorch_coprocessor.sh            # build dir: build-bench, 3 rounds
#   BUILD_DIR=build ROUNDS=5 QUIET_WAIT=600 benchmarks/compare_pytorch_coprocessor.sh
#   ROUNDS=1 QUIET_WAIT=5 KS=8 THREADS=1 DENSE_KS=32 REPRODUCTION=0 STEPS=2 MIN_TIME=0.2 \
#       CHECK_KS=8 BUILD_JOBS=1 benchmarks/compare_pytorch_coprocessor.sh     # a smoke run
#
# Other settings: KS (small decoder's K values, default "8 16 32 64"), THREADS ("1 2"), DENSE_KS
# ("32 64"), REPRODUCTION (1: include the reproduction row), STEPS (PyTorch steps timed after 3
# warm-up steps, default 10), MIN_TIME (dca's --benchmark_min_time, default 1), CHECK_KS ("8 64"),
# BUILD_JOBS (2).
#
# Both sides run the same BLAS kernels, as in compare_pytorch.sh: dca picks OpenBLAS's kernel set for
# the CPU at run time (include/dca/core/gemm.hpp), and PyTorch gets the same set through
# OPENBLAS_CORETYPE and the OpenMP flavour of OpenBLAS through LD_LIBRARY_PATH. The runs alternate,
# one (config, K, threads) row at a time, for ROUNDS rounds, and each figure is the median over the
# rounds: on a shared machine all three see the same load. Before each run the script waits (up to
# QUIET_WAIT seconds, default 300) until other processes use less than 10% of the CPUs, and prints
# how busy they were. PyTorch is required: `/usr/bin/python3 -c "import torch"` must work (Debian:
# apt-get install python3-torch libopenblas0-openmp). The PyTorch dense form dominates the run time
# (at K = 64 its extended sequence has 2,240 rows; several seconds a step on one core): a round
# takes several minutes.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-bench}
rounds=${ROUNDS:-3}
read -ra ks <<<"${KS:-8 16 32 64}"
read -ra thread_counts <<<"${THREADS:-1 2}"
read -ra dense_ks <<<"${DENSE_KS:-32 64}"
read -ra check_ks <<<"${CHECK_KS:-8 64}"
reproduction=${REPRODUCTION:-1}
steps=${STEPS:-10}
min_time=${MIN_TIME:-1}
python=/usr/bin/python3
script=$root/benchmarks/pytorch_coprocessor_step.py

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDCA_BUILD_TESTS=OFF -DDCA_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" --target bench_coprocessor bench_gemm -j"${BUILD_JOBS:-2}" >/dev/null
bench=$build/benchmarks/bench_coprocessor

source "$root/benchmarks/quiet_machine.sh"  # others_busy, wait_for_quiet, set_torch_blas_env

if ! "$python" -c "import torch" 2>/dev/null; then
  echo "PyTorch not found: /usr/bin/python3 -c 'import torch' failed" \
       "(apt-get install python3-torch libopenblas0-openmp)" >&2
  exit 1
fi
set_torch_blas_env "$bench"
pytorch() { env "${torch_env[@]}" "$python" "$script" "$@"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results=$work/results

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "# $(uname -n): $(nproc) CPUs, $cpu; load:$(cut -d' ' -f1-3 /proc/loadavg)"
echo "# dca GEMMs: $dca_gemm"
torch_core=$(pytorch --header | sed -n 's/^# torch .*, kernels \(.*\)$/\1/p')
echo "# BLAS kernels: dca ${dca_core:-none (Eigen)}, PyTorch $torch_core"
# One core's FMA peak (bench_gemm's BM_FmaPeak), for the % of peak column.
fma_peak=$("$build/benchmarks/bench_gemm" --benchmark_filter=BM_FmaPeak --benchmark_min_time=1 --benchmark_format=csv \
           2>/dev/null | awk -F, '/^name,/ { for (i = 1; i <= NF; ++i) col[$i] = i; next }
                                  /^"BM_FmaPeak/ { printf "%.1f", $col["\"GFLOP/s\""] / 1e9 }')
echo "# FMA peak of one core (bench_gemm BM_FmaPeak): ${fma_peak:-?} GFLOP/s"

# The reproduction row's K and B, as bench_coprocessor registers them (from the profile).
rows=()
for k in "${ks[@]}"; do rows+=("small $k 1"); done
if [ "$reproduction" = 1 ]; then
  repro=$("$bench" --benchmark_list_tests --benchmark_filter='BM_CoprocessorTrainingStepReproduction/' 2>/dev/null |
          sed -n '1s|.*/K:\([0-9]*\)/B:\([0-9]*\)/.*|\1 \2|p')
  rows+=("reproduction $repro")
fi

# 1. The loss check: dca's export, recomputed by both PyTorch variants.
checks=()
for k in "${check_ks[@]}"; do checks+=("small $k"); done
[ "$reproduction" = 1 ] && checks+=("reproduction ${repro% *}")
for check in "${checks[@]}"; do
  read -r config k <<<"$check"
  dir=$work/export-$config-$k
  "$bench" --dca_export "$dir" --config "$config" --K "$k" 2>/dev/null | sed 's/^/# /'
  if ! pytorch --check "$dir" --threads 1 | sed 's/^/# /'; then
    echo "the loss check failed for $config K=$k: PyTorch does not compute dca's step; nothing timed" >&2
    exit 1
  fi
  rm -rf "$dir"
done

# 2. Timing, alternating.
# The real time (ms) and GFLOP/s of the one benchmark `filter` matches, from its CSV header names.
dca_run() {
  "$bench" --benchmark_filter="$1" --benchmark_min_time="$min_time" --benchmark_format=csv 2>/dev/null | awk -F, '
    /^name,/ { for (i = 1; i <= NF; ++i) col[$i] = i; next }
    /^"BM_/ {
      g = ("\"GFLOP/s\"" in col) ? $col["\"GFLOP/s\""] : ""
      print $col["real_time"], (g == "" ? "nan" : g)
    }'
}
# The median step time (ms) of one PyTorch run.
torch_run() {
  pytorch "$@" --steps "$steps" | awk '/^pytorch/ { for (i = 1; i <= NF; ++i) if ($i == "median") print $(i + 1) }'
}

for round in $(seq "$rounds"); do
  for row in "${rows[@]}"; do
    read -r config k batch <<<"$row"
    name=BM_CoprocessorTrainingStep
    [ "$config" = reproduction ] && name=BM_CoprocessorTrainingStepReproduction
    for threads in "${thread_counts[@]}"; do
      busy=$(wait_for_quiet)
      read -r dca_ms dca_gflops < <(dca_run "$name/K:$k/B:$batch/threads:$threads/") || true
      busy="$busy/$(wait_for_quiet)"
      dense_ms=$(torch_run --config "$config" --K "$k" --threads "$threads" --variant dense) || true
      busy="$busy/$(wait_for_quiet)"
      loop_ms=$(torch_run --config "$config" --K "$k" --threads "$threads" --variant loop) || true
      dca_ms=${dca_ms:-nan} dca_gflops=${dca_gflops:-nan} dense_ms=${dense_ms:-nan} loop_ms=${loop_ms:-nan}
      echo "step $config $k $threads $dca_ms $dca_gflops $dense_ms $loop_ms" >>"$results"
      if [ "$config" = small ] && [ "$threads" = 1 ]; then  # the step's products alone, one thread
        read -r alone_ms _ < <(dca_run "BM_CoprocessorStepProductsAlone/K:$k/B:1/") || true
        echo "alone $k ${alone_ms:-nan}" >>"$results"
      fi
      echo "round $round: $config K=$k threads=$threads dca $dca_ms ms, pytorch dense $dense_ms ms, loop $loop_ms ms" \
           "(others busy before each: $busy%)" >&2
    done
  done
  for k in "${dense_ks[@]}"; do
    busy=$(wait_for_quiet)
    read -r structured_ms _ < <(dca_run "BM_CoprocessorStepStructured/K:$k/B:1/threads:1/") || true
    busy="$busy/$(wait_for_quiet)"
    read -r dense_ms _ < <(dca_run "BM_CoprocessorStepDense/K:$k/B:1/threads:1/") || true
    structured_ms=${structured_ms:-nan} dense_ms=${dense_ms:-nan}
    echo "mask $k $structured_ms $dense_ms" >>"$results"
    echo "round $round: dca loss+backward K=$k structured $structured_ms ms, dense mask $dense_ms ms" \
         "(others busy before each: $busy%)" >&2
  done
done

median='function median(a, k,   i, j, x) {  # insertion sort, then the middle element
  for (i = 2; i <= k; ++i) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; --j) a[j + 1] = a[j]; a[j + 1] = x }
  return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
}'
echo
echo "Training step (loss, backward, AdamW), ms per step, median of $rounds round(s);" \
     "speed-up: the faster PyTorch variant's time / dca's"
printf '%-13s %3s %7s %10s %15s %14s %9s %11s\n' \
       config K threads "dca ms" "PyTorch dense" "PyTorch loop" speed-up "dca GFLOP/s"
for row in "${rows[@]}"; do
  read -r config k _ <<<"$row"
  for threads in "${thread_counts[@]}"; do
    awk -v c="$config" -v k="$k" -v t="$threads" "$median"'
      $1 == "step" && $2 == c && $3 == k && $4 == t { ++n; d[n] = $5; g[n] = $6; x[n] = $7; l[n] = $8 }
      END {
        if (n == 0) exit
        dm = median(d, n); gm = median(g, n); xm = median(x, n); lm = median(l, n)
        fastest = xm < lm ? xm : lm
        printf "%-13s %3d %7d %10.1f %15.1f %14.1f %8.2fx %11.1f\n", c, k, t, dm, xm, lm, fastest / dm, gm
      }' "$results"
  done
done
echo
echo "dca's step against its own products run alone (the same GEMMs, back to back, one thread) and the FMA peak"
printf '%3s %12s %16s %14s %13s %12s\n' K "step ms" "products ms" "products share" "step GFLOP/s" "% FMA peak"
for k in "${ks[@]}"; do
  awk -v k="$k" -v peak="${fma_peak:-0}" "$median"'
    $1 == "step" && $2 == "small" && $3 == k && $4 == 1 { ++n; d[n] = $5; g[n] = $6 }
    $1 == "alone" && $2 == k { ++m; a[m] = $3 }
    END {
      if (n == 0 || m == 0) exit
      dm = median(d, n); gm = median(g, n); am = median(a, m)
      printf "%3d %12.1f %16.1f %13.1f%% %13.1f %11.1f%%\n", k, dm, am, 100 * am / dm, gm, (peak > 0 ? 100 * gm / peak : 0)
    }' "$results"
done
if [ "${#thread_counts[@]}" -gt 1 ]; then
  echo
  echo "dca's step on two threads against one (medians)"
  printf '%-13s %3s %12s %12s %8s\n' config K "1 thread ms" "2 threads ms" ratio
  for row in "${rows[@]}"; do
    read -r config k _ <<<"$row"
    awk -v c="$config" -v k="$k" "$median"'
      $1 == "step" && $2 == c && $3 == k && $4 == 1 { ++n; one[n] = $5 }
      $1 == "step" && $2 == c && $3 == k && $4 == 2 { ++m; two[m] = $5 }
      END { if (n && m) { o = median(one, n); t = median(two, m); printf "%-13s %3d %12.1f %12.1f %7.2fx\n", c, k, o, t, o / t } }' "$results"
  done
fi
if [ "${#dense_ks[@]}" -gt 0 ]; then
  echo
  echo "dca loss + backward, small decoder, one thread: structured groups against the paper's dense mask"
  printf '%3s %15s %15s %9s\n' K "structured ms" "dense mask ms" speed-up
  for k in "${dense_ks[@]}"; do
    awk -v k="$k" "$median"'
      $1 == "mask" && $2 == k { ++n; s[n] = $3; d[n] = $4 }
      END {
        if (n) { sm = median(s, n); dm = median(d, n); printf "%3d %15.1f %15.1f %8.2fx\n", k, sm, dm, dm / sm }
      }' "$results"
  done
fi
