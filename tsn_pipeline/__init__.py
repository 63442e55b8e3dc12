"""tsn-pipeline: decode, flow, train, score, fuse and feature extraction for TSN, on HDF5 shards.

The reader API for other models::

    from tsn_pipeline import open_shards
    shards = open_shards("out/frames")             # files or folders
    shards.ids, shards["vid"].length, shards["vid"].label
    shards.read_frames("vid", [0, 5, 9])           # (3, H, W, 3) uint8 RGB
"""

__version__ = "0.1.0"


def open_shards(paths, kind=None):
    """Index HDF5 shards (files or folders); see ``tsn_pipeline.store.ShardSet``."""
    from .store import open_shards as _open

    return _open(paths, kind)
