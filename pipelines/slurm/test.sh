#!/bin/bash
# `make test-slurm`: the batch scripts of this folder under a real SLURM (a one-node cluster
# started by local-cluster.sh; root), on a tiny demo dataset (pipelines/demo-tiny.toml).
#
# 1. A local run (no SLURM) makes the reference: every stage with explicit
#    --shard-index i --num-shards 3, then `tsn fuse`.
# 2. The same stages as SLURM jobs: decode.sh, flow.sh, score.sh as arrays 0-2 and train.sh
#    per modality, chained with --dependency=afterok; resources scaled down on the sbatch
#    command line. Every shard folder must be complete (`tsn index`), every shard
#    byte-identical to the reference's, and the fused result identical.
# 3. flow.sh again; one array task is cancelled (scancel <job>_1) while its shard is half
#    done; `tsn index` must name it for resubmission, `--array=1` resumes it, and the shard
#    set must again be byte-identical to the reference.
#
# Both runs write under the same relative paths (out/demo-tiny, the reference then moved to
# out/demo-tiny-local), because shards record the paths of their inputs. Every wait is
# bounded (TEST_SLURM_WAIT seconds per wait); the cluster is stopped on any exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

export DATASET=demo-tiny SPLIT=1 NUM_SHARDS=3
OUT=out/$DATASET
REF=out/$DATASET-local
LIST=$OUT/lists/split$SPLIT.csv
RUN=$OUT/split$SPLIT
TSN=(.venv/bin/tsn --config "pipelines/$DATASET.toml")
WAIT=${TEST_SLURM_WAIT:-300}
MODELS=(rgb warped)         # two streams: enough for a fusion
FUSE=()
for m in "${MODELS[@]}"; do FUSE+=(--scores "$m=$OUT/split$SPLIT/scores-$m"); done
# a CPU node of 2 cores: one core per task, no GPU; logs next to the outputs
SB=(-c 1 --mem=2G --gres=none --time=00:15:00 -o "$OUT/logs/%x-%A_%a.out")
SB_TRAIN=(-c 1 --mem=3G --gres=none --time=00:15:00 -o "$OUT/logs/%x-%j.out")
unset GPUS                  # train.sh finds no GPU here: one torchrun process (device "cpu", TOML)

say() { echo "== test-slurm: $*"; }
fail() { echo "test-slurm: FAILED: $*" >&2; exit 1; }

# submit SBATCH-ARGS...: the job id
submit() {
    sbatch --parsable "$@" || fail "sbatch refused: sbatch $*"
}

# inputs MODALITY: INPUT=(the stage's input option) as the scripts choose it
inputs() { case "$1" in rgb) INPUT=(--frames "$OUT/frames") ;; *) INPUT=(--flow "$OUT/flow") ;; esac; }

# wait_jobs ID...: until none is pending or running (bounded), then each must have COMPLETED
wait_jobs() {
    local ids deadline id info bad=""
    ids=$(IFS=,; echo "$*")
    deadline=$((SECONDS + WAIT))
    while [ -n "$(squeue -h -j "$ids" -t PD,R,CG,CF,S -o %i 2>/dev/null)" ]; do
        if [ $SECONDS -ge $deadline ]; then
            squeue -j "$ids" >&2 || true
            fail "jobs $ids still queued or running after ${WAIT}s"
        fi
        sleep 2
    done
    for id in "$@"; do     # one line per array task
        info=$(scontrol -o show job "$id") || fail "slurmctld has no record of job $id"
        bad+=$(grep -v 'JobState=COMPLETED' <<< "$info" || true)$'\n'
    done
    bad=$(grep . <<< "$bad" || true)
    if [ -n "$bad" ]; then
        while read -r info; do
            grep -o '\<JobId=[0-9]*\|ArrayJobId=[0-9]*\|ArrayTaskId=[0-9]*\|JobState=[A-Z_]*\|Reason=[^ ]*\|StdOut=[^ ]*' <<< "$info" | paste -sd' ' >&2
        done <<< "$bad"
        tail -n 5 "$OUT"/logs/*.out >&2 || true
        fail "not every job of $ids completed (logs: $OUT/logs)"
    fi
}

# same_shards SUB: every *.h5 of OUT/SUB byte-identical to REF/SUB's, none missing or extra
same_shards() {
    local f n=0
    for f in "$REF/$1"/*.h5; do
        cmp "$f" "$OUT/$1/${f##*/}" || fail "$OUT/$1/${f##*/} differs from the local run's"
        n=$((n + 1))
    done
    [ "$n" = "$NUM_SHARDS" ] || fail "$REF/$1 holds $n shards, not $NUM_SHARDS"
    [ "$(compgen -G "$OUT/$1/*.h5" | wc -l)" = "$NUM_SHARDS" ] || fail "$OUT/$1 holds other shards than $NUM_SHARDS"
    echo "$OUT/$1: $n shards byte-identical to the local run's"
}

# same_scores MODALITY: the trained weights and every score shard's contents equal the local
# run's. Not the bytes: a checkpoint records its epochs' wall-clock seconds, so its sha256,
# which score shards record, differs between two trainings that are otherwise bit-identical.
same_scores() {
    .venv/bin/python - "$REF/split$SPLIT" "$RUN" "$1" "$NUM_SHARDS" <<'EOF' || fail "$RUN: $1 differs from the local run's"
import json, sys
import h5py, numpy as np, torch

ref, run, m, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def same(x, y, where):
    ax = {k: v for k, v in x.attrs.items()}
    ay = {k: v for k, v in y.attrs.items()}
    if where == "/":            # the config names the checkpoint by its sha256 (see above),
        cx, cy = json.loads(ax.pop("config")), json.loads(ay.pop("config"))   # and the root
        cx.pop("checkpoint_sha256"), cy.pop("checkpoint_sha256")              # checksum
        ax.pop("crc32"), ay.pop("crc32")                                      # covers it
        assert cx == cy, f"{where}: config {cx} != {cy}"
    assert ax.keys() == ay.keys(), f"{where}: attributes {sorted(ax)} != {sorted(ay)}"
    for k in ax:
        assert np.array_equal(ax[k], ay[k]), f"{where}: attribute {k} differs"
    if isinstance(x, h5py.Dataset):
        assert x.dtype == y.dtype and np.array_equal(x[()], y[()]), f"{where}: data differ"
    else:
        assert x.keys() == y.keys(), f"{where}: {sorted(x)} != {sorted(y)}"
        for k in x:
            same(x[k], y[k], f"{where.rstrip('/')}/{k}")


def check():
    a, b = (torch.load(f"{d}/train-{m}/checkpoint.pt", weights_only=True) for d in (ref, run))
    assert a["model"].keys() == b["model"].keys(), f"train-{m}: other parameters"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"train-{m}: weights {k} differ"
    for i in range(n):
        name = f"scores-{m}/scores-{i}-of-{n}.h5"
        with h5py.File(f"{ref}/{name}", "r") as x, h5py.File(f"{run}/{name}", "r") as y:
            try:
                same(x, y, "/")
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from None


try:
    check()
except AssertionError as exc:
    sys.exit(f"{run}: {exc}")
print(f"{run}/scores-{m}: weights and {n} score shards equal to the local run's")
EOF
}

# index FOLDER KIND: `tsn index` must find every shard complete
index() {
    local list=()
    [ "$2" = scores ] || list=(--list "$LIST")     # scores hold the test split only
    .venv/bin/tsn index "$1" --kind "$2" --num-shards "$NUM_SHARDS" "${list[@]}" \
        || fail "tsn index $1: not every shard is complete"
}

cluster=$(mktemp -d)
finish() {
    local rc=$?
    [ $rc = 0 ] || tail -n 20 "$cluster"/log/slurm*.log >&2 2>/dev/null || true
    pipelines/slurm/local-cluster.sh stop "$cluster" || true
    rm -rf "$cluster"
    exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM
start=$SECONDS

say "data and list ($OUT)"
rm -rf "$OUT" "$REF"
"${TSN[@]}" make-demo-data "$OUT/data"
"${TSN[@]}" make-list ucf101 "$PWD/$OUT/data" --out "$LIST"

say "local reference run"
for i in 0 1 2; do
    "${TSN[@]}" decode "$LIST" --out "$OUT/frames" --shard-index $i --num-shards 3 --workers 1 --no-progress >/dev/null
done
for i in 0 1 2; do
    "${TSN[@]}" flow "$OUT/frames/frames-$i-of-3.h5" --out "$OUT/flow" --shard-index $i --num-shards 3 \
        --workers 1 --no-progress >/dev/null
done
mkdir -p "$RUN"
for m in "${MODELS[@]}"; do
    inputs "$m"
    "${TSN[@]}" train --modality "$m" "${INPUT[@]}" --list "$LIST" --workers 1 --out "$RUN/train-$m" > "$RUN/train-$m.json"
    for i in 0 1 2; do
        "${TSN[@]}" score "$RUN/train-$m/checkpoint.pt" "${INPUT[@]}" --list "$LIST" --split test \
            --out "$RUN/scores-$m" --shard-index $i --num-shards 3 --workers 1 --no-progress >/dev/null
    done
done
"${TSN[@]}" fuse "${FUSE[@]}" --out "$RUN/fused"
mkdir -p "$REF"
mv "$OUT/frames" "$OUT/flow" "$RUN" "$REF/"
say "local run: $((SECONDS - start)) s"

say "one-node cluster"
pipelines/slurm/local-cluster.sh start "$cluster"
export SLURM_CONF=$cluster/slurm.conf
sinfo

say "submit: decode -> flow -> train rgb, warped -> score rgb, warped (afterok chains)"
mkdir -p "$OUT/logs"
decode=$(submit "${SB[@]}" --array=0-2 pipelines/slurm/decode.sh)
flow=$(submit "${SB[@]}" --array=0-2 --dependency=afterok:"$decode" pipelines/slurm/flow.sh)
train_rgb=$(MODALITY=rgb submit "${SB_TRAIN[@]}" --dependency=afterok:"$decode" pipelines/slurm/train.sh)
train_warped=$(MODALITY=warped submit "${SB_TRAIN[@]}" --dependency=afterok:"$flow" pipelines/slurm/train.sh)
score_rgb=$(MODALITY=rgb submit "${SB[@]}" --array=0-2 --dependency=afterok:"$train_rgb" pipelines/slurm/score.sh)
score_warped=$(MODALITY=warped submit "${SB[@]}" --array=0-2 --dependency=afterok:"$train_warped" pipelines/slurm/score.sh)
echo "jobs: decode $decode, flow $flow, train $train_rgb $train_warped, score $score_rgb $score_warped"
wait_jobs "$decode" "$flow" "$train_rgb" "$train_warped" "$score_rgb" "$score_warped"
say "all jobs completed: $((SECONDS - start)) s"

index "$OUT/frames" frames
index "$OUT/flow" flow
for m in "${MODELS[@]}"; do index "$RUN/scores-$m" scores; done
same_shards frames
same_shards flow
for m in "${MODELS[@]}"; do same_scores "$m"; done
"${TSN[@]}" fuse "${FUSE[@]}" --out "$RUN/fused"
for f in fused.json predictions.csv confusion.csv; do
    cmp "$REF/split$SPLIT/fused/$f" "$RUN/fused/$f" || fail "$RUN/fused/$f differs from the local run's"
done
echo "$RUN/fused: identical to the local run's"

say "kill one flow task mid-run, resubmit it"
rm -rf "$OUT/flow"
parts=$OUT/flow/.flow-1-of-3.h5.parts
killed=""
for attempt in 1 2 3; do
    if [ $attempt = 1 ]; then
        job=$(submit "${SB[@]}" --array=0-2 pipelines/slurm/flow.sh)
    else    # task 1 finished before the cancel landed: take its shard away and try again
        rm -f "$OUT/flow/flow-1-of-3".*
        job=$(submit "${SB[@]}" --array=1 pipelines/slurm/flow.sh)
    fi
    deadline=$((SECONDS + WAIT))
    # wait until task 1 has stored a video (a part) while its shard is not assembled yet
    until compgen -G "$parts/*.h5" >/dev/null || [ -e "$OUT/flow/flow-1-of-3.h5" ]; do
        [ $SECONDS -lt $deadline ] || fail "flow task ${job}_1 stored no video in ${WAIT}s"
        sleep 0.1
    done
    scancel "${job}_1"
    echo "cancelled ${job}_1 after it stored $(compgen -G "$parts/*.h5" | wc -l) of its videos"
    deadline=$((SECONDS + WAIT))
    while [ -n "$(squeue -h -j "$job" -t PD,R,CG,CF,S -o %i 2>/dev/null)" ]; do
        [ $SECONDS -lt $deadline ] || fail "flow job $job still running ${WAIT}s after the cancel"
        sleep 1
    done
    state=$(scontrol -o show job "${job}_1" | grep -o 'JobState=[A-Z_]*')
    if [ "$state" = JobState=CANCELLED ] && [ ! -e "$OUT/flow/flow-1-of-3.h5" ]; then
        killed=$job
        break
    fi
    echo "task ${job}_1 ended as $state with its shard written before the cancel; again"
done
[ -n "$killed" ] || fail "could not cancel flow task 1 before it finished (3 tries)"

say "tsn index after the cancel: must exit 1 and name shard 1 for resubmission"
if .venv/bin/tsn index "$OUT/flow" --kind flow --num-shards 3 --list "$LIST"; then
    fail "tsn index $OUT/flow reports no shard to redo after task 1 was cancelled"
fi
resubmit=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["resubmit"])' "$OUT/flow/index.json")
[ "$resubmit" = 1 ] || fail "tsn index says resubmit '$resubmit', expected '1'"
job=$(submit "${SB[@]}" --array="$resubmit" pipelines/slurm/flow.sh)
echo "resubmitted: sbatch --array=$resubmit pipelines/slurm/flow.sh -> job $job"
wait_jobs "$job"
grep -q '"resumed": [1-9]' "$OUT/logs/tsn-flow-${job}_1.out" \
    || fail "the resubmitted task did not resume from the cancelled one's videos ($OUT/logs/tsn-flow-${job}_1.out)"
index "$OUT/flow" flow
same_shards flow

say "passed in $((SECONDS - start)) s"
