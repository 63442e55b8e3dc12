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

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import batch, store
from .fuse import VideoScores

log = logging.getLogger(__name__)

KIND = "scores"
CROP_CHOICES = (1, 3, 5, 10)
CROP_AGGS = ("mean", "max")
AMPS = ("none", "bf16")


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
    configs = {json.dumps(r.get("config"), sort_keys=True): p for p, r in shards.root.items()}
    if len(configs) > 1:
        (a, pa), (b, pb) = list(configs.items())[:2]
        diff = batch.config_diff(json.loads(a) or {}, json.loads(b) or {})
        raise store.StoreError(f"{pa} and {pb} were scored with different settings "
                               f"({'; '.join(diff[:4])}); give each run as its own --scores")
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


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# -- settings -----------------------------------------------------------------------------
CROP_NAMES = {1: "center", 3: "three", 5: "five", 10: "ten"}


@dataclass(frozen=True)
class ScoreConfig:
    """Test protocol of ``tsn score`` (defaults: TSN's 25 snippets x 10 crops, mean).

    ``scale_size``: short side the frames are resized to before cropping (None: ``input_size
    * 256 // 224``, i.e. 256 for 224 crops; frames decoded at 340x256 are then not resized).
    """

    num_snippets: int = 25
    crops: Optional[int] = None        # None: 10, or 5 for a model trained with --no-flip
    crop_agg: str = "mean"
    scale_size: Optional[int] = None
    save_crops: bool = False
    amp: str = "none"

    def __post_init__(self):
        if self.amp not in AMPS:
            raise ValueError(f"amp={self.amp!r} is not one of {AMPS}")
        if int(self.num_snippets) < 1:
            raise ValueError(f"num_snippets={self.num_snippets} must be >= 1 (TSN: 25)")
        if self.crops is not None and self.crops not in CROP_CHOICES:
            raise ValueError(f"crops={self.crops} is not one of {CROP_CHOICES} (TSN: 10)")
        if self.crop_agg not in CROP_AGGS:
            raise ValueError(f"crop_agg={self.crop_agg!r} is not one of {CROP_AGGS}")
        if self.scale_size is not None and int(self.scale_size) < 1:
            raise ValueError(f"scale_size={self.scale_size} must be >= 1")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def crops_for_checkpoint(crops: Optional[int], train_cfg: Mapping[str, Any]) -> int:
    """Crops per snippet for a checkpoint trained with ``train_cfg``: ``crops`` or its default.

    TSN's 10 crops average each crop with its mirror image. A model trained without flips
    (``tsn train --no-flip``, for classes a mirror image turns into each other) is tested
    without them: 5 crops (4 corners + centre) by default, and asking for 10 is an error.
    """
    flipped = bool(train_cfg.get("flip", True))
    if crops is None:
        return 10 if flipped else 5
    if crops == 10 and not flipped:
        raise ValueError("this checkpoint was trained with --no-flip: the 10-crop test would "
                         "average every crop with its mirror image, which for direction-"
                         "sensitive classes is another class; use --crops 5 (4 corners + "
                         "centre), 3 or 1")
    return crops


# -- the snippet engine shared by score and features ----------------------------------------
@dataclass(frozen=True)
class SnippetPlan:
    """How one video becomes model input: which items, which transform (picklable).

    ``indices(num_items) -> (S, L)`` int64 item indices; ``transform`` maps the uint8 clip
    ``(S, L, ...)`` to ``(crops, S, L, ...)`` (a crop axis is added for a centre crop).
    """

    modality: str
    snippet_length: int
    num_snippets: Optional[int] = None      # N evenly spaced snippets (TSN test sampling)
    stride: Optional[int] = None            # or one snippet every `stride` items from 0
    input_size: int = 224
    crops: int = 1
    scale_size: Optional[int] = None

    def __post_init__(self):
        if (self.num_snippets is None) == (self.stride is None):
            raise ValueError("give exactly one of num_snippets and stride")
        if self.crops not in CROP_CHOICES:
            raise ValueError(f"crops={self.crops} is not one of {CROP_CHOICES}")

    def indices(self, num_items: int) -> np.ndarray:
        from .sampling import segment_indices

        if self.num_snippets is not None:
            return segment_indices(num_items, self.num_snippets, self.snippet_length, "test")
        return stride_indices(num_items, self.stride, self.snippet_length)

    def transform(self):
        from .transforms import eval_transform

        return eval_transform(self.modality, self.input_size, CROP_NAMES[self.crops],
                              self.scale_size)


def stride_indices(num_items: int, stride: int, length: int) -> np.ndarray:
    """Snippets starting at items ``0, stride, 2*stride, ...`` while a whole snippet fits.

    Returns ``(S, length)`` int64. A video shorter than one snippet gives one snippet at 0
    with the last item repeated (as ``sampling.segment_indices``).

    >>> stride_indices(40, 16, 1)[:, 0].tolist()
    [0, 16, 32]
    >>> stride_indices(40, 16, 5)[:, 0].tolist()      # last start must leave 5 fields: <= 35
    [0, 16, 32]
    >>> stride_indices(36, 16, 5)[:, 0].tolist()      # 32 + 5 > 36
    [0, 16]
    >>> stride_indices(3, 16, 5).tolist()
    [[0, 1, 2, 2, 2]]
    """
    if int(num_items) < 1:
        raise ValueError(f"num_items={num_items}: a video needs at least one frame/flow field")
    if int(stride) < 1 or int(length) < 1:
        raise ValueError(f"stride={stride} and length={length} must be >= 1")
    avail = max(int(num_items) - int(length) + 1, 1)
    starts = np.arange(0, avail, int(stride), dtype=np.int64)
    idx = starts[:, None] + np.arange(int(length), dtype=np.int64)[None, :]
    return np.minimum(idx, int(num_items) - 1)


def num_items(sources, video_id: str, modality: str) -> int:
    """Frames (rgb, rgbdiff) or flow fields (flow, warped) of a video.

    The shard index gives ``num_flows`` for flow shards; the attribute is read directly as
    well so that flow shards indexed by an older reader (``num_frames`` first) still work.
    """
    from . import data

    n = data.num_items(sources, video_id, modality)
    if data.needs(modality) == "flow":
        n = int(data.shard_set(sources, modality)[video_id].attrs.get("num_flows", n))
    return n


SNIPPETS_PER_ITEM = 64   # snippets of one video read and cropped at once (bounds memory)


def _failure(exc: BaseException) -> batch.VideoFailure:
    """The error as a VideoFailure carrying its text: it crosses from DataLoader workers
    safely (some exception classes do not survive pickling)."""
    if isinstance(exc, batch.VideoFailure):
        return exc
    return batch.VideoFailure(f"{type(exc).__name__}: {exc}")


class SnippetDataset:
    """Model input of several videos, in chunks of at most ``chunk`` snippets of one video.

    Item ``j``: ``(task, part, parts, indices (s, L), uint8 rows (crops * s, L, ...))``, rows
    ordered crop-major; or ``(task, part, parts, None, VideoFailure)``. Chunks keep a long
    video (an hour at stride 16: thousands of snippets) from being decoded into memory at
    once. Runs in DataLoader workers; never raises per video.
    """

    def __init__(self, sources, tasks: Sequence[batch.Task], plan: SnippetPlan,
                 chunk: int = SNIPPETS_PER_ITEM):
        self.sources = sources
        self.plan = plan
        self.transform = plan.transform()
        self.items: List[Tuple] = []
        for task in tasks:
            try:
                idx = plan.indices(num_items(sources, task.video_id, plan.modality))
            except Exception as exc:
                self.items.append((task, 0, 1, None, _failure(exc)))
                continue
            parts = max(1, -(-len(idx) // int(chunk)))
            for p in range(parts):
                self.items.append((task, p, parts, idx[p * chunk:(p + 1) * chunk], None))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, j):
        from . import data

        task, part, parts, idx, err = self.items[j]
        if err is not None:
            return task, part, parts, None, err
        try:
            if part == 0:      # the whole video is checked once, before its first chunk
                data.shard_set(self.sources, self.plan.modality).check_video(task.video_id)
            clip = data.load_clip(self.sources, task.video_id, self.plan.modality, idx)
            out = self.transform(clip, None)
            if self.plan.crops == 1:
                out = out[None]
            out = np.ascontiguousarray(out.reshape((-1,) + out.shape[2:]))   # (crops*s, L, ..)
            return task, part, parts, idx, out
        except Exception as exc:   # recorded as this video's failure by the batch runner
            return task, part, parts, None, _failure(exc)


def _identity(item):
    return item


def iter_clips(dataset: SnippetDataset, workers: int) -> Iterator[Tuple]:
    """Items of ``dataset`` in order; ``workers > 1`` reads them in that many processes."""
    if workers <= 1 or len(dataset) <= 1:
        for i in range(len(dataset)):
            yield dataset[i]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=int(workers),
                        collate_fn=_identity, prefetch_factor=2, persistent_workers=False)
    yield from loader


def normalize_rows(x, modality: str, mean: Sequence[float], std: Sequence[float]):
    """uint8 torch rows ``(N, L, H, W, 3)`` / ``(N, L, 2, H, W)`` (any device) -> float32
    ``(N, C, H, W)``: ``transforms.normalize``, computed where ``x`` is."""
    from .transforms import normalize

    return normalize(x, modality, mean, std)


def run_model(model, forward: str, items: Iterator[Tuple], cfg_mean, cfg_std, modality: str,
              batch_size: int, device, amp: str = "none") -> Iterator[Tuple]:
    """Forward the rows of several items (chunks of videos) in device batches of
    ``batch_size`` rows.

    ``items``: tuples whose last element is uint8 rows or an exception (``SnippetDataset``).
    Yields each item, in input order, with its last element replaced by the outputs
    (float32 numpy ``(rows, D)``) or left as the exception. ``forward``:
    ``"forward_snippets"`` or ``"forward_features"``. ``amp="bf16"`` runs the model under
    bfloat16 autocast (outputs are float32).
    """
    import torch

    if amp not in AMPS:
        raise ValueError(f"amp={amp!r} is not one of {AMPS}")
    dev_type = torch.device(device).type
    fn = getattr(model, forward)
    pending: List[Tuple] = []
    rows = 0

    def flush():
        nonlocal pending, rows
        good = [i for i, p in enumerate(pending) if not isinstance(p[-1], BaseException)]
        outs: Dict[int, Any] = {}
        if good:
            try:
                x = torch.from_numpy(np.concatenate([pending[i][-1] for i in good]))
                chunks = []
                with torch.inference_mode(), torch.autocast(dev_type, dtype=torch.bfloat16,
                                                            enabled=amp == "bf16"):
                    for a in range(0, x.shape[0], batch_size):
                        xb = normalize_rows(x[a:a + batch_size].to(device, non_blocking=True),
                                            modality, cfg_mean, cfg_std)
                        chunks.append(fn(xb).float().cpu())
                y = torch.cat(chunks).numpy()
                a = 0
                for i in good:
                    n = len(pending[i][-1])
                    outs[i] = y[a:a + n]
                    a += n
            except Exception as exc:     # e.g. out of device memory: these videos fail
                for i in good:
                    outs[i] = _failure(exc)
        for i, p in enumerate(pending):
            yield p[:-1] + (outs.get(i, p[-1]),)
        pending, rows = [], 0

    for item in items:
        pending.append(item)
        if not isinstance(item[-1], BaseException):
            rows += len(item[-1])
        if rows >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


def iter_video_outputs(model, forward: str, dataset: SnippetDataset, workers: int, mean, std,
                       batch_size: int, device, amp: str = "none") -> Iterator[Tuple]:
    """Per video, in task order: ``(task, indices (S, L), outputs (crops, S, D))`` or
    ``(task, None, exception)``. Reads with ``workers`` processes, forwards on ``device``."""
    plan = dataset.plan
    idxs: List[np.ndarray] = []
    outs: List[np.ndarray] = []
    failed: Optional[BaseException] = None
    for task, part, parts, idx, out in run_model(model, forward, iter_clips(dataset, workers),
                                                 mean, std, plan.modality, batch_size, device,
                                                 amp):
        if part == 0:
            idxs, outs, failed = [], [], None
        if isinstance(out, BaseException):
            failed = failed or out
        elif failed is None:
            idxs.append(idx)
            outs.append(out.reshape(plan.crops, len(idx), -1))
        if part == parts - 1:
            if failed is not None:
                yield task, None, failed
            else:
                yield task, np.concatenate(idxs), np.concatenate(outs, axis=1)


def resolve_device(name: str):
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return dev


# -- selecting the videos of a shard --------------------------------------------------------
def plan_tasks(shards, shard_index: int, num_shards: int, split: Optional[str] = None,
               video_list=None) -> Tuple[List[batch.Task], List[Dict[str, str]]]:
    """Tasks of one output shard, from the input shards' index (or a list), sorted by id.

    ``split`` keeps the videos whose ``split`` (list column or shard attribute) matches.
    The shard takes the videos of the selection that ``batch.shard_of`` assigns to it (so
    output shard i reads input shard i of the same count). Videos of the list missing from
    the input shards are failures of their shard (never silently skipped).
    """
    if video_list is not None:
        items = [(it.video_id, int(it.label), it.class_name, it.split) for it in video_list.items]
    else:
        items = [(e.video_id, e.label, str(e.attrs.get("class_name", "") or ""),
                  str(e.attrs.get("split", "") or "")) for e in shards.entries()]
    if split:
        items = [it for it in items if it[3] == split]
    by_id = {}
    for it in items:
        by_id.setdefault(it[0], it)
    if not by_id:
        where = "the list" if video_list is not None else f"the shards {shards.paths}"
        raise ValueError(f"no videos to process in {where}"
                         + (f" with split {split!r}" if split else ""))
    mine = batch.assign_shard(by_id, shard_index, num_shards)
    failures = [{"video_id": v, "source": "", "reason": f"not in the input shards {shards.paths}"}
                for v in mine if v not in shards]
    tasks = []
    for vid in (v for v in mine if v in shards):
        _, label, class_name, _ = by_id[vid]
        tasks.append(batch.Task(vid, shards[vid].shard, label, {"class_name": class_name}))
    return tasks, failures


def class_names(model_cfg, train_cfg: Dict[str, Any], shards) -> Optional[List[str]]:
    """Class names for the score file: the training config's, else the input shards' list
    when it has ``num_classes`` entries."""
    for names in (train_cfg.get("classes"), *(r.get("classes") for r in shards.root.values())):
        names = _as_names(names)
        if names is not None and len(names) == model_cfg.num_classes:
            return list(names)
    return None


# -- the stage ------------------------------------------------------------------------------
def run_score(checkpoint, sources, out_dir, cfg: ScoreConfig, shard_index: int = 0,
              num_shards: int = 1, split: Optional[str] = None, video_list=None,
              batch_size: int = 250, device: str = "auto", workers: int = 1,
              overwrite: bool = False, retry_failed: bool = False,
              progress: bool = True) -> batch.Summary:
    """Score shard ``shard_index`` of ``num_shards``: see the module docstring."""
    from . import data
    from .checkpoint import check_classes
    from .model import load_checkpoint

    dev = resolve_device(device)
    model, mcfg, train_cfg = load_checkpoint(str(checkpoint), map_location="cpu")
    model.to(dev).eval()
    cfg = replace(cfg, crops=crops_for_checkpoint(cfg.crops, train_cfg))
    shards = data.shard_set(sources, mcfg.modality)
    plan = SnippetPlan(mcfg.modality, mcfg.snippet_length, num_snippets=cfg.num_snippets,
                       input_size=mcfg.input_size, crops=cfg.crops, scale_size=cfg.scale_size)
    tasks, failures = plan_tasks(shards, shard_index, num_shards, split, video_list)
    check_classes(checkpoint, mcfg.num_classes, [_as_names(r.get("classes"))
                                                 for r in shards.root.values()],
                  {t.video_id: t.label for t in tasks},
                  f"the input shards in {os.path.dirname(str(shards.paths[0])) or '.'}")
    classes = class_names(mcfg, train_cfg, shards)
    config = dict(cfg.to_dict(), modality=mcfg.modality, checkpoint=str(checkpoint),
                  checkpoint_sha256=file_sha256(checkpoint), input_size=mcfg.input_size)

    def batch_process(todo: List[batch.Task]):
        for task, idx, out in iter_video_outputs(model, "forward_snippets",
                                                 SnippetDataset(sources, todo, plan), workers,
                                                 mcfg.mean, mcfg.std, batch_size, dev, cfg.amp):
            if isinstance(out, BaseException):
                yield task, out
                continue
            crop_scores = out.transpose(1, 0, 2)                         # (S, crops, K)
            yield task, scores_record(
                task.video_id, crop_scores, label=task.label, modality=mcfg.modality,
                crop_agg=cfg.crop_agg, save_crops=cfg.save_crops, snippet_indices=idx,
                class_name=task.meta.get("class_name", ""),
                source_length=num_items(sources, task.video_id, mcfg.modality))

    root_extra = {"modality": mcfg.modality, "checkpoint": str(checkpoint),
                  "model_config": json.dumps(mcfg.to_dict(), sort_keys=True),
                  "train_config": json.dumps(train_cfg, sort_keys=True, default=str),
                  "classes": json.dumps(classes)}
    return batch.run_stage(kind=KIND, out_dir=out_dir, shard_index=shard_index,
                           num_shards=num_shards, config=config, tasks=tasks,
                           batch_process=batch_process, overwrite=overwrite,
                           retry_failed=retry_failed, progress=progress,
                           root_extra=root_extra, initial_failures=failures)


def shard_accuracy(path, topk: Sequence[int] = (1, 5)) -> Dict[str, Any]:
    """Video-level metrics of one score file (snippet-averaged scores, labelled videos)."""
    from . import metrics

    vs = load_video_scores([path])
    return metrics.evaluate(vs.scores, vs.labels, topk)
