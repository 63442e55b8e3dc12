#!/usr/bin/env bash
# Every CPU benchmark, one after the other; run it on an otherwise idle machine.
# Results (with the machine's facts and load average): bench/results/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY bench/decode.py
$PY bench/read.py
$PY bench/flow.py
$PY bench/train.py
$PY bench/score.py --arch resnet18
$PY bench/startup.py
$PY bench/rawframes.py
$PY bench/fidelity.py
$PY bench/demo.py
