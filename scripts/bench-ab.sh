#!/usr/bin/env bash
# A/B of two builds of `oneiro` on every workload, interleaved on the same machine: the
# check a refactor passes ("behaviour and speed unchanged"). Each workload runs REPS
# times per build (default 3), alternating A and B; the best run of each counts, and
# the ratio B/A is printed (rates: above 1 means B is faster).
#
#   git worktree add --detach /tmp/base REV && (cd /tmp/base && cargo build --release --bin oneiro)
#   cargo build --release --bin oneiro
#   scripts/bench-ab.sh /tmp/base/target/release/oneiro target/release/oneiro [THREADS]
set -euo pipefail
a=${1:?usage: $0 ONEIRO-A ONEIRO-B [THREADS]}
b=${2:?usage: $0 ONEIRO-A ONEIRO-B [THREADS]}
threads=${3:-2}
reps=${REPS:-3}
workloads=${WORKLOADS:-text-train text-generate vae-train gan-train dream-step style-eval}
log=$(mktemp)
for _ in $(seq "$reps"); do
  for w in $workloads; do
    args=""
    [ "$w" = gan-train ] && args="--steps ${GAN_STEPS:-4}"
    [ "$w" = dream-step ] && args="--size 299x299"
    [ "$w" = style-eval ] && args="--size 128x192"
    for side in a b; do
      bin=$a
      [ $side = b ] && bin=$b
      "$bin" bench $w --threads "$threads" --device cpu $args 2>/dev/null | tail -n 1 | sed "s/^/$side-$w /" >>"$log"
    done
  done
done
python3 - "$log" <<'PY'
import json, sys
keys = {"text-train": "sequences_per_s", "text-generate": "chars_per_s", "vae-train": "images_per_s",
        "gan-train": "steps_per_s", "dream-step": "seconds_per_step", "style-eval": "seconds_per_eval"}
runs = {}
for line in open(sys.argv[1]):
    tag, _, js = line.partition(" ")
    runs.setdefault(tag, []).append(json.loads(js))
rate = lambda r, k: 1 / r[k] if k.startswith("seconds") else r[k]
print(f"{'workload':14} {'A best':>10} {'B best':>10} {'B/A':>6}   all A | all B (rates)")
for w, k in keys.items():
    if f"a-{w}" not in runs:
        continue
    ra = [rate(r, k) for r in runs[f"a-{w}"]]
    rb = [rate(r, k) for r in runs[f"b-{w}"]]
    fmt = lambda v: ", ".join(f"{x:.4g}" for x in v)
    print(f"{w:14} {max(ra):10.4g} {max(rb):10.4g} {max(rb) / max(ra):6.3f}   {fmt(ra)} | {fmt(rb)}")
PY
rm -f "$log"
