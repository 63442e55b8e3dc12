"""Feature stage: a TSN checkpoint + frame/flow shards -> snippet feature shards.

Reads: frame shards (rgb, rgbdiff models) or flow shards (flow, warped models) and one
checkpoint (or, without one, a local ImageNet state dict for a bare backbone). Writes ``features-<i>-of-<n>.h5`` through the shared batch runner (resume,
failures file, lock), for models that consume per-snippet features (temporal action
localisation: BSN/BMN-style pipelines read one feature vector every 16 frames).

The feature of a snippet is the backbone's globally pooled output, before TSN's dropout and
classifier (``TSN.forward_features``; 2048-d for ResNet-50, 1024-d for BN-Inception). Snippets
are taken either every ``stride`` items from item 0 (``--stride 16``: items 0, 16, 32, ...
while a whole snippet fits) or ``num_snippets`` evenly spaced (TSN's test sampling). With
several crops the crop features are averaged.

Feature file layout (kind ``features``; plain HDF5, see docs/SCORING.md)::

    /                      attrs: config (features config incl. checkpoint or pretrained file
                                  and its sha256),
                                  modality, feature_dim, checkpoint, model_config, classes
    /videos/<video_id>     attrs: label, class_name, modality, num_snippets, feature_dim,
                                  snippet_length, source_length, fps (when the source has it)
        features           float32 | float16 (num_snippets, feature_dim)
        frame_indices      int64 (num_snippets,)   0-based first frame (flow: first field)
                                                    of each snippet

For flow, field ``t`` is the motion from frame ``t`` to ``t + 1``: a 5-field snippet at
``frame_indices[i] = t`` covers frames ``t .. t + 5``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import batch, store
from .snippets import SnippetSettings, num_items, run_snippet_stage

KIND = "features"
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class FeaturesConfig(SnippetSettings):
    """Which snippets, which crops, which dtype. Exactly one of ``stride``/``num_snippets``."""

    stride: Optional[int] = 16
    crops: int = 1
    dtype: str = "float32"

    def __post_init__(self):
        super().__post_init__()
        if (self.stride is None) == (self.num_snippets is None):
            raise ValueError("give exactly one of stride (e.g. 16) and num_snippets (e.g. 100)")
        if self.stride is not None and int(self.stride) < 1:
            raise ValueError(f"stride={self.stride} must be >= 1")
        if self.crops is None:
            raise ValueError("crops must be given (1, 3, 5 or 10)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {DTYPES}")


def features_record(video_id: str, crop_features: np.ndarray, snippet_indices: np.ndarray, *,
                    label: int, modality: str, dtype: str = "float32", class_name: str = "",
                    source_length: Optional[int] = None,
                    fps: Optional[float] = None) -> store.VideoRecord:
    """Stored record of one video from ``(crops, S, D)`` features and ``(S, L)`` indices."""
    crop_features = np.asarray(crop_features, dtype=np.float32)
    if crop_features.ndim != 3:
        raise ValueError(f"features must be (crops, snippets, dim), got {crop_features.shape}")
    feats = crop_features.mean(axis=0).astype(dtype)
    idx = np.asarray(snippet_indices, dtype=np.int64)
    attrs = {"label": int(label), "class_name": class_name, "modality": modality,
             "num_snippets": int(feats.shape[0]), "feature_dim": int(feats.shape[1]),
             "snippet_length": int(idx.shape[1])}
    if source_length is not None:
        attrs["source_length"] = int(source_length)
    if fps is not None:
        attrs["fps"] = float(fps)
    return store.VideoRecord(video_id, attrs=attrs,
                             arrays={"features": feats, "frame_indices": idx[:, 0].copy()})


def run_features(checkpoint, sources, out_dir, cfg: FeaturesConfig, shard_index: int = 0,
                 num_shards: int = 1, split: Optional[str] = None, video_list=None,
                 batch_size: int = 256, device: str = "auto", workers: int = 1,
                 overwrite: bool = False, retry_failed: bool = False,
                 progress: bool = True, model_config=None) -> batch.Summary:
    """Feature shard ``shard_index`` of ``num_shards``: see the module docstring.

    The model is the ``checkpoint``'s, or (``checkpoint=None``) the ImageNet-initialised
    backbone described by ``model_config`` (``ModelConfig`` with ``pretrained``).
    """
    def make_record(m, task, idx, out):
        fps = m.shards[task.video_id].attrs.get("fps")
        return features_record(task.video_id, out, idx, label=task.label,
                               modality=m.mcfg.modality, dtype=cfg.dtype,
                               class_name=task.meta.get("class_name", ""),
                               source_length=num_items(sources, task.video_id, m.mcfg.modality),
                               fps=float(fps) if fps is not None else None)

    return run_snippet_stage(
        kind=KIND, forward="forward_features", checkpoint=checkpoint, cfg=cfg, sources=sources,
        out_dir=out_dir, make_record=make_record, model_config=model_config,
        root_extra=lambda m: {"feature_dim": int(m.model.base.num_features)},
        shard_index=shard_index, num_shards=num_shards, split=split, video_list=video_list,
        batch_size=batch_size, device=device, workers=workers, overwrite=overwrite,
        retry_failed=retry_failed, progress=progress)
