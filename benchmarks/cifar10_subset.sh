#!/usr/bin/env bash
# CIFAR-10 subset check of docs/benchmarks.md (issue 2, acceptance check 6), on CPU:
# 1,000 train / 200 test images per class from ../shared/data/cifar10-jpeg (or $CIFAR10_JPEG),
# the 8-epoch pretraining command with the default recipe, kNN of the trained encoder and of a
# random one, and the throughput benchmark on the same data. About 8 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${CIFAR10_JPEG:-../shared/data/cifar10-jpeg}
SUB=${SUBSET_DIR:-.cache/cifar10-subset}
RUN=${RUN:-runs/cifar10-subset}
BIN=${BIN:-.venv/bin}
"$BIN/python" benchmarks/make_subset.py "$SRC/train" "$SUB/train" --per-class 1000
"$BIN/python" benchmarks/make_subset.py "$SRC/test" "$SUB/test" --per-class 200
rm -rf "$RUN"
"$BIN/simclr" pretrain --data "$SUB/train" --arch resnet18 --width 0.25 --epochs 8 --batch-size 256 --out "$RUN" --device cpu
"$BIN/simclr" knn --checkpoint "$RUN" --train-data "$SUB/train" --test-data "$SUB/test" --json | tail -1 > "$RUN/knn_trained.json"
"$BIN/simclr" knn --random-init --arch resnet18 --width 0.25 --train-data "$SUB/train" --test-data "$SUB/test" --json | tail -1 > "$RUN/knn_random.json"
"$BIN/python" benchmarks/throughput.py --data "$SUB/train" --arch resnet18 --width 0.25 --batch-size 256 --device cpu --json "$RUN/throughput.json"
"$BIN/python" - "$RUN" <<'PY'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
t = json.loads((run / "knn_trained.json").read_text())["top1"]
r = json.loads((run / "knn_random.json").read_text())["top1"]
m = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
enc = json.loads((run / "throughput.json").read_text())["encoder_images_per_sec"]
steady = [x["images_per_sec"] for x in m[1:]]  # epoch 1 includes warm-up
rate = sum(steady) / len(steady)
print(json.dumps({"knn_trained_top1": t, "knn_random_top1": r, "gain": t - r,
                  "pretrain_images_per_sec": rate, "encoder_alone_images_per_sec": enc, "ratio": rate / enc}))
PY
