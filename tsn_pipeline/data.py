"""Training/testing input: clips read from frame shards and flow shards, joined by video id.

Reads ``frames-<i>-of-<n>.h5`` (stream ``rgb``, written by ``tsn decode``) and
``flow-<i>-of-<n>.h5`` (``tvl1``/``warped``, written by ``tsn flow``); writes nothing.

* ``Sources``: the opened shard sets (``frames`` for rgb/rgbdiff, ``flow`` for flow/warped).
* ``load_clip(sources, video_id, modality, indices)``: the raw uint8 input of one snippet
  group, the same at training and test time (``tsn score`` uses it).
* ``select_videos``: (video id, label) pairs from the shards' ``label``/``split`` attributes
  or from a list CSV, checked against the shards.
* ``TSNDataset``: a torch Dataset returning ``(clip (K, C, H, W) float32, label, index)``.
  Its randomness (segment offsets, crop, flip) comes from ``np.random.default_rng((seed,
  epoch, index))``, so a sample is the same whatever the worker count, the process (DDP rank)
  or an interruption: this is what makes ``--resume`` and the DDP check exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import modalities, sampling, transforms
from .store import ShardSet, StoreError, open_shards

class DataError(ValueError):
    """The shards or the list cannot serve the requested training input."""


@dataclass
class Sources:
    """Opened shard sets a clip is read from. Either may be None when the modality needs
    only the other (``frames`` for rgb/rgbdiff, ``flow`` for flow/warped)."""

    frames: Optional[ShardSet] = None
    flow: Optional[ShardSet] = None

    @classmethod
    def open(cls, frames=None, flow=None) -> "Sources":
        """Open shard files/folders (either may be None)."""
        return cls(open_shards(frames, "frames") if frames else None,
                   open_shards(flow, "flow") if flow else None)


def shard_set(sources, modality: str) -> ShardSet:
    """The shard set of ``modality`` in ``sources``; a clear error when it was not given."""
    which = modalities.get(modality).shard_kind
    s = getattr(sources, which)
    if s is None:
        opt = "--flow" if which == "flow" else "--frames"
        raise DataError(f"modality {modality!r} reads {which} shards; give them with {opt}")
    return s


def num_items(sources, video_id: str, modality: str) -> int:
    """Frames (rgb, rgbdiff) or flow fields (flow, warped) the video has."""
    s = shard_set(sources, modality)
    if video_id not in s:
        what = modalities.get(modality).shard_kind
        raise DataError(f"video {video_id!r} has no {what} in {s.paths}; compute them "
                        f"(`tsn {'flow' if what == 'flow' else 'decode'}`) or drop it from the list")
    return int(s[video_id].length)


def load_clip(sources, video_id: str, modality: str, indices) -> np.ndarray:
    """The raw uint8 input of one clip of ``video_id``.

    ``indices``: int array ``(S, L)`` of 0-based frame (or flow field) indices, one row per
    snippet (``sampling.segment_indices``; ``L = new_length``, or ``new_length + 1`` for
    rgbdiff). Returns RGB / rgbdiff ``(S, L, H, W, 3)`` or flow / warped ``(S, L, 2, H, W)``
    (x first, quantised 0..255). Each distinct index is decoded once.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 2:
        raise ValueError(f"indices must be (snippets, length), got shape {idx.shape}")
    s = shard_set(sources, modality)
    n = num_items(sources, video_id, modality)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"video {video_id!r}: indices {idx.min()}..{idx.max()} outside 0..{n - 1}")
    uniq, inverse = np.unique(idx.ravel(), return_inverse=True)
    try:
        if modalities.get(modality).shard_kind == "frames":
            data = s.read_frames(video_id, uniq.tolist(), stream="rgb")    # (U, H, W, 3)
        else:
            from .flow.reader import read_flow

            data = read_flow(s, video_id, modalities.get(modality).flow_kind, uniq.tolist(), quantized=True)
    except (StoreError, ValueError, IndexError, OSError) as exc:   # damaged bytes or offsets
        raise DataError(f"{s[video_id].shard}: video {video_id!r} ({modality}, items "
                        f"{uniq.min()}..{uniq.max()}) cannot be read: {exc}; check the shard "
                        "with `tsn verify`") from exc
    return data[inverse].reshape(idx.shape + data.shape[1:])


def worker_error_message(exc: BaseException) -> str:
    """The one-line message of an error a DataLoader worker raised (torch re-raises it in the
    main process with the worker's traceback prepended)."""
    lines = str(exc).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught "):
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        return lines[-1][len(prefix):] if lines[-1].startswith(prefix) else lines[-1]
    return str(exc)


@dataclass(frozen=True)
class VideoSample:
    video_id: str
    label: int


def select_videos(sources, modality: str, split: Optional[str] = None,
                  video_list=None, num_classes: Optional[int] = None) -> List[VideoSample]:
    """Videos to train/evaluate on, sorted by id.

    From ``video_list`` (a ``videolist.VideoList``, e.g. a CSV) when given, else from the
    shards' own ``label``/``split`` attributes; ``split`` keeps only that split. Every video
    must be in the modality's shards (a missing one is an error naming it, never skipped
    silently) and have a label in ``0..num_classes-1``.
    """
    s = shard_set(sources, modality)
    if video_list is not None:
        dups = sorted(video_list.duplicates())
        if dups:
            raise DataError(f"video ids listed more than once: {dups[:5]}; each video may "
                            "appear once in the list")
        items = [(it.video_id, int(it.label), it.split) for it in video_list.items]
    else:
        items = [(e.video_id, int(e.label), str(e.attrs.get("split", "") or ""))
                 for e in s.entries()]
    if split:
        items = [it for it in items if it[2] == split]
    missing = sorted(v for v, _, _ in items if v not in s)
    if missing:
        what = modalities.get(modality).shard_kind
        raise DataError(f"{len(missing)} videos of the list have no {what} in {s.paths}: "
                        f"{missing[:5]}{'...' if len(missing) > 5 else ''}; compute them or "
                        "drop them from the list")
    out = sorted({v: VideoSample(v, lab) for v, lab, _ in items}.values(), key=lambda x: x.video_id)
    check_labels(out, num_classes)
    return out


def check_labels(samples: Sequence[VideoSample], num_classes: Optional[int]) -> None:
    for smp in samples:
        if smp.label < 0 or (num_classes is not None and smp.label >= num_classes):
            hint = (f"0..{num_classes - 1}" if num_classes is not None else ">= 0")
            raise DataError(f"video {smp.video_id!r} has label {smp.label}, outside {hint}; "
                            "fix the list file or --num-classes")


def check_modality(sources, modality: str, samples: Sequence[VideoSample]) -> None:
    """Read one item of the first video of every shard file: a modality the shards do not
    hold (warped flow asked of tvl1-only shards, rgb of flow shards) fails here, not mid-epoch."""
    s = shard_set(sources, modality)
    seen = set()
    for smp in samples:
        shard = s[smp.video_id].shard
        if shard in seen:
            continue
        seen.add(shard)
        try:
            load_clip(sources, smp.video_id, modality, np.zeros((1, 1), np.int64))
        except (StoreError, KeyError) as exc:
            raise DataError(f"modality {modality!r} does not match shard {shard}: {exc}") from exc


class TSNDataset:
    """torch-style Dataset of TSN clips (no torch import until ``__getitem__``).

    ``mode``: ``"train"`` (random segment offsets + ``train_transform``), ``"val"`` (segment
    centres + centre crop) or ``"test"``. Item: ``(x, label, index)`` with ``x`` float32
    ``(num_segments, C, H, W)`` normalised with ``mean``/``std`` (``ModelConfig``'s).
    """

    def __init__(self, sources, samples: Sequence[VideoSample], modality: str,
                 num_segments: int, new_length: int, mode: str, input_size: int,
                 mean: Sequence[float], std: Sequence[float], seed: int = 0, transform=None,
                 flip: bool = True):
        if mode not in sampling.MODES:
            raise ValueError(f"mode {mode!r} not in {sampling.MODES}")
        self.sources = sources
        self.samples = list(samples)
        self.modality = modality
        self.num_segments = int(num_segments)
        self.new_length = int(new_length)
        self.length = modalities.get(modality).snippet_length(new_length)
        self.mode = mode
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = int(seed)
        self.epoch = 0
        if transform is None:
            transform = (transforms.train_transform(modality, input_size, flip) if mode == "train"
                         else transforms.eval_transform(modality, input_size, "center"))
        self.transform = transform

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def _key(self, key) -> Tuple[int, int]:
        """``index`` or ``(epoch, index)`` -> (epoch, index). Samplers that yield the pair
        (``EpochSampler``) let persistent DataLoader workers follow the epoch."""
        if isinstance(key, tuple):
            return int(key[0]), int(key[1])
        return self.epoch, int(key)

    def rng(self, key) -> np.random.Generator:
        epoch, index = self._key(key)
        return np.random.default_rng((self.seed, epoch, index))

    def indices(self, key, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """``(num_segments, snippet_length)`` item indices of sample ``key`` (the first draws
        of its generator ``rng``, ``self.rng(key)`` when not given)."""
        smp = self.samples[self._key(key)[1]]
        n = num_items(self.sources, smp.video_id, self.modality)
        if self.mode == "train" and rng is None:
            rng = self.rng(key)
        return sampling.segment_indices(n, self.num_segments, self.length, self.mode,
                                        rng if self.mode == "train" else None)

    def raw(self, key) -> np.ndarray:
        """uint8 clip after the transform (before normalisation)."""
        rng = self.rng(key)
        smp = self.samples[self._key(key)[1]]
        clip = load_clip(self.sources, smp.video_id, self.modality, self.indices(key, rng))
        return self.transform(clip, rng)

    def __getitem__(self, key):
        """``index`` or ``(epoch, index)`` -> ``(x, label, index)``."""
        index = self._key(key)[1]
        x = transforms.normalize(self.raw(key), self.modality, self.mean, self.std)
        return x, self.samples[index].label, index


class EpochSampler:
    """Wraps a sampler with ``set_epoch`` (e.g. ``DistributedSampler``): yields
    ``(epoch, index)`` so that persistent DataLoader workers, whose dataset copy never sees
    ``set_epoch``, still draw each epoch's own augmentation."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, int(i)) for i in self.sampler)

    def __len__(self):
        return len(self.sampler)
