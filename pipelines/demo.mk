# The embedded demo: `make demo` generates a small labelled video dataset (UCF101-shaped, in
# $(OUT)/data, default out/demo/data) and runs every stage on it with pipelines/demo.toml.
$(eval $(call tsn_dataset,demo,ucf101,$$(demo_OUT)/data,$$(demo_OUT)/data/motion.json))

# Flow: on a GPU machine the flow stage's own choice (torch on CUDA); on CPUs OpenCV's TV-L1
# in WORKERS processes, which is faster there than torch on the CPU for these tiny frames.
demo_FLOW_ARGS = --backend $(if $(shell command -v nvidia-smi 2>/dev/null),auto,opencv)

.PHONY: demo demo-data
demo-data: $(demo_OUT)/data/motion.json

$(demo_OUT)/data/motion.json: | $(TSN)
	$(TSN) --config $(demo_CFG) make-demo-data $(@D) --workers $(WORKERS)

demo: $(foreach m,$(MODALITIES),$(demo_SPLITDIR)/scores-$(m)/scores-0-of-1.h5) $(BIN)/tsn
	$(TSN) --config $(demo_CFG) fuse $(foreach m,$(MODALITIES),--scores $(m)=$(demo_SPLITDIR)/scores-$(m)) --out $(demo_SPLITDIR)/fused --overwrite
	@echo ""
	@echo "demo outputs in $(demo_OUT):"
	@echo "  videos + splits    $(demo_OUT)/data/videos, $(demo_OUT)/data/splits (motion.json: ground truth)"
	@echo "  frames, flow       $(demo_OUT)/frames, $(demo_OUT)/flow (HDF5 shards; tsn info <folder>)"
	@echo "  training runs      $(foreach m,$(MODALITIES),$(demo_SPLITDIR)/train-$(m)/metrics.png)"
	@echo "  scores, fusion     $(demo_SPLITDIR)/scores-*, $(demo_SPLITDIR)/fused/fused.json, confusion.png"
