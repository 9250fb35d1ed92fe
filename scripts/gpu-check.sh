#!/usr/bin/env bash
# Everything that needs a GPU, in one go (for a lent GPU machine; see DEVELOPERS.md):
# the CUDA tests, then the real-shape benchmarks on CUDA in bf16 and fp16. Results land in
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
if [ -n "${OUT:-}" ]; then cp benchmarks/results/real-shapes-sd21-cuda* "$OUT"/ 2>/dev/null || true; fi
