#!/usr/bin/env bash
# Every GPU figure of the project in one command (issue 11): run it on a CUDA machine, paste the JSON line.
#
#   bash benchmarks/gpu_check.sh            # one CUDA GPU, under 10 minutes
#   bash benchmarks/gpu_check.sh --dry-run  # the same sequence on CPU with tiny settings (18-60 s)
#
# Steps (bf16 + channels_last + torch.compile wherever the training step runs):
#   1. benchmarks/throughput.py, ResNet-18 (width 1) at 32 px, batch 512: encoder alone vs whole step,
#      ops/step, host syncs/step (torch.cuda.set_sync_debug_mode), peak memory;
#   2. the same for ResNet-50 (width 1) at 224 px, batch 256 (synthetic images resized on the device to
#      224 px: the ImageNet augmentation and model cost, without the loader);
#   3. benchmarks/loader.py on ../shared/data/photos (or shared/data/photos) when present, else on 64
#      generated 500x375 JPEGs: source images/s per loader core at 224 px;
#   4. a one-GPU torchrun run (`torchrun --standalone --nproc_per_node 1 -m simclr pretrain --data synthetic
#      --epochs 1 --device cuda`): exit status and images/s from metrics.jsonl; plus a one-rank NCCL
#      all_reduce/all_gather smoke test (with WORLD_SIZE 1 simclr itself creates no process group);
#   5. two CIFAR-10 epochs, ResNet-18 width 1, batch 512, compiled: --data cifar10 when the archive is in
#      the cache ($SIMCLR_DATA_DIR or ~/.cache/simclr), else the cifar10-jpeg folder of shared/data, else
#      synthetic 32 px images (the JSON says which).
# Output: progress on stderr; on stdout ONE JSON line with every figure. Exit status 0 when every step
# succeeded, 1 when one failed (the JSON is printed all the same, with that step's exit_status), 2 when
# there is no CUDA GPU (without --dry-run) or the arguments are wrong.
# --dry-run: CPU, tiny widths, few steps, synthetic data, no compile, gloo instead of NCCL, 1 epoch; the
# same JSON keys. Environment: BIN (folder of the python to use; default .venv/bin, else the python on
# PATH), GPU_CHECK_DIR (where logs and outputs go; default a new temporary folder, kept).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
for a in "$@"; do
    case "$a" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$a' (only --dry-run)" >&2; exit 2 ;;
    esac
done

if [ -z "${BIN:-}" ]; then
    if [ -x .venv/bin/python ]; then BIN=.venv/bin; else BIN=$(dirname "$(command -v python3 || command -v python)"); fi
fi
PY="$BIN/python"
[ -x "$PY" ] || PY="$BIN/python3"
if [ ! -x "$PY" ]; then echo "gpu_check: no python in $BIN (set BIN to the folder of your environment's python)" >&2; exit 2; fi

if [ "$DRY" = 0 ]; then
    if ! why=$("$PY" -c 'import sys, torch
if not torch.cuda.is_available():
    print(f"no CUDA GPU is visible to PyTorch {torch.__version__}"); sys.exit(1)' 2>&1); then
        echo "gpu_check: ${why##*$'\n'}; run it on a CUDA machine, or pass --dry-run for the CPU rehearsal" >&2
        exit 2
    fi
fi

WORK=${GPU_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$WORK"
export SIMCLR_GPU_CHECK_WORK="$WORK"
# One compile cache for every step: the CIFAR run reuses the graphs of step 1 where they match.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor-cache}
START=$(date +%s)
: > "$WORK/status.txt"
: > "$WORK/notes.txt"

note() { echo "$1" >> "$WORK/notes.txt"; }
log() { echo "gpu_check [$(( $(date +%s) - START ))s] $*" >&2; }
# run NAME TIMEOUT CMD...: stdout+stderr to WORK/NAME.log; exit status and seconds to status.txt
run() {
    local name=$1 limit=$2; shift 2
    local t0=$(date +%s)
    log "$name: $*"
    timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    echo "$name $rc $(( $(date +%s) - t0 ))" >> "$WORK/status.txt"
    if [ "$rc" != 0 ]; then
        log "$name FAILED (exit $rc); last lines of $WORK/$name.log:"
        tail -n 5 "$WORK/$name.log" | sed 's/^/    /' >&2
    fi
    return 0
}

if [ "$DRY" = 1 ]; then
    MODE=dry-run
    TP=(--device cpu --precision fp32 --steps 1 --rounds 1 --count-steps 1)
    R18=(--arch resnet18 --width 0.125 --batch-size 32 --image-size 16 --synthetic-images 128)
    R50=(--arch resnet50 --width 0.125 --batch-size 8 --image-size 48 --synthetic-images 64)
    LOADER=(--image-size 64 --repeat 1 --warmup 2)
    NPHOTOS=8
    RUNDEV=(--device cpu --arch resnet18 --width 0.125 --batch-size 32 --data.image_size 16 --data.synthetic_train 128)
    BACKEND=gloo
    EPOCHS=1
    TLIM=180
else
    MODE=cuda
    TP=(--device cuda --precision bf16 --compile --steps 20 --rounds 3 --count-steps 2)
    R18=(--arch resnet18 --width 1 --batch-size 512 --image-size 32)
    R50=(--arch resnet50 --width 1 --batch-size 256 --image-size 224)
    LOADER=(--image-size 224 --repeat 3)
    NPHOTOS=64
    RUNDEV=(--device cuda --arch resnet18 --width 1 --batch-size 512)
    BACKEND=nccl
    EPOCHS=2
    TLIM=300
fi
log "mode $MODE, outputs and logs in $WORK"

# 1-2. encoder alone vs whole step
run resnet18_32px "$TLIM" "$PY" benchmarks/throughput.py --data synthetic "${TP[@]}" "${R18[@]}" --json "$WORK/resnet18_32px.json"
run resnet50_224px "$TLIM" "$PY" benchmarks/throughput.py --data synthetic "${TP[@]}" "${R50[@]}" --json "$WORK/resnet50_224px.json"

# 3. loader
PHOTOS=""
if [ "$DRY" = 0 ]; then
    for d in shared/data/photos ../shared/data/photos; do
        if [ -d "$d" ]; then PHOTOS=$d; break; fi
    done
fi
if [ -z "$PHOTOS" ]; then
    PHOTOS="$WORK/photos"
    [ "$DRY" = 1 ] || note "loader: no shared/data/photos; ran on $NPHOTOS generated 500x375 JPEGs (smooth random pictures, not photographs)"
    "$PY" - "$PHOTOS" "$NPHOTOS" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
out, n = Path(sys.argv[1]), int(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(n):
    # Smooth colour fields plus mild grain: closer to a photograph's JPEG size and decode cost than noise.
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
    arr = np.asarray(small, dtype=np.int16) + rng.integers(-12, 13, (375, 500, 3))
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out / f"gen_{i:03d}.jpg", quality=90)
PY
fi
run loader "$TLIM" "$PY" benchmarks/loader.py --data "$PHOTOS" "${LOADER[@]}" --json-only

# 4. torchrun, one process; and one-rank collectives on the backend torchrun jobs use
cat > "$WORK/collectives.py" <<'PY'
import os, sys, datetime, torch, torch.distributed as dist
backend = sys.argv[1]
dist.init_process_group(backend, timeout=datetime.timedelta(seconds=60))
dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
if dev.type == "cuda":
    torch.cuda.set_device(dev)
x = torch.arange(4.0, device=dev) + dist.get_rank()
dist.all_reduce(x)
out = torch.empty(dist.get_world_size() * 4, device=dev)
dist.all_gather_into_tensor(out, x)
dist.barrier()
ok = bool(torch.equal(out[:4].cpu(), torch.arange(4.0) * dist.get_world_size()))
dist.destroy_process_group()
print(f"{backend} collectives ok: {ok}")
sys.exit(0 if ok else 1)
PY
run collectives 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 "$WORK/collectives.py" "$BACKEND"
rm -rf "$WORK/torchrun"
run torchrun "$TLIM" "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m simclr pretrain --data synthetic \
    "${RUNDEV[@]}" --epochs 1 --out "$WORK/torchrun" --train.progress false --monitor.knn_every 0

# 5. CIFAR-10 epochs
DD=${SIMCLR_DATA_DIR:-$HOME/.cache/simclr}
CIFAR=(synthetic)
if [ "$DRY" = 1 ]; then
    CIFAR_DATA=synthetic
elif [ -f "$DD/cifar-10-batches-py/data_batch_1" ] || [ -f "$DD/cifar-10-python.tar.gz" ]; then
    CIFAR_DATA=cifar10; CIFAR=(cifar10)
elif [ -d shared/data/cifar10-jpeg/train ]; then
    CIFAR_DATA=shared/data/cifar10-jpeg/train; CIFAR=("$CIFAR_DATA")
elif [ -d ../shared/data/cifar10-jpeg/train ]; then
    CIFAR_DATA=../shared/data/cifar10-jpeg/train; CIFAR=("$CIFAR_DATA")
else
    CIFAR_DATA=synthetic; CIFAR=(synthetic --data.synthetic_train 50000)
    note "cifar10: no CIFAR-10 archive in $DD and no shared/data/cifar10-jpeg; ran on 50,000 synthetic 32 px images"
fi
rm -rf "$WORK/cifar10"
if [ "$DRY" = 1 ]; then
    run cifar10 "$TLIM" "$PY" -m simclr pretrain --data synthetic "${RUNDEV[@]}" --epochs "$EPOCHS" --out "$WORK/cifar10" \
        --train.progress false --monitor.knn_every 0
else
    run cifar10 "$TLIM" "$PY" -m simclr pretrain --data "${CIFAR[@]}" "${RUNDEV[@]}" --epochs "$EPOCHS" --out "$WORK/cifar10" \
        --train.progress false --train.compile true
fi

# The JSON line
"$PY" - "$WORK" "$MODE" "$PHOTOS" "$CIFAR_DATA" "$BACKEND" "$START" <<'PY'
import json, math, os, sys, time
from pathlib import Path
import torch
work, mode, photos, cifar_data, backend, start = Path(sys.argv[1]), *sys.argv[2:6], float(sys.argv[6])
status = {}
for line in (work / "status.txt").read_text().splitlines():
    name, rc, secs = line.split()
    status[name] = (int(rc), int(secs))

def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

def last_json_line(path):
    try:
        lines = [l for l in Path(path).read_text().splitlines() if l.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None

def metrics(folder):
    try:
        return [json.loads(l) for l in (Path(folder) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    except (OSError, ValueError):
        return []

def step(name, **extra):
    rc, secs = status.get(name, (None, None))
    return {"exit_status": rc, "wall_s": secs, **extra}

KEYS = ("encoder_images_per_sec", "step_images_per_sec", "ratio", "ops_per_step", "top_level_ops_per_step", "optimizer_ops_per_step", "syncs_per_step",
        "gpu_kernels_per_step", "peak_memory_gib", "precision", "compile", "channels_last", "arch", "width", "batch_size",
        "image_size", "warmup_s", "sync_breakdown")
out = {"gpu_check": mode, "ok": True}
peak = {}
for name in ("resnet18_32px", "resnet50_224px"):
    r = read_json(work / f"{name}.json") or {}
    out[name] = step(name, **{k: r.get(k) for k in KEYS})
    peak[name] = r.get("peak_memory_gib")
out["peak_memory_gib"] = peak
lo = last_json_line(work / "loader.log") or {}
out["loader"] = step("loader", images_per_sec_per_core=lo.get("images_per_sec"), ratio_new_over_baseline=lo.get("ratio"),
                     images=lo.get("images"), image_size=lo.get("image_size"), data=photos, cpu_cores=os.cpu_count(),
                     cpu=lo.get("cpu"))
m = metrics(work / "torchrun")
out["torchrun"] = step("torchrun", nproc_per_node=1, backend=backend, images_per_sec=m[-1]["images_per_sec"] if m else None,
                       loss=m[-1]["loss"] if m else None,
                       note="WORLD_SIZE 1: simclr runs without a process group; 'collectives' checks the backend")
out["collectives"] = step("collectives", backend=backend)
m = metrics(work / "cifar10")
out["cifar10"] = step("cifar10", data=cifar_data, epochs=len(m), images_per_sec=[r["images_per_sec"] for r in m],
                      epoch_time_s=[r["epoch_time"] for r in m], loss=[r["loss"] for r in m],
                      knn_top1=next((r["knn_top1"] for r in reversed(m) if "knn_top1" in r), None),
                      knn_time_s=next((r["knn_time"] for r in reversed(m) if "knn_time" in r), None))
failed = [n for n, (rc, _) in status.items() if rc != 0]
losses = [l for l in (out["cifar10"]["loss"] or [])] + ([out["torchrun"]["loss"]] if out["torchrun"]["loss"] is not None else [])
if any(not math.isfinite(l) for l in losses):
    failed.append("non-finite loss")
out["ok"] = not failed
out["failed"] = failed
out["device"] = torch.cuda.get_device_name(0) if mode == "cuda" else "cpu"
out["torch"] = torch.__version__
out["cuda"] = torch.version.cuda
out["notes"] = [l for l in (work / "notes.txt").read_text().splitlines() if l]
out["work_dir"] = str(work)
out["wall_s"] = round(time.time() - start, 1)
print(json.dumps(out))
sys.exit(0 if out["ok"] else 1)
PY
rc=$?
if [ "$rc" != 0 ]; then
    echo "gpu_check: failed steps: $(awk '$2 != 0 {printf "%s(exit %s) ", $1, $2}' "$WORK/status.txt")(logs in $WORK)" >&2
fi
exit "$rc"
