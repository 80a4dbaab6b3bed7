#!/usr/bin/env bash
# Installs, with apt-get, whatever dca's build, tests, examples and benchmarks need that this
# Debian machine lacks. Safe to run again: it installs only missing packages.
#   scripts/install-deps.sh                 # build, tests, examples, benchmarks
#   scripts/install-deps.sh --with-fuzzer   # and Clang's libFuzzer
#   scripts/install-deps.sh --with-pytorch  # and PyTorch: python/dca_torch.py, its tests, benchmarks/compare_pytorch.sh
set -euo pipefail

packages=(
  g++ cmake make            # toolchain
  libeigen3-dev             # dense linear algebra: every contraction
  libopenblas-openmp-dev    # GEMMs 15-30% faster than Eigen's own (DCA_USE_BLAS); the OpenMP flavour
                            # shares dca's OpenMP threads (docs/performance.md)
  libxtensor-dev            # N-d views of tensors
  nlohmann-json3-dev        # safetensors headers and Hugging Face config.json
  zlib1g-dev                # reading gzip-compressed corpora (dict-gcide ships as .dict.dz)
  doctest-dev               # tests
  libbenchmark-dev          # benchmarks
  libcli11-dev              # command lines of the examples
  libsentencepiece-dev      # subword tokenizers (tokenizer.model) of real checkpoints; optional
  sentencepiece             # spm_train: trains one (the tokenizer tests, pretrain --tokenizer)
  fortunes dict-gcide       # the default pretraining corpus: real English text
)

for option in "$@"; do
  case "$option" in
    # Clang and its runtime, for the libFuzzer target (tests/fuzz), as CI runs it.
    --with-fuzzer) packages+=(clang libclang-rt-14-dev) ;;
    # PyTorch for python/dca_torch.py (tested against dca by coprocessor_torch_tests, skipped
    # without it) and the side-by-side benchmark; without an OpenMP OpenBLAS it falls back to the
    # reference BLAS, 20x slower.
    --with-pytorch) packages+=(python3-torch libopenblas0-openmp) ;;
    *) echo "install-deps: unknown option $option" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: everything is installed"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends "${missing[@]}"
