#!/usr/bin/env bash
# Times Oneiro's text workloads and the PyTorch and Keras peers in one run, on this
# machine, with the same thread count, and prints each result with its ratio. Each
# program runs REPS times (default 3), interleaved, and its best run counts: the peers'
# timings vary by 2x from run to run on a shared 2-core machine.
#
#   scripts/bench-text.sh [THREADS] [PEERS_DIR] [CORPUS]
#
# Needs the peers' virtualenv at /tmp/peers (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
peers=${2:-../shared/peers}
corpus=${3:-../shared/data/text/nietzsche.txt}
py=/tmp/peers/bin/python
cargo build --release -q -p oneiro-client --bin oneiro
oneiro=target/release/oneiro
export TF_CPP_MIN_LOG_LEVEL=3
reps=${REPS:-3}
run() { "$@" 2>/dev/null | tail -n 1; }
log=$(mktemp)
for _ in $(seq "$reps"); do
  run $oneiro bench text-train --threads "$threads" --device cpu | sed 's/^/ours-train /' >>"$log"
  run $py "$peers/torch_peer.py" text-train --threads "$threads" | sed 's/^/torch-train /' >>"$log"
  run $py "$peers/keras_peer.py" text-train --threads "$threads" | sed 's/^/keras-train /' >>"$log"
  run $oneiro bench text-generate --threads "$threads" --device cpu | sed 's/^/ours-gen /' >>"$log"
  run $py "$peers/torch_peer.py" text-generate --threads "$threads" | sed 's/^/torch-gen /' >>"$log"
done
cat "$log"
python3 - "$log" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    tag, js = line.split(" ", 1)
    runs.setdefault(tag, []).append(json.loads(js))
best = lambda tag, key: max(runs[tag], key=lambda r: r[key])
o, t, k = (best(x, "sequences_per_s") for x in ("ours-train", "torch-train", "keras-train"))
og, tg = (best(x, "chars_per_s") for x in ("ours-gen", "torch-gen"))
print(f"best of {len(runs['ours-train'])} runs each:")
print(f"text-train    oneiro {o['sequences_per_s']:.0f} seq/s | pytorch {t['sequences_per_s']:.0f} "
      f"(x{o['sequences_per_s']/t['sequences_per_s']:.2f}) | keras {k['sequences_per_s']:.0f} "
      f"(x{o['sequences_per_s']/k['sequences_per_s']:.2f})")
print(f"text-generate oneiro {og['chars_per_s']:.0f} chars/s | pytorch {tg['chars_per_s']:.0f} "
      f"(x{og['chars_per_s']/tg['chars_per_s']:.2f})")
PY
rm -f "$log"
if [ -f "$corpus" ]; then
  $oneiro bench text-prepare --corpus "$corpus"
fi
