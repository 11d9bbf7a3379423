#!/usr/bin/env bash
# Builds `oneirod` and `oneiro` with the `cuda` feature on a machine with no GPU and no
# system CUDA toolkit, from package registries only: PyPI carries nvcc, the CUDA headers
# and the runtime libraries as NVIDIA's own wheels. Binaries land in target/cuda/release/,
# and target/cuda/gpu-bundle.tar.xz packs what scripts/gpu-checks.sh runs on the GPU machine.
#
#   scripts/build-cuda.sh            # CUDA 13.0, compute capability 90 (H100/H200)
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh
#
# Why 13.0 and not the newest 13.x: candle compiles its kernels to PTX, which the driver
# JIT-compiles when a model first runs, and a driver only reads the PTX versions of its own
# CUDA release or older. The lent GPU machines run driver 580 (CUDA 13.0); a newer nvcc's
# PTX would fail there with CUDA_ERROR_UNSUPPORTED_PTX_VERSION. Override with
# ONEIRO_CUDA_VERSION=13.N only for drivers of that release or newer.
#
# What the machine that runs the binaries needs (README, "GPU"): the NVIDIA driver
# (libcuda.so.1, 580 or newer) and, on the library path, libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13: the same wheels, or PyTorch's
# CUDA 13 install, which carries them (scripts/gpu-libs.sh prints that directory).
set -euo pipefail
cd "$(dirname "$0")/.."

version=${ONEIRO_CUDA_VERSION:-13.0}
major=${version%%.*}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
toolkit=${ONEIRO_CUDA_TOOLKIT:-$PWD/target/cuda-toolkit-$version}

# The wheels, pinned to one CUDA release (curand and cublas number their own versions).
wheels=(
  "nvidia-cuda-nvcc==$version.*"
  "nvidia-nvvm==$version.*"
  "nvidia-cuda-crt==$version.*"
  "nvidia-cuda-runtime==$version.*"
  "nvidia-cuda-cccl==$version.*"
  "nvidia-cuda-nvrtc==$version.*"
  "nvidia-cublas==$version.*"
  "nvidia-curand"
)

if [ ! -x "$toolkit/bin/nvcc" ]; then
  echo "== CUDA $version toolkit from PyPI into $toolkit"
  dl=$(mktemp -d)
  trap 'rm -rf "$dl"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$dl" "${wheels[@]}"
  staging="$toolkit.partial"
  rm -rf "$staging"
  mkdir -p "$staging"
  for w in "$dl"/*.whl; do
    python3 -m zipfile -e "$w" "$dl/unpacked"
  done
  # Every wheel installs under nvidia/cu13/{bin,include,lib,nvvm}: together they have a
  # toolkit's layout, which nvcc (its nvcc.profile) and cudarc's build script expect.
  cp -a "$dl/unpacked/nvidia/cu$major/." "$staging/"
  chmod +x "$staging"/bin/* "$staging"/nvvm/bin/* 2>/dev/null || true
  mv "$staging" "$toolkit"
fi

lib="$toolkit/lib"
# The linker looks for unversioned names; the wheels ship only the sonames.
for so in "$lib"/lib*.so.*; do
  base=$(basename "$so")
  plain="$lib/${base%%.so.*}.so"
  [ -e "$plain" ] || ln -s "$base" "$plain"
done
# libcuda belongs to the driver, which a build machine need not have. cudarc links to it
# by name, so the linker gets a stub with the same soname and every driver entry point
# cudarc declares (the CUDA toolkit ships such a stub in lib64/stubs; the wheels do not).
# At run time the driver's real libcuda.so.1 is the one loaded. Every stub entry point
# answers CUDA_ERROR_NO_DEVICE (100), so on a machine without a driver the binaries still
# run on the CPU with LD_LIBRARY_PATH=$lib/stubs (the smoke test below).
if [ ! -e "$lib/stubs/libcuda.so.1" ]; then
  cudarc=$(cargo metadata --format-version 1 --locked --features oneiro-client/cuda \
    --manifest-path Cargo.toml 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
  mkdir -p "$lib/stubs"
  grep -hoE '^\s+fn cu[A-Za-z0-9_]+\(' "$(dirname "$cudarc")/src/driver/sys/mod.rs" |
    sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/int \1(void) { return 100; }/' | sort -u >"$lib/stubs/libcuda.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/stubs/libcuda.so" "$lib/stubs/libcuda.c"
  ln -sf libcuda.so "$lib/stubs/libcuda.so.1"
fi

export CUDA_ROOT="$toolkit" CUDA_PATH="$toolkit"
export PATH="$toolkit/bin:$PATH"
export LIBRARY_PATH="$lib:$lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$lib/stubs"
echo "== nvcc: $(nvcc --version | tail -n 2 | head -n 1); compute capability $CUDA_COMPUTE_CAP"

# Stripped: the binaries travel to the GPU machine.
export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
cargo build --release --locked --target-dir target/cuda \
  -p oneiro-client -p oneiro-daemon --bin oneiro --bin oneirod \
  --features oneiro-client/cuda,oneiro-daemon/cuda
# The CPU/GPU parity tests (crates/trainer/tests/cuda_parity.rs), as a binary to run there.
parity=$(cargo test --release --locked --target-dir target/cuda --no-run \
  -p oneiro-trainer --features oneiro-trainer/cuda --test cuda_parity --message-format json |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda_parity" and m.get("executable"):
        print(m["executable"])')
cp "$parity" target/cuda/release/cuda_parity
# What travels to the GPU machine for scripts/gpu-checks.sh, under the device tool's
# 64 MiB: the binaries and cuRAND (~61 MB as xz), which PyTorch's CUDA 13 builds no longer
# install (candle links it for random tensors on the device).
cp -L "$lib/libcurand.so.10" target/cuda/release/
tar -C target/cuda/release -cf - oneiro cuda_parity libcurand.so.10 |
  xz -T0 -9 >target/cuda/gpu-bundle.tar.xz

ls -la target/cuda/release/oneiro target/cuda/release/oneirod target/cuda/release/cuda_parity \
  target/cuda/gpu-bundle.tar.xz
# Smoke test here, with the stub standing in for the driver: the CUDA build still runs on
# the CPU and says plainly that there is no GPU.
if ! command -v nvidia-smi >/dev/null; then
  LD_LIBRARY_PATH="$lib:$lib/stubs" target/cuda/release/oneiro bench text-generate --device cpu
  out=$(LD_LIBRARY_PATH="$lib:$lib/stubs" target/cuda/release/oneiro bench text-generate \
    --device cuda:0 2>&1 || true)
  echo "$out" | head -n 1
  case "$out" in
  *"cannot open cuda:0"*) echo "== smoke test passed: CPU runs, cuda:0 refused with a clear error" ;;
  *) echo "== smoke test: cuda:0 did not fail as expected" >&2 && exit 1 ;;
  esac
fi

echo "== built with CUDA $version for compute capability $CUDA_COMPUTE_CAP; needs at run time: driver >= 580, and on LD_LIBRARY_PATH:"
echo "   libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 (e.g. $lib)"
