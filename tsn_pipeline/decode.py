"""Decode stage: videos -> resized RGB frames as JPEG in HDF5 frame shards.

Reads a ``VideoList`` (folder or CSV); writes ``<out>/frames-<i>-of-<n>.h5`` (kind "frames").
Per video: stream ``rgb`` (one JPEG per decoded frame, 0-based) and attributes ``num_frames``
(frames that actually decoded), ``fps``, ``height``/``width`` (stored), ``orig_width``/
``orig_height``, ``source``, ``label``, ``class_name``, ``split``, and ``decode_errors`` (what
ffmpeg reported while still producing frames; empty when clean).
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

from . import batch, store
from .videoio import INTERPOLATIONS, FrameReader, JpegReader, VideoError, probe

ENCODERS = ("ffmpeg", "opencv")
from .videolist import VideoList


@dataclass(frozen=True)
class DecodeConfig:
    """How frames are made. Every field changes the output, so all are stored in the shard."""

    size: Optional[Tuple[int, int]] = (340, 256)   # (W, H); None keeps the video's size
    short_side: Optional[int] = None               # resize the short side to this instead
    fps: Optional[float] = None                    # resample to this rate (None: every frame)
    encoder: str = "ffmpeg"                        # who writes the JPEG: ffmpeg (mjpeg) or opencv
    qscale: Optional[int] = 2                      # ffmpeg -q:v, 1..31 (lower is better)
    quality: Optional[int] = None                  # opencv/libjpeg quality 1..100 (95 if unset)
    interpolation: str = "bilinear"                # ffmpeg scaler
    strict: bool = False                           # any ffmpeg decode error fails the video

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder {self.encoder!r} not in {ENCODERS}")
        # only the knob of the chosen encoder is kept, so the stored config says what mattered
        if self.encoder == "ffmpeg":
            object.__setattr__(self, "quality", None)
            if self.qscale is None or not 1 <= self.qscale <= 31:
                raise ValueError(f"ffmpeg JPEG qscale {self.qscale} outside 1..31")
        else:
            object.__setattr__(self, "qscale", None)
            if self.quality is None:
                object.__setattr__(self, "quality", 95)
            if not 1 <= self.quality <= 100:
                raise ValueError(f"JPEG quality {self.quality} outside 1..100")
        if self.size is not None and self.short_side is not None:
            raise ValueError("give --size or --short-side, not both")
        if self.size is not None:
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
            if min(self.size) < 1:
                raise ValueError(f"size {self.size} must be positive")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError(f"short side {self.short_side} must be positive")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps {self.fps} must be > 0")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} not in {INTERPOLATIONS}")

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        return d


def decode_video(path: str, cfg: DecodeConfig):
    """One video -> (list of JPEG bytes, attrs). Raises ``VideoFailure`` with the reason."""
    try:
        if cfg.encoder == "ffmpeg":
            reader = JpegReader(path, cfg.size, cfg.short_side, cfg.fps, cfg.interpolation,
                                qscale=cfg.qscale)
            jpegs = list(reader)
            info = reader.info
        else:
            import cv2      # only here: the ffmpeg encoder's workers need no OpenCV

            info = probe(path)
            reader = FrameReader(path, cfg.size, cfg.short_side, cfg.fps, cfg.interpolation, info)
            params = [cv2.IMWRITE_JPEG_QUALITY, cfg.quality]
            jpegs = []
            for frame in reader:
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
                if not ok:
                    raise batch.VideoFailure(f"{path}: OpenCV could not encode frame {len(jpegs)}")
                jpegs.append(buf.tobytes())
    except VideoError as exc:
        raise batch.VideoFailure(str(exc)) from exc
    except OSError as exc:
        raise batch.VideoFailure(f"{path}: {exc}") from exc
    errors = reader.errors
    if not jpegs:
        raise batch.VideoFailure(f"{path}: no frame decodes ({errors or 'ffmpeg produced no frames'})")
    if errors and cfg.strict:
        raise batch.VideoFailure(f"{path}: decode errors (--strict): {errors.splitlines()[-1]}")
    attrs = {
        "num_frames": len(jpegs), "fps": reader.fps, "width": reader.width,
        "height": reader.height, "orig_width": info.width, "orig_height": info.height,
        "header_frames": info.header_frames, "codec": info.codec,
        "decode_errors": errors[-2000:],
    }
    return jpegs, attrs


def process_task(task: batch.Task, cfg: DecodeConfig) -> store.VideoRecord:
    """Batch-runner entry point: decode ``task.source`` into a frame-shard record."""
    jpegs, attrs = decode_video(task.source, cfg)
    attrs.pop("num_frames")
    return store.frame_video(task.video_id, jpegs, label=task.label,
                             class_name=task.meta.get("class_name", ""),
                             split=task.meta.get("split", ""),
                             source=os.path.abspath(task.source), **attrs)


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def plan_shard(videos: VideoList, shard_index: int, num_shards: int):
    """Tasks of one shard plus the failures known before decoding (duplicate ids).

    The first item of a duplicated id (in list order) is decoded; the others are failures.
    """
    return batch.plan_shard(videos.items, shard_index, num_shards, lambda item: batch.Task(
        item.video_id, item.path, item.label, {"class_name": item.class_name, "split": item.split}))


def run_decode(videos: VideoList, out_dir, cfg: DecodeConfig, shard_index: int = 0,
               num_shards: int = 1, workers: int = 1, overwrite: bool = False,
               retry_failed: bool = False, progress: bool = True) -> batch.Summary:
    tasks, failures = plan_shard(videos, shard_index, num_shards)
    # longest first (file size as the measure), so that no long video starts last and runs
    # alone at the end; the shard is assembled in id order whatever the order of the work
    tasks.sort(key=lambda t: -_file_size(t.source))
    return batch.run_stage(
        kind="frames", out_dir=out_dir, shard_index=shard_index, num_shards=num_shards,
        config=cfg.to_dict(), tasks=tasks, process=functools.partial(process_task, cfg=cfg),
        workers=workers, threads=True,        # ffmpeg does the work: threads suffice
        overwrite=overwrite, retry_failed=retry_failed, progress=progress,
        root_extra={"classes": list(videos.classes)}, initial_failures=failures)
