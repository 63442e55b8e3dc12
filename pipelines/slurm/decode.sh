#!/bin/bash
# Decode videos to frame shards, one shard per array task.
#
#   make ucf101-list DATA=/data/UCF101                       # once, on the login node
#   NUM_SHARDS=64 sbatch --array=0-63 --export=ALL pipelines/slurm/decode.sh
#   make ucf101-index NUM_SHARDS=64                          # afterwards: what to resubmit
#   NUM_SHARDS=64 sbatch --array=3,17 --export=ALL pipelines/slurm/decode.sh   # resubmit those
#
# The shard index is the array task id itself and NUM_SHARDS is passed explicitly, so a
# resubmission of a few ids (--array=3,17) writes exactly those shards.
#SBATCH --job-name=tsn-decode
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
: "${NUM_SHARDS:?export NUM_SHARDS (the size of the whole array, e.g. 64)}"
DATASET=${DATASET:-ucf101}
SPLIT=${SPLIT:-1}
OUT=${OUT:-out/$DATASET}
cd "${SLURM_SUBMIT_DIR:-.}"
exec .venv/bin/tsn --config "pipelines/$DATASET.toml" decode "$OUT/lists/split$SPLIT.csv" \
    --out "$OUT/frames" --shard-index "$SLURM_ARRAY_TASK_ID" --num-shards "$NUM_SHARDS" \
    --workers "${SLURM_CPUS_PER_TASK:-1}" --no-progress
