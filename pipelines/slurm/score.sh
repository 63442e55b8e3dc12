#!/bin/bash
# Score the test split with a trained stream, one score shard per array task.
#
#   MODALITY=flow NUM_SHARDS=8 sbatch --array=0-7 --export=ALL pipelines/slurm/score.sh
#   tsn fuse --scores rgb=out/ucf101/split1/scores-rgb --scores flow=... --out out/ucf101/split1/fused
#SBATCH --job-name=tsn-score
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
: "${NUM_SHARDS:?export NUM_SHARDS (the size of the whole array)}"
DATASET=${DATASET:-ucf101}
SPLIT=${SPLIT:-1}
OUT=${OUT:-out/$DATASET}
MODALITY=${MODALITY:-rgb}
case "$MODALITY" in rgb|rgbdiff) INPUT=(--frames "$OUT/frames") ;; *) INPUT=(--flow "$OUT/flow") ;; esac
cd "${SLURM_SUBMIT_DIR:-.}"
exec .venv/bin/tsn --config "pipelines/$DATASET.toml" score \
    "$OUT/split$SPLIT/train-$MODALITY/checkpoint.pt" "${INPUT[@]}" \
    --list "$OUT/lists/split$SPLIT.csv" --split test --out "$OUT/split$SPLIT/scores-$MODALITY" \
    --shard-index "$SLURM_ARRAY_TASK_ID" --num-shards "$NUM_SHARDS" \
    --workers "${SLURM_CPUS_PER_TASK:-1}" --no-progress
