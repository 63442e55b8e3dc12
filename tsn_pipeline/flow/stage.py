"""Flow stage: frame shards -> flow shards through the shared batch runner.

Reads ``frames-<i>-of-<n>.h5`` (stream ``rgb``, from ``tsn decode``); writes
``flow-<i>-of-<n>.h5`` with the same video ids. Per video: for N frames and step k, N - k flow
fields, field t from frame t to frame t + k, on grayscale frames (RGB -> gray with OpenCV's
RGB2GRAY weights, as dense_flow's BGR2GRAY on the same pixels).

Stored per video (see docs/FLOW.md): streams ``<kind>_x`` / ``<kind>_y`` (8-bit quantised
JPEG or PNG, bound b) or arrays ``<kind>`` float16 (num_flows, 2, H, W); for warped flow also
the array ``warped_homography`` (num_flows, 3, 3) and the attribute ``warped_identity`` (pairs
whose camera motion could not be estimated). Attributes: num_frames, num_flows, step, height,
width, fps, label, class_name, split, kinds, encoding, bound, backend.

On CPU every backend runs one video per worker process with one thread each (OpenCV's and
torch's intra-op threads), so ``--workers`` scales over cores; the torch backend runs a video's
pairs ``batch_size`` at a time, with the C TV-L1 kernels (``flow.native``: built once per
machine, by the main process when missing, kept on disk) that each worker loads in
milliseconds. On a CUDA device the torch backend runs in the main process
and batches pairs from several videos on the device (``batch_size`` pairs of one frame size at
a time); JPEG work runs on threads there.
"""
from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from .. import batch, store
from . import FLOW_KINDS, backend_params
from .quantize import DEFAULT_BOUND, check_bound, quantize_flow
from .tvl1_torch import TVL1Params
from .warp import WarpParams

log = logging.getLogger(__name__)

ENCODINGS = ("jpeg", "png", "float16")


@dataclass(frozen=True)
class FlowConfig:
    """Everything that changes the flow shards' content (stored in each shard)."""

    kinds: Tuple[str, ...] = ("tvl1",)
    step: int = 1
    bound: float = DEFAULT_BOUND
    encoding: str = "jpeg"                 # "jpeg" | "png" (lossless 8-bit) | "float16"
    quality: int = 95                      # JPEG quality (dense_flow: OpenCV's default 95)
    backend: str = "torch"                 # resolved: "torch" | "opencv" | "opencv-cuda"
    tvl1: TVL1Params = field(default_factory=TVL1Params)
    warp: WarpParams = field(default_factory=WarpParams)

    def __post_init__(self):
        kinds = tuple(self.kinds)
        if not kinds or any(k not in FLOW_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(f"flow kinds {list(kinds)}: expected tvl1, warped or both")
        object.__setattr__(self, "kinds", tuple(k for k in FLOW_KINDS if k in kinds))
        if not (isinstance(self.step, int) and self.step >= 1):
            raise ValueError(f"--step {self.step!r} must be an integer >= 1")
        object.__setattr__(self, "bound", check_bound(self.bound))
        if self.encoding not in ENCODINGS:
            raise ValueError(f"flow encoding {self.encoding!r} unknown; expected one of {ENCODINGS}")
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"JPEG quality {self.quality} outside 1..100")
        if self.backend not in ("torch", "opencv", "opencv-cuda"):
            raise ValueError(f"backend {self.backend!r} must be resolved (torch, opencv, "
                             "opencv-cuda) before building a FlowConfig")
        object.__setattr__(self, "tvl1", backend_params(self.backend, self.tvl1))
        if self.backend == "opencv" and self.tvl1.iterations % self.tvl1.median_every:
            raise ValueError(f"--iterations {self.tvl1.iterations}: OpenCV CPU runs iterations in "
                             f"blocks of {self.tvl1.median_every}; use a multiple of it (300)")

    def to_dict(self) -> Dict[str, Any]:
        d = {"kinds": list(self.kinds), "step": self.step, "bound": self.bound,
             "encoding": self.encoding, "backend": self.backend,
             "algorithm": "tvl1 (Zach-Pock-Bischof dual TV-L1, coarse-to-fine with warping)",
             "tvl1": self.tvl1.to_dict()}
        if self.encoding == "jpeg":
            d["quality"] = self.quality
        if "warped" in self.kinds:
            d["warp"] = self.warp.to_dict()
        return d


# -- reading frames -----------------------------------------------------------------------
_SHARDS: Dict[str, store.ShardSet] = {}


def _frame_shards(path: str) -> store.ShardSet:
    """One index per frame shard per process (workers reuse it across videos)."""
    s = _SHARDS.get(path)
    if s is None:
        s = _SHARDS[path] = store.open_shards(path, kind="frames", warn_missing=False)
    return s


_POOL = []


def close_caches() -> None:
    """Close this process's open frame shards and thread pool: ``run_flow`` calls it when a
    shard is done, so nothing stays open between shards (a worker process's caches live as
    long as the worker, which ends with its shard's run)."""
    for shards in _SHARDS.values():
        shards.close()
    _SHARDS.clear()
    while _POOL:
        _POOL.pop().shutdown()


def _map(fn, items, threaded: bool):
    """``map`` in this thread, or on a shared thread pool (OpenCV's codecs release the GIL,
    so JPEG work overlaps; used by the torch backend, whose main process feeds the device)."""
    if not threaded:
        return list(map(fn, items))
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(min(8, os.cpu_count() or 1)))
    return list(_POOL[0].map(fn, items))


def load_gray(task: batch.Task, threaded: bool = False) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Frames of ``task.video_id`` from its frame shard as gray uint8 (T, H, W), and its attrs."""
    import cv2

    shards = _frame_shards(task.source)
    entry = shards[task.video_id]
    try:
        shards.check_video(task.video_id)
    except store.StoreError as exc:
        raise batch.VideoFailure(str(exc)) from exc
    n = entry.length
    if n == 0:
        return np.zeros((0, 0, 0), np.uint8), dict(entry.attrs)
    payloads = shards.read_encoded(task.video_id, "rgb", range(n))

    def gray(i):
        img = cv2.imdecode(np.frombuffer(payloads[i], np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise batch.VideoFailure(f"frame {i} of {task.video_id!r} in {task.source} does not "
                                     "decode; run `tsn verify` on the frame shard")
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)     # = RGB2GRAY on the RGB pixels

    return np.stack(_map(gray, range(n), threaded)), dict(entry.attrs)


def pair_indices(num_frames: int, step: int) -> Tuple[np.ndarray, np.ndarray]:
    """(t, t + step) for every flow field: 5 frames, step 2 -> ([0, 1, 2], [2, 3, 4])."""
    t = np.arange(max(num_frames - step, 0))
    return t, t + step


def check_length(task: batch.Task, num_frames: int, step: int) -> None:
    if num_frames < step + 1:
        raise batch.VideoFailure(
            f"{task.video_id}: {num_frames} frame(s); flow with --step {step} needs at least "
            f"{step + 1} (re-decode the video or drop it from the list)")


# -- building the record ------------------------------------------------------------------
def make_record(task: batch.Task, attrs: Dict[str, Any], flows: Dict[str, np.ndarray],
                cfg: FlowConfig, threaded: bool = False) -> store.VideoRecord:
    """Quantise/encode the float flows (dict kind -> (T, 2, H, W)) into a flow-shard record."""
    streams: Dict[str, List[bytes]] = {}
    arrays: Dict[str, np.ndarray] = {}
    for kind in cfg.kinds:
        f = flows[kind]
        if cfg.encoding == "float16":
            arrays[kind] = f.astype(np.float16)
            continue
        q = quantize_flow(f, cfg.bound)                 # (T, 2, H, W) uint8
        for c, axis in enumerate(("x", "y")):
            streams[f"{kind}_{axis}"] = _map(
                lambda t: store.encode_image(q[t, c], cfg.encoding, cfg.quality),
                range(len(q)), threaded)
    extra = {k: attrs[k] for k in ("fps",) if k in attrs}
    if "warped" in cfg.kinds:
        arrays["warped_homography"] = flows["homography"].astype(np.float64)
        extra["warped_identity"] = int(np.sum(flows["identity"]))
    h, w = flows[cfg.kinds[0]].shape[-2:]
    return store.flow_video(
        task.video_id, num_frames=int(attrs.get("num_frames", 0)), step=cfg.step,
        kinds=cfg.kinds, encoding=cfg.encoding, bound=cfg.bound, width=w, height=h,
        streams=streams, arrays=arrays, label=attrs.get("label", task.label),
        class_name=attrs.get("class_name", ""), split=attrs.get("split", ""),
        backend=cfg.backend, frames_source=task.source, **extra)


# -- CPU (every backend) and OpenCV CUDA: one video per worker process --------------------
def process_video(task: batch.Task, cfg: FlowConfig, compile: bool = False,
                  batch_size: int = 8) -> store.VideoRecord:
    """Batch-runner ``process=`` for the OpenCV backends and for torch on CPU (runs in a
    worker process): one thread per worker, OpenCV's and torch's, so --workers scales over
    cores. The torch backend runs the video's pairs ``batch_size`` at a time; a pair's flow
    does not depend on its batch, nor on the process it runs in."""
    import cv2

    from . import compute_flow

    cv2.setNumThreads(1)
    if cfg.backend == "torch":
        import torch

        torch.set_num_threads(1)
    gray, attrs = load_gray(task)
    check_length(task, len(gray), cfg.step)
    t0, t1 = pair_indices(len(gray), cfg.step)
    flows = compute_flow(gray[t0], gray[t1], cfg.kinds, cfg.backend, cfg.tvl1, cfg.warp,
                         device="cpu", compile=compile, batch_size=batch_size)
    return make_record(task, attrs, flows, cfg)


# -- torch on a CUDA device: pairs of several videos batched on the device ----------------
@dataclass
class _Pending:
    task: batch.Task
    attrs: Dict[str, Any]
    gray: np.ndarray
    left: int
    flows: Dict[str, np.ndarray] = field(default_factory=dict)


def _prefetch(tasks: Sequence[batch.Task], ahead: int = 2):
    """(task, future of ``load_gray(task)``), reading up to ``ahead`` videos in advance on a
    background thread, so that JPEG decoding overlaps the device's work."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as reader:
        queue = deque()
        for task in tasks:
            queue.append((task, reader.submit(load_gray, task, True)))
            if len(queue) > ahead:
                yield queue.popleft()
        while queue:
            yield queue.popleft()


def batch_videos(tasks: Sequence[batch.Task], cfg: FlowConfig, device: str = "cpu",
                 compile: bool = False, batch_size: int = 64
                 ) -> Iterator[Tuple[batch.Task, Any]]:
    """Batch-runner ``batch_process=`` for the torch backend on a CUDA device.

    Pairs are queued per frame size; whenever ``batch_size`` pairs of one size are queued
    (from one or several videos) they run as one batch. A video is yielded as soon as all its
    pairs are done. Errors are per video: a failing batch fails the videos it held pairs of.
    """
    from . import compute_flow

    queues: "OrderedDict[Tuple[int, int], List[Tuple[str, int]]]" = OrderedDict()
    pending: Dict[str, _Pending] = {}

    def run(size) -> Iterator[Tuple[batch.Task, Any]]:
        items, queues[size] = queues[size][:batch_size], queues[size][batch_size:]
        vids = [v for v, _ in items if v in pending]
        items = [(v, t) for v, t in items if v in pending]
        if not items:
            return
        a = np.stack([pending[v].gray[t] for v, t in items])
        b = np.stack([pending[v].gray[t + cfg.step] for v, t in items])
        try:
            out = compute_flow(a, b, cfg.kinds, "torch", cfg.tvl1, cfg.warp, device=device,
                               compile=compile, batch_size=len(items))
        except Exception as exc:   # e.g. CUDA out of memory: fail these videos, go on
            log.debug("flow batch failed", exc_info=True)
            for v in dict.fromkeys(vids):
                p = pending.pop(v, None)
                if p is not None:
                    yield p.task, batch.VideoFailure(f"flow batch failed: {type(exc).__name__}: {exc}")
            return
        for j, (v, t) in enumerate(items):
            p = pending[v]
            for key, arr in out.items():
                if key not in p.flows:
                    p.flows[key] = np.zeros((len(p.gray) - cfg.step,) + arr.shape[1:], arr.dtype)
                p.flows[key][t] = arr[j]
            p.left -= 1
            if p.left == 0:
                del pending[v]
                try:
                    yield p.task, make_record(p.task, p.attrs, p.flows, cfg, threaded=True)
                except Exception as exc:
                    yield p.task, exc

    for task, loaded in _prefetch(tasks):
        try:
            gray, attrs = loaded.result()
            check_length(task, len(gray), cfg.step)
        except Exception as exc:
            yield task, exc
            continue
        size = gray.shape[1:]
        pending[task.video_id] = _Pending(task, attrs, gray, len(gray) - cfg.step)
        queues.setdefault(size, []).extend((task.video_id, t) for t in range(len(gray) - cfg.step))
        while len(queues[size]) >= batch_size:
            yield from run(size)
    for size in list(queues):
        while queues[size]:
            yield from run(size)


# -- planning and running a shard --------------------------------------------------------
def frame_set_count(frames: store.ShardSet) -> int:
    """The number of shards the frame set was written as (flow's default --num-shards)."""
    counts = {int(r.get("num_shards", 1)) for r in frames.root.values()}
    if len(counts) != 1:
        raise batch.StageError(f"frame shards of different counts {sorted(counts)} given "
                               f"({', '.join(frames.paths)}); pass --num-shards")
    return counts.pop()


def plan_flow(frames: store.ShardSet, shard_index: int, num_shards: int) -> List[batch.Task]:
    """Tasks of flow shard ``shard_index`` of ``num_shards``: the stored videos of the frame
    set that ``batch.shard_of`` assigns to it (frame shard i of the same count holds them)."""
    missing = frames.missing_shards()
    if missing and (frame_set_count(frames) != num_shards or shard_index in missing):
        raise batch.StageError(
            f"flow shard {shard_index}/{num_shards} needs frame shard(s) {missing} of "
            f"{frame_set_count(frames)}, which are not among the inputs "
            f"({', '.join(frames.paths)}); decode them first")
    return [batch.Task(vid, frames[vid].shard, frames[vid].label,
                       {"class_name": frames[vid].attrs.get("class_name", ""),
                        "split": frames[vid].attrs.get("split", "")})
            for vid in batch.assign_shard(frames.ids, shard_index, num_shards)]


def run_flow(frames: store.ShardSet, out_dir, cfg: FlowConfig, shard_index: int = 0,
             num_shards: int = 1, device: str = "cpu", compile: bool = False,
             batch_size: int = 64, workers: int = 1, overwrite: bool = False,
             retry_failed: bool = False, progress: bool = True) -> batch.Summary:
    """Make flow shard ``shard_index`` of ``num_shards`` from the frame shard set ``frames``."""
    cpu = not str(device).startswith("cuda")
    tasks = plan_flow(frames, shard_index, num_shards)     # missing frame shards: before all
    final = Path(out_dir) / store.shard_name("flow", shard_index, num_shards)
    if compile and cpu and cfg.backend == "torch" and (overwrite or retry_failed
                                                       or not final.exists()):
        # build the CPU kernels here if this machine has none yet: the workers load them
        # (not for a finished shard, which the runner only reports or refuses)
        from .native import cpu_kernels

        compile = cpu_kernels() is not None
    root = next(iter(frames.root.values()), {})
    extra = {"frames_config": store._attr_value(root.get("config") or {}),
             "runtime": store._attr_value({"device": device, "compile": bool(compile),
                                           "batch_size": batch_size, "workers": workers})}
    if "classes" in root:
        extra["classes"] = store._attr_value(list(root["classes"]))
    try:
        common = dict(kind="flow", out_dir=out_dir, shard_index=shard_index, num_shards=num_shards,
                      config=cfg.to_dict(), tasks=tasks, overwrite=overwrite,
                      retry_failed=retry_failed, progress=progress, root_extra=extra)
        if cfg.backend == "torch" and not cpu:
            return batch.run_batched_stage(batch_process=functools.partial(
                batch_videos, cfg=cfg, device=device, compile=compile, batch_size=batch_size),
                **common)
        if cfg.backend != "torch":
            process = functools.partial(process_video, cfg=cfg, batch_size=batch_size)
            return batch.run_stage(process=process, workers=workers, **common)
        import torch

        process = functools.partial(process_video, cfg=cfg, compile=compile, batch_size=batch_size)
        threads = torch.get_num_threads()   # process_video sets one thread where it runs in this
        try:                                # process (one worker, or one video): restore it after
            return batch.run_stage(process=process, workers=workers, **common)
        finally:
            torch.set_num_threads(threads)
    finally:
        close_caches()
