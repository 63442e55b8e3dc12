"""Shard builders for the tests: frame and flow records laid out as `tsn decode` / `tsn flow`
write them, whole shard sets written through the real batch runner, and byte damage."""
from __future__ import annotations

import json
from pathlib import Path
import functools
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


# -- training material: synthetic videos whose frames and flow are known exactly -------------
H, W = 48, 64


def synthetic_frames(label: int, num_frames: int, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a class-coloured background, noise, and a bar moving right.

    Frame t carries its index in pixel (0, 0) (red channel = 10 * t), so tests can check
    which frames a clip holds.
    """
    rng = np.random.default_rng(seed)
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200),
               (40, 200, 200)]
    base = np.array(colours[label % len(colours)], np.float32)
    frames = np.empty((num_frames, H, W, 3), np.uint8)
    for t in range(num_frames):
        img = base + rng.normal(0, 12, (H, W, 3))
        x = (4 * t + 8 * label) % (W - 8)
        img[:, x:x + 8] = 255 - base
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
        frames[t, :8, :8] = (min(10 * t, 255), 0, 0)   # a large flat patch survives JPEG
    return frames


def synthetic_flow(label: int, num_flows: int) -> np.ndarray:
    """(T, 2, H, W) uint8 quantised flow: x code = 100 + 10 * t + label, y code = 60 + t."""
    flow = np.empty((num_flows, 2, H, W), np.uint8)
    for t in range(num_flows):
        flow[t, 0] = 100 + 10 * t + label
        flow[t, 1] = 60 + t
        flow[t, 0, :, : W // 4] = 30 + label     # left quarter differs: flips are visible
    return flow


def _frame_record(task: batch.Task) -> store.VideoRecord:
    m = task.meta
    frames = synthetic_frames(task.label, m["num_frames"], m["seed"])
    return store.VideoRecord(task.video_id, attrs={
        "num_frames": m["num_frames"], "fps": 25.0, "height": H, "width": W, "label": task.label,
        "class_name": f"c{task.label}", "split": m["split"]},
        streams={"rgb": [store.encode_image(f, "png") for f in frames]})


def _flow_record(task: batch.Task, kinds) -> store.VideoRecord:
    m = task.meta
    n = m["num_frames"] - 1
    flow = synthetic_flow(task.label, n)
    streams = {}
    for kind in kinds:
        streams[f"{kind}_x"] = [store.encode_image(f[0], "png") for f in flow]
        streams[f"{kind}_y"] = [store.encode_image(f[1], "png") for f in flow]
    return store.VideoRecord(task.video_id, attrs={
        "num_frames": m["num_frames"], "num_flows": n, "step": 1, "height": H, "width": W,
        "label": task.label, "class_name": f"c{task.label}", "split": m["split"]},
        streams=streams)


def video_table(num_videos=4, num_classes=4, num_frames=12, val=0):
    """[(video_id, label, num_frames, split)]: ``num_videos`` train videos (+ ``val``)."""
    rows = [(f"vid{i:02d}", i % num_classes, num_frames + i, "train") for i in range(num_videos)]
    rows += [(f"val{i:02d}", i % num_classes, num_frames, "test") for i in range(val)]
    return rows


def _tasks(rows):
    return [batch.Task(v, "", lab, {"num_frames": n, "seed": k, "split": s})
            for k, (v, lab, n, s) in enumerate(rows)]


def make_frame_shards(out: Path, rows, num_classes=None):
    summary = batch.run_stage(
        kind="frames", out_dir=out, shard_index=0, num_shards=1,
        config={"test": "synthetic"}, tasks=_tasks(rows), process=_frame_record,
        progress=False,
        root_extra={"classes": [f"c{i}" for i in range(num_classes or 1 + max(r[1] for r in rows))]})
    assert summary.failed == 0
    return out


def make_flow_shards(out: Path, rows, kinds=("tvl1",)):
    config = {"kinds": list(kinds), "encoding": "png", "bound": 20.0, "step": 1}
    summary = batch.run_stage(
        kind="flow", out_dir=out, shard_index=0, num_shards=1, config=config,
        tasks=_tasks(rows), process=functools.partial(_flow_record, kinds=tuple(kinds)),
        progress=False)
    assert summary.failed == 0
    return out


def write_frames(out: Path, videos: dict, index: int = 0, count: int = 1) -> Path:
    """Frame shard ``index`` of ``count`` as `tsn decode` lays it out, PNG so pixels are exact."""
    records = {v: frame_record(v, frames, label=i, class_name=f"c{i}", split="train")
               for i, (v, frames) in enumerate(sorted(videos.items()))}
    write_shards(out, "frames", records, count, config={"size": None}, classes=["c0", "c1"],
                 indices=[index])
    return out / store.shard_name("frames", index, count)


def summaries(output: str):
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]
