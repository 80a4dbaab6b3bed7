# Sourced by the compare_pytorch scripts: how busy the machine is, waiting until it is quiet (both
# libraries' two-thread figures collapse when another process holds one of the two cores), and the
# environment that gives PyTorch the BLAS dca uses.

# Percentage of all CPU time that other processes used over one second (this script is idle then).
others_busy() {
  local a b
  read -ra a </proc/stat
  sleep 1
  read -ra b </proc/stat
  local busy=$(((b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8])))
  local idle=$(((b[4] + b[5]) - (a[4] + a[5])))
  echo $((100 * busy / (busy + idle > 0 ? busy + idle : 1)))
}

# Waits up to QUIET_WAIT seconds for others_busy < 10; prints the last figure.
wait_for_quiet() {
  local deadline=$((SECONDS + ${QUIET_WAIT:-300})) busy
  busy=$(others_busy)
  while [ "$busy" -ge 10 ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 4
    busy=$(others_busy)
  done
  echo "$busy"
}

# Sets dca_gemm and dca_core (dca's GEMM path and OpenBLAS kernel set, as benchmark $1 reports them)
# and torch_env, the environment for PyTorch's best configuration: the OpenMP flavour of OpenBLAS
# (libopenblas0-openmp), which shares torch's OpenMP threads as dca does — the pthread flavour that
# libblas.so.3 points at by default ignores torch.set_num_threads and halves its two-thread speed —
# on dca's kernel set.
set_torch_blas_env() {
  local torch_blas
  torch_blas=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/openblas-openmp
  [ -e "$torch_blas/libblas.so.3" ] || torch_blas=""
  dca_gemm=$("$1" --dca_gemm_backend 2>/dev/null | sed -n 1p)
  dca_core=$("$1" --dca_gemm_backend 2>/dev/null | sed -n 2p)
  torch_env=(LD_LIBRARY_PATH="$torch_blas${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
  [ -n "$dca_core" ] && torch_env+=(OPENBLAS_CORETYPE="$dca_core")
  return 0
}
