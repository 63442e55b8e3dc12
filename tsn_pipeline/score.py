"""Score stage: a trained TSN checkpoint + frame/flow shards -> score shards.

Reads: frame shards (``frames-<i>-of-<n>.h5``, RGB / RGB difference) or flow shards
(``flow-<i>-of-<n>.h5``, TV-L1 or warped flow) and one checkpoint. Writes
``scores-<i>-of-<n>.h5`` through the shared batch runner (resume, failures file, lock).

TSN test protocol (paper section 3.1 / TSN_NOTES.md "Testing protocol"), the default:
25 snippets at equal intervals (segment centres), each frame resized to 340x256 (or short side
256) by ``tsn decode``, 10 crops of 224x224 (4 corners + centre and their horizontal flips, the
flow x component inverted on the flipped crops), class scores taken *before* softmax,
averaged over the crops. ``--crops 1|3|10`` and ``--crop-agg mean|max`` change that.

Score file layout (kind ``scores``; see also docs/SCORING.md)::

    /                       attrs: config (score config incl. checkpoint path and sha256),
                                   modality, classes, checkpoint, model_config, train_config
    /videos/<video_id>      attrs: label, class_name, modality, num_snippets, num_crops,
                                   num_frames (length of the source video), crop_agg
        scores              float32 (num_snippets, num_classes)   after crop aggregation
        crop_scores         float32 (num_snippets, num_crops, num_classes)  with --save-crops
        snippet_indices     int64 (num_snippets, new_length)  0-based source frame/flow indices

The video-level score that fusion and accuracy use is ``scores.mean(axis=0)`` (TSN averages
over snippets before softmax).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import batch, store
from .fuse import VideoScores

log = logging.getLogger(__name__)

KIND = "scores"
CROP_CHOICES = (1, 3, 10)
CROP_AGGS = ("mean", "max")


# -- the file format ----------------------------------------------------------------------
def aggregate_crops(crop_scores: np.ndarray, how: str = "mean") -> np.ndarray:
    """``(S, num_crops, K)`` -> ``(S, K)`` by mean or max over crops."""
    crop_scores = np.asarray(crop_scores)
    if crop_scores.ndim != 3:
        raise ValueError(f"crop scores must be (snippets, crops, classes), got {crop_scores.shape}")
    if how == "mean":
        return crop_scores.mean(axis=1)
    if how == "max":
        return crop_scores.max(axis=1)
    raise ValueError(f"crop aggregation {how!r} unknown; expected one of {CROP_AGGS}")


def scores_record(video_id: str, crop_scores: np.ndarray, *, label: int, modality: str,
                  crop_agg: str = "mean", save_crops: bool = False,
                  snippet_indices: Optional[np.ndarray] = None, class_name: str = "",
                  num_frames: Optional[int] = None) -> store.VideoRecord:
    """The stored record of one video from its ``(S, num_crops, K)`` snippet-crop scores."""
    crop_scores = np.asarray(crop_scores, dtype=np.float32)
    scores = aggregate_crops(crop_scores, crop_agg).astype(np.float32)
    arrays = {"scores": scores}
    if save_crops:
        arrays["crop_scores"] = crop_scores
    if snippet_indices is not None:
        arrays["snippet_indices"] = np.asarray(snippet_indices, dtype=np.int64)
    attrs = {"label": int(label), "class_name": class_name, "modality": modality,
             "num_snippets": int(scores.shape[0]), "num_crops": int(crop_scores.shape[1]),
             "crop_agg": crop_agg}
    if num_frames is not None:
        attrs["num_frames"] = int(num_frames)
    return store.VideoRecord(video_id, attrs=attrs, arrays=arrays)


def _as_names(value) -> Optional[Tuple[str, ...]]:
    if value is None or isinstance(value, str):
        return None
    return tuple(str(v.decode() if isinstance(v, bytes) else v) for v in value)


def load_video_scores(paths, modality: Optional[str] = None,
                      crop_agg: Optional[str] = None) -> VideoScores:
    """Read score shards (files or folders) into per-video, snippet-averaged scores.

    ``modality`` names the set (default: the files' ``modality`` attribute). ``crop_agg``
    re-aggregates the stored per-crop scores (files written with ``--save-crops``); by
    default the stored ``scores`` (aggregated when scored) are used.
    """
    shards = store.open_shards(paths, kind=KIND)
    if not len(shards):
        raise store.StoreError(f"{shards.paths}: the score files hold no videos")
    mods = {str(r.get("modality")) for r in shards.root.values()}
    if len(mods) > 1:
        raise store.StoreError(f"{shards.paths}: score files of different modalities {sorted(mods)} "
                               "given as one set; pass each modality on its own")
    classes = {_as_names(r.get("classes")) for r in shards.root.values()}
    if len(classes) > 1:
        raise store.StoreError(f"{shards.paths}: score files with different class lists")
    ids = shards.ids
    rows, labels = [], []
    try:
        for vid in ids:
            if crop_agg is None:
                s = shards.read_array(vid, "scores")
            else:
                try:
                    s = aggregate_crops(shards.read_array(vid, "crop_scores"), crop_agg)
                except KeyError:
                    raise store.StoreError(
                        f"{shards[vid].shard}: video {vid!r} has no crop_scores; score with "
                        "--save-crops to re-aggregate crops later") from None
            rows.append(np.asarray(s, dtype=np.float64).mean(axis=0))
            labels.append(shards[vid].label)
    finally:
        shards.close()
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise store.StoreError(f"{shards.paths}: videos with different class counts {sorted(widths)}")
    return VideoScores(modality=modality or mods.pop(), ids=tuple(ids),
                       labels=np.asarray(labels, dtype=np.int64), scores=np.stack(rows),
                       classes=classes.pop(), sources=tuple(shards.paths))


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
