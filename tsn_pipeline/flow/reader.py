"""Read flow fields back from flow shards (``flow-<i>-of-<n>.h5``, written by ``tsn flow``).

Layout of one video group (see docs/FLOW.md):

    attrs: num_frames, num_flows (= num_frames - step), step, height, width, label, ...,
           kinds, encoding ("jpeg" | "png" | "float16"), bound
    jpeg/png:  streams <kind>_x, <kind>_y   one 8-bit gray image per flow field
    float16:   array   <kind>               (num_flows, 2, H, W) float16 pixels, x first

Field t is the motion from frame t to frame t + step (0-based). ``kind`` is "tvl1" or "warped".
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

from ..store import ShardSet, StoreError
from .quantize import dequantize_flow, quantize_flow

from ..modalities import FLOW_KINDS as KINDS
ENCODINGS = ("jpeg", "png", "float16")


def flow_meta(shards: ShardSet, video_id: str) -> Dict[str, Any]:
    """``{"encoding", "bound", "kinds", "step"}`` of a video: its own attrs, else the shard's config."""
    entry = shards[video_id]
    config = dict(shards.root.get(entry.shard, {}).get("config") or {})
    meta = {}
    for key in ("encoding", "bound", "kinds", "step"):
        value = entry.attrs.get(key, config.get(key))
        if value is None:
            raise StoreError(f"{entry.shard}: video {video_id!r} records no flow {key!r}; "
                             "is this a flow shard written by `tsn flow`?")
        meta[key] = value
    if meta["encoding"] not in ENCODINGS:
        raise StoreError(f"{entry.shard}: unknown flow encoding {meta['encoding']!r} "
                         f"(this version reads {ENCODINGS})")
    return meta


def read_flow(shards: ShardSet, video_id: str, kind: str, indices: Sequence[int],
              quantized: bool = True) -> np.ndarray:
    """Flow fields ``indices`` (0-based) of ``video_id`` as ``(T, 2, H, W)``, x first.

    ``quantized=True``: uint8 codes 0..255 with the shard's bound (TSN's input format; float16
    shards are quantised on the fly). ``quantized=False``: float32 pixels (8-bit shards are
    dequantised to bin centres, so precision is bound / 255).

    >>> shards = open_shards("out/flow")                      # doctest: +SKIP
    >>> read_flow(shards, "v_x_g01_c01", "tvl1", [0, 1, 2, 3, 4]).shape   # doctest: +SKIP
    (5, 2, 256, 340)
    """
    if kind not in KINDS:
        raise ValueError(f"flow kind {kind!r} unknown; expected one of {KINDS}")
    meta = flow_meta(shards, video_id)
    if kind not in meta["kinds"]:
        raise StoreError(f"video {video_id!r} has no {kind!r} flow (shard holds {meta['kinds']}); "
                         f"run `tsn flow --kind {kind}` or `--kind both`")
    indices = [int(i) for i in indices]
    n = shards[video_id].length
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise IndexError(f"video {video_id!r}: flow indices {bad} outside 0..{n - 1}")
    bound = float(meta["bound"])
    if meta["encoding"] == "float16":
        if not indices:
            h, w = int(shards[video_id].attrs["height"]), int(shards[video_id].attrs["width"])
            return np.zeros((0, 2, h, w), np.uint8 if quantized else np.float32)
        # h5py fancy indexing wants increasing unique indices; read those, then re-order
        uniq, inverse = np.unique(np.asarray(indices), return_inverse=True)
        data = shards.read_array(video_id, kind, (list(uniq),))[inverse]
        flow = data.astype(np.float32)
        return quantize_flow(flow, bound) if quantized else flow
    x = shards.read_gray(video_id, f"{kind}_x", indices) if indices else None
    y = shards.read_gray(video_id, f"{kind}_y", indices) if indices else None
    if x is None:
        h, w = int(shards[video_id].attrs["height"]), int(shards[video_id].attrs["width"])
        codes = np.zeros((0, 2, h, w), np.uint8)
    else:
        codes = np.stack([x, y], axis=1)            # (T, 2, H, W)
    return codes if quantized else dequantize_flow(codes, bound)
