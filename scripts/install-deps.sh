#!/usr/bin/env bash
# Installs, with apt-get, whatever dca's build, tests, examples and benchmarks need that this
# Debian machine lacks. Safe to run again: it installs only missing packages.
set -euo pipefail

packages=(
  g++ cmake make            # toolchain
  libeigen3-dev             # dense linear algebra: every contraction
  libxtensor-dev            # N-d views of tensors
  doctest-dev               # tests
  libbenchmark-dev          # benchmarks
)

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
