#!/usr/bin/env bash
# Everything that needs a GPU, in one go (for a lent GPU machine; see DEVELOPERS.md):
# the CUDA tests, the real-shape benchmarks on CUDA in bf16, fp16 and fp32 (images/s and the fraction
# of the GPU's measured matmul rate), then the main job (README command 1) in fp32 and auto. Results land in
# benchmarks/results/ and, when $OUT is set (the device tool), are copied there too.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test > /tmp/gpu-setup.log 2>&1 || { tail -20 /tmp/gpu-setup.log; exit 1; }
PY=.venv/bin/python
nvidia-smi || true
$PY -m pytest -q tests/test_cuda.py tests/test_featurizer.py 2>&1 | tail -15
for p in bf16 fp16; do
  timeout 240 $PY benchmarks/bench_real_shapes.py sd21 --device cuda --precision $p --images 8 --folder /tmp/sd21 2>&1 | tail -25
done
timeout 120 $PY benchmarks/bench_real_shapes.py sd21 --device cuda --precision fp32 --images 8 --folder /tmp/sd21 2>&1 | tail -25
for p in fp32 auto; do   # the main job on the GPU: its stage table is in each sweep.json
  rm -rf /tmp/gpu-sweep-$p
  timeout 300 .venv/bin/diffrep sweep --model mnist-ddpm --data mnist --device cuda --precision $p \
    --out /tmp/gpu-sweep-$p 2>&1 | grep -v "it/s" | tail -22
  cp /tmp/gpu-sweep-$p/sweep.json benchmarks/results/sweep-gpu-$p.json 2>/dev/null || true
done
if [ -n "${OUT:-}" ]; then cp benchmarks/results/real-shapes-sd21-cuda* benchmarks/results/sweep-gpu-*.json "$OUT"/ 2>/dev/null || true; fi
