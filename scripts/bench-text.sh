#!/usr/bin/env bash
# Times Oneiro's text workloads and the PyTorch and Keras peers in one run, on this
# machine, with the same thread count, and prints each result with its ratio.
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
run() { "$@" 2>/dev/null | tail -n 1; }
ours_train=$(run $oneiro bench text-train --threads "$threads" --device cpu)
torch_train=$(run $py "$peers/torch_peer.py" text-train --threads "$threads")
keras_train=$(run $py "$peers/keras_peer.py" text-train --threads "$threads")
ours_gen=$(run $oneiro bench text-generate --threads "$threads" --device cpu)
torch_gen=$(run $py "$peers/torch_peer.py" text-generate --threads "$threads")
echo "$ours_train"; echo "$torch_train"; echo "$keras_train"; echo "$ours_gen"; echo "$torch_gen"
python3 - "$ours_train" "$torch_train" "$keras_train" "$ours_gen" "$torch_gen" <<'PY'
import json, sys
o, t, k, og, tg = (json.loads(a) for a in sys.argv[1:])
print(f"text-train    oneiro {o['sequences_per_s']:.0f} seq/s | pytorch {t['sequences_per_s']:.0f} "
      f"(x{o['sequences_per_s']/t['sequences_per_s']:.2f}) | keras {k['sequences_per_s']:.0f} "
      f"(x{o['sequences_per_s']/k['sequences_per_s']:.2f})")
print(f"text-generate oneiro {og['chars_per_s']:.0f} chars/s | pytorch {tg['chars_per_s']:.0f} "
      f"(x{og['chars_per_s']/tg['chars_per_s']:.2f})")
PY
if [ -f "$corpus" ]; then
  $oneiro bench text-prepare --corpus "$corpus"
fi
