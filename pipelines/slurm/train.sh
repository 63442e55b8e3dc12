#!/bin/bash
# Train one TSN stream on all GPUs of one node (torchrun, data parallel).
#
#   MODALITY=rgb    sbatch --export=ALL pipelines/slurm/train.sh
#   MODALITY=flow   sbatch --export=ALL pipelines/slurm/train.sh
#   MODALITY=warped sbatch --export=ALL pipelines/slurm/train.sh
#
# The batch size in pipelines/$DATASET.toml [train] is the GLOBAL batch, split over the GPUs.
# A run killed by the time limit resumes from its checkpoint when resubmitted.
#SBATCH --job-name=tsn-train
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=32
#SBATCH --mem=128G
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
DATASET=${DATASET:-ucf101}
SPLIT=${SPLIT:-1}
OUT=${OUT:-out/$DATASET}
MODALITY=${MODALITY:-rgb}
# GPUs: $GPUS, else what SLURM allocated on this node, else what nvidia-smi lists, else 1
# (one process; the TOML's device decides where it runs)
if [ -z "${GPUS:-}" ]; then
    if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then GPUS=$SLURM_GPUS_ON_NODE
    elif command -v nvidia-smi > /dev/null; then GPUS=$(nvidia-smi -L 2> /dev/null | wc -l || true)
    else GPUS=1; fi
fi
[ "$GPUS" -ge 1 ] 2> /dev/null || GPUS=1
RUN="$OUT/split$SPLIT/train-$MODALITY"
case "$MODALITY" in rgb|rgbdiff) INPUT=(--frames "$OUT/frames") ;; *) INPUT=(--flow "$OUT/flow") ;; esac
RESUME=()
[ -f "$RUN/checkpoint.pt" ] && RESUME=(--resume)
cd "${SLURM_SUBMIT_DIR:-.}"
mkdir -p "$OUT/split$SPLIT"
.venv/bin/torchrun --standalone --nproc_per_node "$GPUS" .venv/bin/tsn \
    --config "pipelines/$DATASET.toml" train --modality "$MODALITY" "${INPUT[@]}" \
    --list "$OUT/lists/split$SPLIT.csv" --workers $(( ${SLURM_CPUS_PER_TASK:-8} / GPUS )) \
    --out "$RUN" "${RESUME[@]}" > "$RUN.json.tmp"
mv "$RUN.json.tmp" "$RUN.json"      # what `make <dataset>-train-<modality>` looks for
