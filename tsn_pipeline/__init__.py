"""tsn-pipeline: decode, flow, train, score, fuse and feature extraction for TSN, on HDF5 shards."""

__version__ = "0.1.0"
