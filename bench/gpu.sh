#!/usr/bin/env bash
# The GPU benchmarks as one command for a CUDA machine, run after `make install` and nothing
# else (no data, no weights, no network: the clips ship in tests/data, shards are made on the
# spot). About 5 minutes on one H200, compile included; 8 at most.
# Results: bench/results/flow_gpu.json (torch TV-L1 pairs/s at 340x256, default settings,
# batch 1..256, peak memory), train_gpu.json (resnet50 bf16 clips/s and its DataLoader),
# score_gpu.json (crops/s), jpeg_decode_cuda.json (JPEG frames/s decoded by nvJPEG on the GPU
# against OpenCV on one CPU core: whether training/scoring input should decode on the GPU).
# QUICK=1 bench/gpu.sh runs the same code paths on the CPU in a few minutes (a machine
# without a GPU checks the script that way; results *_cpu_fallback.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "${QUICK:-0}" = 1 ]; then
    $PY bench/flow.py --gpu --device cpu --quick --out bench/results/flow_gpu_cpu_fallback.json
    $PY bench/train.py --gpu --quick
    $PY bench/score.py --device cpu --quick --out-name score_gpu_cpu_fallback
    $PY bench/jpeg_decode.py --device cpu --quick
else
    $PY bench/flow.py --gpu
    $PY bench/train.py --gpu
    $PY bench/score.py --device cuda --workers 8 --out-name score_gpu
    $PY bench/jpeg_decode.py --device cuda
fi
