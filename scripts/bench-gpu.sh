#!/usr/bin/env bash
# Times all six workloads on one GPU: `oneiro bench W --device cuda:N` (a CUDA build,
# scripts/build-cuda.sh) against `torch_peer.py W --device cuda:N` on the same GPU in the
# same run, interleaved, REPS times each (default 3), best run counting, and prints each
# ratio. Needs a Python with PyTorch built for CUDA (PYTHON, default python3) and the CUDA
# 13 libraries on LD_LIBRARY_PATH (scripts/build-cuda.sh says which).
#
#   scripts/bench-gpu.sh [ONEIRO_BIN] [PEERS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
oneiro=${1:-target/cuda/release/oneiro}
peers=${2:-../shared/peers}
# The device tool copies shared/ inside the working tree.
[ -d "$peers" ] || peers=shared/peers
py=${PYTHON:-python3}
device=${DEVICE:-cuda:0}
reps=${REPS:-3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for _ in $(seq "$reps"); do
  for w in text-train text-generate vae-train gan-train dream-step style-eval; do
    size=""
    [ "$w" = dream-step ] && size="--size 299x299"
    [ "$w" = style-eval ] && size="--size 128x192"
    # shellcheck disable=SC2086
    "$oneiro" bench $w --device "$device" $size 2>/dev/null | tail -n 1 | sed "s/^/ours-$w /" >>"$log" ||
      echo "ours-$w failed" >&2
    # shellcheck disable=SC2086
    "$py" "$peers/torch_peer.py" $w --device "$device" $size 2>/dev/null | tail -n 1 | sed "s/^/torch-$w /" >>"$log" ||
      echo "torch-$w failed" >&2
  done
done
cat "$log"
python3 scripts/ratios.py "$log"
