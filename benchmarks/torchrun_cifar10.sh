#!/usr/bin/env bash
# Issue 4, check 2: two CPU processes under torchrun on the CIFAR-10 subset, then a resumed run.
set -euo pipefail
cd "$(dirname "$0")/.."
SUB=${SUBSET_DIR:-.cache/cifar10-subset}
RUN=${RUN:-runs/torchrun-cifar10}
BIN=${BIN:-.venv/bin}
rm -rf "$RUN"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
time "$BIN/torchrun" --nproc_per_node 2 -m simclr pretrain --data "$SUB/train" --arch resnet18 --width 0.125 --epochs 2 \
    --batch-size 64 --out "$RUN" --device cpu --train.progress false
time "$BIN/torchrun" --nproc_per_node 2 -m simclr pretrain --data "$SUB/train" --arch resnet18 --width 0.125 --epochs 3 \
    --batch-size 64 --out "$RUN" --device cpu --train.progress false --resume
ls "$RUN"
cat "$RUN/metrics.jsonl"
