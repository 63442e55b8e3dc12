#!/bin/bash
# TV-L1 and warped flow, one shard per array task: frame shard i -> flow shard i (same videos).
#
#   NUM_SHARDS=64 sbatch --array=0-63 --export=ALL pipelines/slurm/flow.sh
#   # or chained after decode:  sbatch --dependency=afterok:<decode job id> ...
#   make ucf101-index NUM_SHARDS=64                          # missing / failed shards
#
# The flow stage uses the GPU when there is one; settings in pipelines/$DATASET.toml [flow].
#SBATCH --job-name=tsn-flow
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=08:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
: "${NUM_SHARDS:?export NUM_SHARDS (the size of the whole array, e.g. 64)}"
DATASET=${DATASET:-ucf101}
OUT=${OUT:-out/$DATASET}
I=$SLURM_ARRAY_TASK_ID
cd "${SLURM_SUBMIT_DIR:-.}"
exec .venv/bin/tsn --config "pipelines/$DATASET.toml" flow \
    "$OUT/frames/frames-$I-of-$NUM_SHARDS.h5" --out "$OUT/flow" \
    --shard-index "$I" --num-shards "$NUM_SHARDS" --workers "${SLURM_CPUS_PER_TASK:-1}" --no-progress
