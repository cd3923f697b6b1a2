#!/usr/bin/env bash
# CIFAR-10 subset evaluation of docs/benchmarks.md (issue 3): run after benchmarks/cifar10_subset.sh,
# which leaves the 8-epoch encoder in $RUN and the subset in $SUB. About 5 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SUB=${SUBSET_DIR:-.cache/cifar10-subset}
RUN=${RUN:-runs/cifar10-subset}
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/cifar10-eval}
mkdir -p "$OUT"
"$BIN/simclr" linear --checkpoint "$RUN" --train-data "$SUB/train" --test-data "$SUB/test" --solver lbfgs --json | tail -1 > "$OUT/linear_lbfgs.json"
"$BIN/simclr" linear --random-init --arch resnet18 --width 0.25 --train-data "$SUB/train" --test-data "$SUB/test" --solver lbfgs --json --out "$OUT/linear-random" | tail -1 > "$OUT/linear_lbfgs_random.json"
"$BIN/simclr" linear --checkpoint "$RUN" --train-data "$SUB/train" --test-data "$SUB/test" --solver sgd --epochs 10 --json --out "$OUT/linear-sgd" | tail -1 > "$OUT/linear_sgd10.json"
"$BIN/simclr" finetune --checkpoint "$RUN" --train-data "$SUB/train" --test-data "$SUB/test" --label-fraction 0.1 --json --out "$OUT/ft" | tail -1 > "$OUT/finetune.json"
"$BIN/simclr" finetune --random-init --arch resnet18 --width 0.25 --train-data "$SUB/train" --test-data "$SUB/test" --label-fraction 0.1 --json --out "$OUT/ft-random" | tail -1 > "$OUT/finetune_random.json"
/usr/bin/time -f "embed wall %e s" "$BIN/simclr" embed --checkpoint "$RUN" --data "$SUB" --out "$OUT/embed"
"$BIN/python" benchmarks/export_check.py --checkpoint "$RUN" --data "$SUB/test" --n 2000 | tail -1 > "$OUT/export_check.json"
"$BIN/simclr" analyze --checkpoint "$RUN" --data "$SUB/test" --out "$OUT/analyze" --json | tail -1 > "$OUT/analyze.json"
# A deliberately collapsed encoder: the trained run with every convolution zeroed, so all outputs are equal.
"$BIN/python" - "$RUN" "$OUT/collapsed" <<'PY'
import sys, pathlib, torch
from simclr.checkpoint import load_checkpoint, save_checkpoint
state = load_checkpoint(sys.argv[1])
for k, v in state["model"].items():
    if k.startswith("encoder.") and k.endswith(".weight") and v.dim() == 4:
        state["model"][k] = torch.zeros_like(v)
out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
save_checkpoint(state, out / "checkpoint.pt")
PY
"$BIN/simclr" analyze --checkpoint "$OUT/collapsed" --data "$SUB/test" --out "$OUT/analyze-collapsed" --json | tail -1 > "$OUT/analyze_collapsed.json"
for f in "$OUT"/*.json; do echo "$(basename "$f"): $(cat "$f")"; done
