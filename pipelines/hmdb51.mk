# HMDB51: make hmdb51-<stage> DATA=<folder with the class folders and testTrainMulti_7030_splits/> [SPLIT=1..3]
$(eval $(call tsn_dataset,hmdb51,hmdb51,,))
