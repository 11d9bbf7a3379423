"""Reads the log of a benchmark script (lines `PROGRAM-WORKLOAD {json}`, PROGRAM one of
ours, torch, keras), keeps each program's best run per workload and prints it with ours as
a ratio to the faster peer. Used by bench-images.sh and bench-gpu.sh.

    python3 scripts/ratios.py LOG
"""
import json
import sys

# workload, the JSON field timed, its unit (fields in seconds are turned into rates)
WORKLOADS = (
    ("text-train", "sequences_per_s", "seq/s"),
    ("text-generate", "chars_per_s", "chars/s"),
    ("vae-train", "images_per_s", "images/s"),
    ("gan-train", "steps_per_s", "steps/s"),
    ("dream-step", "seconds_per_step", "steps/s"),
    ("style-eval", "seconds_per_eval", "evals/s"),
)

runs = {}
for line in open(sys.argv[1]):
    tag, _, js = line.partition(" ")
    try:
        runs.setdefault(tag, []).append(json.loads(js))
    except json.JSONDecodeError:
        pass


def rate(r, key):
    return 1 / r[key] if key.startswith("seconds") else r[key]


for w, key, unit in WORKLOADS:
    best = {p: max(rate(r, key) for r in runs[f"{p}-{w}"])
            for p in ("ours", "torch", "keras") if f"{p}-{w}" in runs}
    if "ours" not in best or len(best) < 2:
        if best:
            print(f"{w:13} missing: {sorted({'ours', 'torch'} - set(best))}")
        continue
    peer = max(v for p, v in best.items() if p != "ours")
    parts = " | ".join(f"{p} {v:.4g} {unit}" for p, v in best.items())
    print(f"{w:13} {parts} | ours / faster peer x{best['ours'] / peer:.2f}")
