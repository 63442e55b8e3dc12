"""Shard builders for the tests: frame and flow records laid out as `tsn decode` / `tsn flow`
write them, whole shard sets written through the real batch runner, and byte damage."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from tsn_pipeline import batch, store


def frame_record(video_id: str, frames: np.ndarray, label: int = 0, fmt: str = "png",
                 **attrs) -> store.VideoRecord:
    """A frame-shard video as `tsn decode` lays it out (``store.frame_video``): stream ``rgb``
    of (T, H, W, 3) uint8 frames (PNG keeps pixels exact); ``attrs`` adds or overrides
    (class_name, split, fps, ...)."""
    attrs.setdefault("fps", 25.0)
    return store.frame_video(video_id, [store.encode_image(np.ascontiguousarray(f), fmt)
                                        for f in frames],
                             width=int(frames.shape[2]), height=int(frames.shape[1]),
                             label=label, **attrs)


def flow_record(video_id: str, codes: Mapping[str, np.ndarray], label: int = 0,
                fmt: str = "png", quality: int = 95, **attrs) -> store.VideoRecord:
    """A flow-shard video as `tsn flow` lays it out (``store.flow_video``): per flow kind
    (``tvl1``, ``warped``) quantised codes (T, 2, H, W) uint8 as ``<kind>_x``/``<kind>_y``
    streams (PNG, or JPEG at ``quality``), or float16 arrays ``<kind>`` when
    ``fmt="float16"``; ``attrs`` adds or overrides (class_name, split, bound, ...)."""
    t, _, h, w = next(iter(codes.values())).shape
    if fmt == "float16":
        data = {"arrays": {k: c.astype(np.float16) for k, c in codes.items()}}
    else:
        data = {"streams": {f"{k}_{axis}": [store.encode_image(np.ascontiguousarray(x[i]), fmt,
                                                                quality) for x in c]
                            for k, c in codes.items() for i, axis in enumerate("xy")}}
    attrs.setdefault("bound", 20.0)
    return store.flow_video(video_id, num_frames=t + 1, step=1, kinds=list(codes), encoding=fmt,
                            width=w, height=h, label=label, **data, **attrs)


def write_shards(out: Path, kind: str, records: Mapping[str, store.VideoRecord],
                 num_shards: int = 1, config: Optional[Dict] = None,
                 classes: Optional[Sequence[str]] = None,
                 indices: Optional[Sequence[int]] = None) -> Path:
    """Write shards ``indices`` (default all) of ``num_shards`` of ``kind`` into ``out``
    through the batch runner, each holding the records the assignment rule gives it."""
    for i in range(num_shards) if indices is None else indices:
        tasks = [batch.Task(v, "memory", records[v].attrs.get("label", -1))
                 for v in batch.assign_shard(records, i, num_shards)]
        summary = batch.run_batched_stage(
            kind=kind, out_dir=out, shard_index=i, num_shards=num_shards,
            config=config if config is not None else {"test": True}, tasks=tasks,
            batch_process=lambda todo: ((t, records[t.video_id]) for t in todo),
            progress=False,
            root_extra={"classes": json.dumps(list(classes))} if classes is not None else None)
        assert summary.failed == 0, summary.failures
    return Path(out)


def payload_offset(shard: Path, video_id: str, name: str) -> int:
    """Byte offset in the file of dataset ``name`` of ``video_id`` (stored contiguously)."""
    import h5py

    with h5py.File(shard, "r") as f:
        return int(f[store.VIDEOS][video_id][name].id.get_offset())


def flip_byte(path: Path, offset: int, bit: int = 0x10) -> None:
    """Flip one bit of the byte at ``offset`` in place (damage on disk)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ bit]))
