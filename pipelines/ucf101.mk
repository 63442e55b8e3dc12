# UCF101: make ucf101-<stage> DATA=<folder with UCF-101/ and ucfTrainTestlist/> [SPLIT=1..3]
$(eval $(call tsn_dataset,ucf101,ucf101,,))
