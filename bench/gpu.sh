#!/usr/bin/env bash
# The GPU benchmarks as one command for a CUDA machine (a few minutes on one H200).
# Results: bench/results/flow_gpu.json, train_gpu.json, score_gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
$PY bench/flow.py --gpu
$PY bench/train.py --gpu
$PY bench/score.py --device cuda --workers 8 --out-name score_gpu
