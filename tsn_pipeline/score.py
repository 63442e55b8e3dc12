"""Score stage: a trained TSN checkpoint + frame/flow shards -> score shards.

Reads: frame shards (``frames-<i>-of-<n>.h5``, RGB / RGB difference) or flow shards
(``flow-<i>-of-<n>.h5``, TV-L1 or warped flow) and one checkpoint. Writes
``scores-<i>-of-<n>.h5`` through the shared batch runner (resume, failures file, lock).

TSN test protocol (paper section 3.1; docs/TSN.md, "Testing protocol"), the default:
25 snippets at equal intervals (segment centres), each frame resized to 340x256 (or short side
256) by ``tsn decode``, 10 crops of 224x224 (4 corners + centre and their horizontal flips, the
flow x component inverted on the flipped crops), class scores taken *before* softmax,
averaged over the crops. ``--crops 1|3|10`` and ``--crop-agg mean|max`` change that.

Score file layout (kind ``scores``; see also docs/SCORING.md)::

    /                       attrs: config (score config incl. checkpoint path and sha256),
                                   modality, classes, checkpoint, model_config, train_config
    /videos/<video_id>      attrs: label, class_name, modality, num_snippets, num_crops,
                                   crop_agg, source_length (frames, or flow fields, scored from)
        scores              float32 (num_snippets, num_classes)   after crop aggregation
        crop_scores         float32 (num_snippets, num_crops, num_classes)  with --save-crops
        snippet_indices     int64 (num_snippets, new_length)  0-based source frame/flow indices

The video-level score that fusion and accuracy use is ``scores.mean(axis=0)`` (TSN averages
over snippets before softmax).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import numpy as np

from . import batch, store
from .fuse import VideoScores
from .snippets import SnippetSettings, as_names, num_items, run_snippet_stage

log = logging.getLogger(__name__)

KIND = "scores"
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
                  source_length: Optional[int] = None) -> store.VideoRecord:
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
    if source_length is not None:
        attrs["source_length"] = int(source_length)
    return store.VideoRecord(video_id, attrs=attrs, arrays=arrays)


def load_video_scores(paths, modality: Optional[str] = None,
                      crop_agg: Optional[str] = None, warn_missing: bool = True) -> VideoScores:
    """Read score shards (files or folders) into per-video, snippet-averaged scores.

    ``modality`` names the set (default: the files' ``modality`` attribute). ``crop_agg``
    re-aggregates the stored per-crop scores (files written with ``--save-crops``); by
    default the stored ``scores`` (aggregated when scored) are used.
    """
    shards = store.open_shards(paths, kind=KIND, warn_missing=warn_missing)
    if not len(shards):
        raise store.StoreError(f"{shards.paths}: the score files hold no videos")
    mods = {str(r.get("modality")) for r in shards.root.values()}
    if len(mods) > 1:
        raise store.StoreError(f"{shards.paths}: score files of different modalities {sorted(mods)} "
                               "given as one set; pass each modality on its own")
    configs = {json.dumps(r.get("config"), sort_keys=True): p for p, r in shards.root.items()}
    if len(configs) > 1:
        (a, pa), (b, pb) = list(configs.items())[:2]
        diff = store.config_diff(json.loads(a) or {}, json.loads(b) or {})
        raise store.StoreError(f"{pa} and {pb} were scored with different settings "
                               f"({'; '.join(diff[:4])}); give each run as its own --scores")
    classes = {as_names(r.get("classes")) for r in shards.root.values()}
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
            s = np.asarray(s, dtype=np.float64)
            if not np.isfinite(s).all():
                where = np.argwhere(~np.isfinite(s))[0]
                raise store.StoreError(
                    f"{shards[vid].shard}: video {vid!r} has a non-finite score "
                    f"({s[tuple(where)]} at snippet {where[0]}); the model that scored it "
                    "gave NaN/inf (or the file is damaged): score this video again")
            rows.append(s.mean(axis=0))
            labels.append(shards[vid].label)
    finally:
        shards.close()
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise store.StoreError(f"{shards.paths}: videos with different class counts {sorted(widths)}")
    return VideoScores(modality=modality or mods.pop(), ids=tuple(ids),
                       labels=np.asarray(labels, dtype=np.int64), scores=np.stack(rows),
                       classes=classes.pop(), sources=tuple(shards.paths))


# -- settings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreConfig(SnippetSettings):
    """Test protocol of ``tsn score`` (defaults: TSN's 25 snippets x 10 crops, mean).

    ``crops=None``: 10, or 5 for a model trained with --no-flip. With the default
    ``scale_size``, frames decoded at 340x256 are not resized before 224 crops.
    """

    num_snippets: int = 25
    crop_agg: str = "mean"
    save_crops: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.crop_agg not in CROP_AGGS:
            raise ValueError(f"crop_agg={self.crop_agg!r} is not one of {CROP_AGGS}")


# -- the stage ------------------------------------------------------------------------------
def run_score(checkpoint, sources, out_dir, cfg: ScoreConfig, shard_index: int = 0,
              num_shards: int = 1, split: Optional[str] = None, video_list=None,
              batch_size: int = 250, device: str = "auto", workers: int = 1,
              overwrite: bool = False, retry_failed: bool = False,
              progress: bool = True) -> batch.Summary:
    """Score shard ``shard_index`` of ``num_shards``: see the module docstring."""
    from .checkpoint import check_classes, labels_by_name

    def prepare_tasks(m, tasks):
        """Labels in the model's class order (by name, when the checkpoint knows its classes);
        no label the model cannot predict."""
        trained_on = as_names(m.train_cfg.get("classes"))
        if trained_on:
            tasks = labels_by_name(tasks, trained_on, checkpoint)
        check_classes(checkpoint, m.mcfg.num_classes,
                      [] if trained_on else [as_names(r.get("classes"))
                                             for r in m.shards.root.values()],
                      {t.video_id: t.label for t in tasks},
                      f"the input shards in {os.path.dirname(str(m.shards.paths[0])) or '.'}")
        return tasks

    def make_record(m, task, idx, out):
        return scores_record(
            task.video_id, out.transpose(1, 0, 2), label=task.label, modality=m.mcfg.modality,
            crop_agg=cfg.crop_agg, save_crops=cfg.save_crops, snippet_indices=idx,
            class_name=task.meta.get("class_name", ""),
            source_length=num_items(sources, task.video_id, m.mcfg.modality))

    return run_snippet_stage(
        kind=KIND, forward="forward_snippets", checkpoint=checkpoint, cfg=cfg, sources=sources,
        out_dir=out_dir, make_record=make_record, prepare_tasks=prepare_tasks,
        root_extra=lambda m: {"train_config": json.dumps(m.train_cfg, sort_keys=True,
                                                         default=str)},
        shard_index=shard_index, num_shards=num_shards, split=split, video_list=video_list,
        batch_size=batch_size, device=device, workers=workers, overwrite=overwrite,
        retry_failed=retry_failed, progress=progress)


def shard_accuracy(path, topk: Sequence[int] = (1, 5)) -> Dict[str, Any]:
    """Video-level metrics of one score file (snippet-averaged scores, labelled videos)."""
    from . import metrics

    vs = load_video_scores([path], warn_missing=False)
    return metrics.evaluate(vs.scores, vs.labels, topk)
