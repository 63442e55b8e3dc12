# Per-dataset, per-stage make targets (included by the top-level Makefile).
#
#   make <dataset>-<stage> [DATA=...] [SPLIT=1] [OUT=out/<dataset>] [NUM_SHARDS=1] [WORKERS=2] [GPUS=0]
#
# Every recipe is one `tsn --config pipelines/<dataset>.toml <command> ...` line; the TOML file
# holds the stage settings. Targets are the stages' own outputs (shard files, score files, the
# train summary), so make runs only what is missing, and the stages skip complete shards anyway:
# rerunning a finished stage does nothing. Decode and flow make one file per shard, so
# `make -j4 ucf101-flow NUM_SHARDS=4` runs four shards at once.
#
# Layout under OUT (frames and flow are decoded once; lists, runs and scores are per split):
#   lists/split<K>.csv                      make-list
#   frames/frames-<i>-of-<n>.h5             decode
#   flow/flow-<i>-of-<n>.h5                 flow (tvl1 + warped)
#   split<K>/train-<modality>/              train run (checkpoint.pt, metrics.png, ...)
#   split<K>/train-<modality>.json          train summary, written when training finished
#   split<K>/scores-<modality>/             score shards (test split)
#   split<K>/fused/                         fused.json, confusion.png, predictions.csv
#   split<K>/features-<modality>/           feature shards

SPLIT ?= 1
NUM_SHARDS ?= 1
WORKERS ?= 2
GPUS ?= 0
TSN = $(BIN)/tsn
MODALITIES := rgb flow warped

# shard files of one stage: $(call tsn_shards,<folder>,<kind>)
tsn_shards = $(foreach i,$(shell seq 0 $$(( $(NUM_SHARDS) - 1 ))),$(1)/$(2)-$(i)-of-$(NUM_SHARDS).h5)
# "3-of-8" -> 3 and 8
tsn_index = $(word 1,$(subst -of-, ,$(1)))
tsn_count = $(word 2,$(subst -of-, ,$(1)))
# the input shards of a modality: $(call tsn_inputs,<out>,<modality>)
tsn_inputs = $(if $(filter rgb rgbdiff,$(2)),--frames $(1)/frames,--flow $(1)/flow)
# `tsn train` on one node; torchrun across GPUS > 1 GPUs of the node
tsn_train = $(if $(filter-out 0 1,$(GPUS)),$(BIN)/torchrun --standalone --nproc_per_node $(GPUS) $(TSN),$(TSN))

TSN_DATASETS :=
TSN_HELP :=

# $(call tsn_dataset,<name>,<make-list adapter>,<data folder default>,<prerequisite of the list>)
define tsn_dataset
TSN_DATASETS += $(1)
# OUT= applies to the dataset whose targets are asked for (so datasets never share paths)
$(1)_OUT = $$(if $$(and $$(OUT),$$(filter $(1) $(1)-%,$$(MAKECMDGOALS))),$$(OUT),out/$(1))
$(1)_DATA = $$(if $$(DATA),$$(DATA),$(3))
$(1)_CFG = pipelines/$(1).toml
$(1)_LIST = $$($(1)_OUT)/lists/split$$(SPLIT).csv
$(1)_SPLITDIR = $$($(1)_OUT)/split$$(SPLIT)
$(1)_FRAMES = $$(call tsn_shards,$$($(1)_OUT)/frames,frames)
$(1)_FLOW = $$(call tsn_shards,$$($(1)_OUT)/flow,flow)
$(1)_FLOW_ARGS ?=

.PHONY: $(1)-list $(1)-decode $(1)-flow $(1)-train $(1)-score $(1)-fuse $(1)-features \
        $(1)-index $(1)-all $(foreach m,$(MODALITIES),$(1)-train-$(m) $(1)-score-$(m) $(1)-features-$(m))

$(1)-list: $$($(1)_LIST)
$(1)-decode: $$($(1)_FRAMES)
$(1)-flow: $$($(1)_FLOW)
$(1)-train: $(foreach m,$(MODALITIES),$(1)-train-$(m))
$(1)-score: $(foreach m,$(MODALITIES),$(1)-score-$(m))
$(1)-features: $(foreach m,$(MODALITIES),$(1)-features-$(m))
$(1)-fuse: $$($(1)_SPLITDIR)/fused/fused.json
$(1)-all: $(1)-fuse

$$($(1)_LIST): $(4) | $$(TSN)
	$$(if $$($(1)_DATA),,$$(error $(1): set DATA=<dataset folder> (see docs/PIPELINES.md)))
	$$(TSN) --config $$($(1)_CFG) make-list $(2) $$($(1)_DATA) --split $$(SPLIT) --out $$@

$$($(1)_OUT)/frames/frames-%.h5: | $$($(1)_LIST) $$(TSN)
	$$(TSN) --config $$($(1)_CFG) decode $$($(1)_LIST) --out $$(@D) --shard-index $$(call tsn_index,$$*) --num-shards $$(call tsn_count,$$*) --workers $$(WORKERS)

$$($(1)_OUT)/flow/flow-%.h5: $$($(1)_OUT)/frames/frames-%.h5 | $$(TSN)
	$$(TSN) --config $$($(1)_CFG) flow $$< --out $$(@D) --shard-index $$(call tsn_index,$$*) --num-shards $$(call tsn_count,$$*) --workers $$(WORKERS) $$($(1)_FLOW_ARGS)

$$($(1)_SPLITDIR)/train-rgb.json: $$($(1)_FRAMES) | $$($(1)_LIST)
$$($(1)_SPLITDIR)/train-flow.json $$($(1)_SPLITDIR)/train-warped.json: $$($(1)_FLOW) | $$($(1)_LIST)
$$($(1)_SPLITDIR)/train-%.json: | $$(TSN)
	mkdir -p $$(@D) && $$(tsn_train) --config $$($(1)_CFG) train --modality $$* $$(call tsn_inputs,$$($(1)_OUT),$$*) --list $$($(1)_LIST) --out $$(@D)/train-$$* $$(if $$(wildcard $$(@D)/train-$$*/checkpoint.pt),--resume) > $$@.tmp && mv $$@.tmp $$@

$$($(1)_SPLITDIR)/scores-%/scores-0-of-1.h5: $$($(1)_SPLITDIR)/train-%.json
	$$(TSN) --config $$($(1)_CFG) score $$($(1)_SPLITDIR)/train-$$*/checkpoint.pt $$(call tsn_inputs,$$($(1)_OUT),$$*) --list $$($(1)_LIST) --split test --out $$(@D)

$$($(1)_SPLITDIR)/fused/fused.json: $(foreach m,$(MODALITIES),$$($(1)_SPLITDIR)/scores-$(m)/scores-0-of-1.h5)
	$$(TSN) --config $$($(1)_CFG) fuse $(foreach m,$(MODALITIES),--scores $(m)=$$($(1)_SPLITDIR)/scores-$(m)) --out $$(@D) --overwrite

$$($(1)_SPLITDIR)/features-%/features-0-of-1.h5: $$($(1)_SPLITDIR)/train-%.json
	$$(TSN) --config $$($(1)_CFG) features $$($(1)_SPLITDIR)/train-$$*/checkpoint.pt $$(call tsn_inputs,$$($(1)_OUT),$$*) --list $$($(1)_LIST) --out $$(@D)

$(1)-train-rgb: $$($(1)_SPLITDIR)/train-rgb.json
$(1)-train-flow: $$($(1)_SPLITDIR)/train-flow.json
$(1)-train-warped: $$($(1)_SPLITDIR)/train-warped.json
$(1)-score-rgb: $$($(1)_SPLITDIR)/scores-rgb/scores-0-of-1.h5
$(1)-score-flow: $$($(1)_SPLITDIR)/scores-flow/scores-0-of-1.h5
$(1)-score-warped: $$($(1)_SPLITDIR)/scores-warped/scores-0-of-1.h5
$(1)-features-rgb: $$($(1)_SPLITDIR)/features-rgb/features-0-of-1.h5
$(1)-features-flow: $$($(1)_SPLITDIR)/features-flow/features-0-of-1.h5
$(1)-features-warped: $$($(1)_SPLITDIR)/features-warped/features-0-of-1.h5

# after array jobs: which shards are missing, unfinished or have failed videos
$(1)-index: | $$(TSN)
	$$(TSN) index $$($(1)_OUT)/frames --kind frames --num-shards $$(NUM_SHARDS) --list $$($(1)_LIST); s=$$$$?; $$(TSN) index $$($(1)_OUT)/flow --kind flow --num-shards $$(NUM_SHARDS) --list $$($(1)_LIST) && exit $$$$s
endef

.PHONY: help
help:
	@echo "tsn-pipeline make targets"
	@echo ""
	@echo "  make demo                   generate the demo dataset and run every stage on it (CPU ok, <= 10 min)"
	@echo "  make install | test         virtualenv in .venv | the whole test suite (what CI runs)"
	@echo "  make test-fast              the suite without the slow end-to-end tests"
	@echo "  make test-slurm             the SLURM array scripts under a one-node local SLURM (root; docs/PIPELINES.md)"
	@echo ""
	@echo "  Per dataset D in: $(TSN_DATASETS)"
	@echo "  make D-list                 video list of split SPLIT from DATA (tsn make-list)"
	@echo "  make D-decode               frame shards (tsn decode), one file per shard"
	@echo "  make D-flow                 TV-L1 + warped flow shards (tsn flow)"
	@echo "  make D-train-rgb            train a stream; also D-train-flow, D-train-warped, D-train (all)"
	@echo "  make D-score-rgb            score the test split; also D-score-flow, D-score-warped, D-score"
	@echo "  make D-fuse                 late fusion rgb:flow:warped = 1:1:0.5 (tsn fuse)"
	@echo "  make D-features-rgb         per-video features; also D-features-flow, -warped, D-features"
	@echo "  make D-index                report missing / unfinished / failed shards (tsn index)"
	@echo "  make D-all                  everything up to D-fuse"
	@echo ""
	@echo "  Variables: DATA=<dataset folder>  SPLIT=1|2|3  OUT=out/D  NUM_SHARDS=1  WORKERS=2  GPUS=0"
	@echo "  Settings of every stage: pipelines/D.toml. Batch nodes: pipelines/slurm/*.sh, docs/PIPELINES.md"
	@echo "  e.g. make ucf101-flow DATA=~/data/UCF101 NUM_SHARDS=4 -j4"
