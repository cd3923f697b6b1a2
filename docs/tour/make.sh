#!/usr/bin/env bash
# Draws every picture of docs/tour.md, on CPU, in about five minutes: the synthetic set (no download) and, for
# the views of real photographs, the CIFAR-10 images of ../shared/data/cifar10-jpeg (skipped when absent).
#   bash docs/tour/make.sh            (writes docs/tour/*.png; the runs go to runs/tour/)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
OUT=docs/tour
RUNS=runs/tour
rm -rf "$RUNS" && mkdir -p "$RUNS"
# 1. the two views
CIFAR=${CIFAR10_JPEG:-../shared/data/cifar10-jpeg}
if [ -d "$CIFAR/test" ]; then
  "$BIN/simclr" views --data "$CIFAR/test" --n 8 --rows 8 --out "$RUNS/views-cifar" --device cpu
  cp "$RUNS/views-cifar/views.png" "$OUT/views-cifar.png"
fi
# 2. training: the demo pretrains a ResNet-18 (width 0.125) on 4,000 synthetic images for 10 epochs
"$BIN/simclr" demo --out "$RUNS/demo" --device cpu
cp "$RUNS/demo/metrics.png" "$OUT/metrics.png"
cp "$RUNS/demo/views.png" "$OUT/views-synthetic.png"
# 3. alignment, uniformity, rank: the trained encoder, then a random one
"$BIN/simclr" analyze --checkpoint "$RUNS/demo" --data synthetic:test --out "$RUNS/analyze-trained" --json | tail -1 > "$RUNS/analyze-trained.json"
"$BIN/simclr" analyze --random-init --arch resnet18 --width 0.125 --image-size 32 --data synthetic:test --out "$RUNS/analyze-random" --json | tail -1 > "$RUNS/analyze-random.json"
cp "$RUNS/analyze-trained/map.png" "$OUT/map-trained.png"
cp "$RUNS/analyze-random/map.png" "$OUT/map-random.png"
cp "$RUNS/analyze-trained/neighbours.png" "$OUT/neighbours-trained.png"
# 4. what collapse looks like: the trained run with its last stage's output forced to one value
"$BIN/python" docs/tour/collapse.py "$RUNS/demo" "$RUNS/collapsed"
"$BIN/simclr" analyze --checkpoint "$RUNS/collapsed" --data synthetic:test --out "$RUNS/analyze-collapsed" --json | tail -1 > "$RUNS/analyze-collapsed.json"
cp "$RUNS/analyze-collapsed/map.png" "$OUT/map-collapsed.png"
# 5. what temperature does to the gradient
"$BIN/python" docs/tour/temperature.py "$RUNS/demo" "$OUT/temperature.png" | tee "$RUNS/temperature.txt"
for f in trained random collapsed; do echo "$f: $(cat "$RUNS/analyze-$f.json")"; done
