#!/usr/bin/env bash
# Train the bundled text-to-image model scenes-t2i on a lent GPU (one device slot): the same command as
# on the CPU (README, ODISE), on CUDA in bf16, stopped by --time-limit so that the model is saved in the
# slot, continuing the bundled weights (--init-from scenes-t2i); then a short `panoptic train` smoke run on it. Everything lands in $OUT (the device tool brings
# it back): the run folder (model/, samples.png, pretrain.json, checkpoint.pt to resume here).
#   scripts/gpu-scenes-t2i.sh [MINUTES]     (default 7)
set -uo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-7}"
OUT="${OUT:-runs/gpu}"
scripts/setup.sh --test > /tmp/gpu-setup.log 2>&1 || { tail -20 /tmp/gpu-setup.log; exit 1; }
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv || true
export DIFFREP_CACHE=/tmp/diffrep-cache
$PY -m diffrep.cli pretrain --data panoptic-scenes --captions --resolution 32 --widths 16,32,64,128 \
    --layers-per-block 1 --batch-size 128 --lr 1e-3 --ema-decay 0.998 --init-from scenes-t2i --steps 100000 \
    --time-limit "$MINUTES" --device cuda \
    --precision bf16 --out "$OUT/scenes-t2i" 2>&1 | tr '\r' '\n' | grep -v "^pretrain:" | tail -8
tail -3 "$OUT/scenes-t2i/log.jsonl"
timeout 120 $PY -m diffrep.cli panoptic train --model "$OUT/scenes-t2i" --device cuda --epochs 1 \
    --train-images 256 --val-images 32 --out "$OUT/pan-smoke" 2>&1 | tr '\r' '\n' | grep -v "^epoch .*it/s" | tail -6
