#!/usr/bin/env bash
# Times Oneiro's image workloads (vae-train, gan-train, dream-step at 299x299, style-eval at
# 128x192; WORKLOADS="..." picks some) and the PyTorch and Keras peers in one run, on this machine, with the same thread count, and prints each
# with its ratio to the faster peer. Each program runs REPS times (default 3),
# interleaved; its best run counts.
#
#   scripts/bench-images.sh [THREADS] [PEERS_DIR]
#
# Needs the peers' virtualenv at /tmp/peers (see BENCHMARKS.md). gan-train is slow on a
# CPU (seconds per step): GAN_STEPS (default 5) sets the timed steps of every program.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
peers=${2:-../shared/peers}
py=/tmp/peers/bin/python
cargo build --release -q -p oneiro-client --bin oneiro
oneiro=target/release/oneiro
export TF_CPP_MIN_LOG_LEVEL=3
reps=${REPS:-3}
gan_steps=${GAN_STEPS:-5}
run() { "$@" 2>/dev/null | tail -n 1; }
log=$(mktemp)
workloads=${WORKLOADS:-vae-train gan-train dream-step style-eval}
for _ in $(seq "$reps"); do
  for w in $workloads; do
    steps=""
    [ "$w" = gan-train ] && steps="--steps $gan_steps"
    [ "$w" = dream-step ] && steps="--size 299x299"
    [ "$w" = style-eval ] && steps="--size 128x192"
    run $oneiro bench $w --threads "$threads" --device cpu $steps | sed "s/^/ours-$w /" >>"$log"
    run $py "$peers/torch_peer.py" $w --threads "$threads" $steps | sed "s/^/torch-$w /" >>"$log"
    run $py "$peers/keras_peer.py" $w --threads "$threads" $steps | sed "s/^/keras-$w /" >>"$log" || true
  done
done
cat "$log"
python3 scripts/ratios.py "$log"
rm -f "$log"
