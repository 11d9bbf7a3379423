#!/usr/bin/env bash
# The GPU checks in one command, for the machine with the GPU: unpacks the bundle that
# scripts/build-cuda.sh made on the build machine (target/cuda/gpu-bundle.tar.xz: `oneiro`,
# the parity tests and cuRAND), points the loader at the CUDA 13 libraries of the local
# PyTorch install, then runs the CPU/GPU parity tests and scripts/bench-gpu.sh. Everything printed
# is also kept under ${OUT:-target/gpu-results}/.
#
#   scripts/gpu-checks.sh            # PYTHON (default python3) is the one with PyTorch
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/gpu-results}
py=${PYTHON:-python3}
mkdir -p "$out"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
tar -C "$bin" -xJf target/cuda/gpu-bundle.tar.xz

# NVIDIA's wheels put the libraries under site-packages/nvidia/ (cu13/lib/, or one folder
# per library in older layouts); PyTorch's CUDA 13 builds depend on them.
libs=$("$py" - <<'PY'
import glob, os, site, sys
bases = site.getsitepackages() + [site.getusersitepackages()]
dirs = []
for name in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libnvrtc.so.13"):
    hits = [h for b in bases for h in glob.glob(os.path.join(b, "nvidia", "**", name), recursive=True)]
    if hits and os.path.dirname(hits[0]) not in dirs:
        dirs.append(os.path.dirname(hits[0]))
    if not hits:
        print(f"{name} not found under {bases}", file=sys.stderr)
print(":".join(dirs))
PY
)
# The bundle's cuRAND last: PyTorch's libraries first where it has them.
export LD_LIBRARY_PATH="${libs:+$libs:}$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$bin/oneiro" | grep "not found"; then
  echo "missing libraries (above): install PyTorch for CUDA 13 or NVIDIA's CUDA 13 wheels" >&2
  exit 1
fi
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee "$out/env.txt"
nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt" || true
status=0
"$bin/cuda_parity" --test-threads 1 2>&1 | tee "$out/parity.txt" || status=1
scripts/bench-gpu.sh "$bin/oneiro" 2>&1 | tee "$out/bench.txt" || status=1
exit $status
