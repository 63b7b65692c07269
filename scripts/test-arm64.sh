#!/usr/bin/env bash
# `npm run test:arm64`: the CPU kernels on linux-arm64, verified on an x86-64 machine. Builds
# test/native/cpu_parity.cc with the kernels for the host and, with aarch64-linux-gnu-g++, for arm64
# (static, so qemu needs no arm64 sysroot); the host run checks every host ISA path against the C++
# reference and writes its outputs, then the arm64 binary runs under qemu-aarch64 on its paths
# (portable, NEON), checks them against the reference and compares them with the host's outputs.
# Installs g++-aarch64-linux-gnu and qemu-user with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  echo "== installing g++-aarch64-linux-gnu qemu-user (apt-get)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends g++-aarch64-linux-gnu qemu-user
fi

# The CPU kernels exactly as sources.gypi lists them for the addon (minus the N-API binding and the
# op queue / storage, which need Node's headers), plus the parity test.
KERNELS=$(node -e '
  const s = JSON.parse(require("fs").readFileSync("sources.gypi", "utf8")).variables.lk_cpu_sources;
  console.log(s.filter((f) => f.startsWith("native/cpu/") || f === "native/thread_pool.cc").join(" "))')
OUT=build-arm64
mkdir -p "$OUT"
FLAGS=(-std=c++17 -O2 -Wall -Wextra -Werror -Wno-psabi -pthread)

echo "== build for the host ($(uname -m)) and for arm64"
g++ "${FLAGS[@]}" $KERNELS test/native/cpu_parity.cc -o "$OUT/cpu_parity_host" &
aarch64-linux-gnu-g++ "${FLAGS[@]}" -static $KERNELS test/native/cpu_parity.cc -o "$OUT/cpu_parity_arm64"
wait $!

echo "== host: every ISA path against the reference"
"$OUT/cpu_parity_host" write "$OUT/host-outputs.bin"
echo "== arm64 under qemu-aarch64: every ISA path against the reference and the host's outputs"
qemu-aarch64 "$OUT/cpu_parity_arm64" compare "$OUT/host-outputs.bin"
echo "== arm64 CPU kernels: pass"
