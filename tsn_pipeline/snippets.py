"""Running a TSN model over the snippets of videos: the engine of `tsn score` and `tsn features`.

Reads frame shards (RGB, RGB difference) or flow shards (TV-L1, warped) through
``data.Sources`` and a model (a `tsn train` checkpoint, or an ImageNet backbone for
features); writes nothing itself: ``run_snippet_stage`` plans the videos of one output shard,
reads and crops their snippets (``SnippetPlan``, ``SnippetDataset``, in ``workers``
processes), forwards them in device batches (``run_model``), reassembles each video's outputs
(``iter_video_outputs``) and hands them to the stage's record maker; the batch runner writes
the shard (resume, failures file, lock).

A snippet is the ``snippet_length`` consecutive items (frames or flow fields) that one
TSN input takes: ``num_snippets`` evenly spaced ones (TSN's test sampling) or one every
``stride`` items; each becomes ``crops`` crops (1, 3, 5 or 10; see ``transforms``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from typing import (Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple)

import numpy as np

from . import batch, store
from .data import num_items

AMPS = ("none", "bf16")
CROP_CHOICES = (1, 3, 5, 10)
CROP_NAMES = {1: "center", 3: "three", 5: "five", 10: "ten"}


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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


@dataclass(frozen=True)
class SnippetSettings:
    """The settings `tsn score` and `tsn features` share (``score.ScoreConfig`` and
    ``features.FeaturesConfig`` add their own): snippets, crops, resize, precision.

    ``crops=None``: the checkpoint's default (``crops_for_checkpoint``). ``scale_size``: short
    side the frames are resized to before cropping (None: ``input_size * 256 // 224``).
    """

    num_snippets: Optional[int] = None
    crops: Optional[int] = None
    scale_size: Optional[int] = None
    amp: str = "none"

    def __post_init__(self):
        if self.amp not in AMPS:
            raise ValueError(f"amp={self.amp!r} is not one of {AMPS}")
        if self.num_snippets is not None and int(self.num_snippets) < 1:
            raise ValueError(f"num_snippets={self.num_snippets} must be >= 1")
        if self.crops is not None and self.crops not in CROP_CHOICES:
            raise ValueError(f"crops={self.crops} is not one of {CROP_CHOICES}")
        if self.scale_size is not None and int(self.scale_size) < 1:
            raise ValueError(f"scale_size={self.scale_size} must be >= 1")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


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
        from .sampling import segment_indices, stride_indices

        if self.num_snippets is not None:
            return segment_indices(num_items, self.num_snippets, self.snippet_length, "test")
        return stride_indices(num_items, self.stride, self.snippet_length)

    def transform(self):
        from .transforms import eval_transform

        return eval_transform(self.modality, self.input_size, CROP_NAMES[self.crops],
                              self.scale_size)


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

    from .transforms import normalize

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
                        xb = normalize(x[a:a + batch_size].to(device, non_blocking=True),
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


def as_names(value) -> Optional[Tuple[str, ...]]:
    """A stored ``classes`` attribute as a tuple of names (``None`` when absent)."""
    if value is None or isinstance(value, str):
        return None
    return tuple(str(v.decode() if isinstance(v, bytes) else v) for v in value)


def class_names(model_cfg, train_cfg: Dict[str, Any], shards) -> Optional[List[str]]:
    """Class names for the score file: the training config's, else the input shards' list
    when it has ``num_classes`` entries."""
    for names in (train_cfg.get("classes"), *(r.get("classes") for r in shards.root.values())):
        names = as_names(names)
        if names is not None and len(names) == model_cfg.num_classes:
            return list(names)
    return None


def load_model(checkpoint=None, model_config=None):
    """``(model in eval mode, ModelConfig, train config, origin dict)`` from a `tsn train`
    checkpoint, or from ``model_config`` (an ImageNet-initialised backbone: its
    ``pretrained`` file, no TSN training). ``origin`` names the weights (path + SHA-256)."""
    from .model import build_model, load_checkpoint, load_weights

    if (checkpoint is None) == (model_config is None):
        raise ValueError("give a checkpoint or a model config (--arch/--pretrained), not both")
    if checkpoint is not None:
        model, mcfg, train_cfg = load_checkpoint(str(checkpoint), map_location="cpu")
        return model, mcfg, train_cfg, {"checkpoint": os.path.realpath(checkpoint),
                                        "checkpoint_sha256": file_sha256(checkpoint)}
    if not model_config.pretrained:
        raise ValueError("without a checkpoint, give --pretrained (a torchvision-format state "
                         "dict file); features of random weights are of no use")
    model = build_model(model_config)
    load_weights(model, model_config.pretrained)
    model.eval()
    return model, model_config, {}, {"pretrained": os.path.realpath(model_config.pretrained),
                                     "pretrained_sha256": file_sha256(model_config.pretrained),
                                     "arch": model_config.arch}


class StageModel(NamedTuple):
    """The model of a snippet stage and what the stage's hooks need to know about it."""

    model: Any
    mcfg: Any                      # its model.ModelConfig
    train_cfg: Dict[str, Any]      # the training config ({} for an ImageNet backbone)
    origin: Dict[str, str]         # the weights' file and SHA-256 (``load_model``)
    shards: Any                    # the input shard set of its modality


def run_snippet_stage(*, kind: str, forward: str, checkpoint, cfg: SnippetSettings, sources,
                      out_dir, make_record: Callable[[StageModel, batch.Task, np.ndarray,
                                                      np.ndarray], store.VideoRecord],
                      root_extra: Callable[[StageModel], Mapping[str, Any]] = lambda m: {},
                      prepare_tasks: Optional[Callable[[StageModel, List[batch.Task]],
                                                       List[batch.Task]]] = None,
                      model_config=None, shard_index: int = 0, num_shards: int = 1,
                      split: Optional[str] = None, video_list=None, batch_size: int = 250,
                      device: str = "auto", workers: int = 1, overwrite: bool = False,
                      retry_failed: bool = False, progress: bool = True) -> batch.Summary:
    """Output shard ``shard_index`` of ``num_shards`` of a snippet stage (`tsn score`,
    `tsn features`): ``model.<forward>`` over the snippets of the videos of that shard.

    The model is the ``checkpoint``'s, or the ImageNet backbone ``model_config``
    (``load_model``); it reads the shards of its modality in ``sources``. ``cfg`` (a
    ``SnippetSettings``, with ``stride`` for features) says which snippets and crops; it is
    the shard's ``config`` with the model's modality, input size and origin.
    ``make_record(m, task, indices (S, L), outputs (crops, S, D))`` turns one video's outputs
    into its stored record; ``root_extra(m)`` adds root attributes; ``prepare_tasks(m, tasks)
    -> tasks`` may relabel or refuse the planned videos before any work. A video that cannot
    be read or forwarded is a recorded failure of the shard.
    """
    from . import data
    from .devices import resolve_device

    dev = resolve_device(device)
    model, mcfg, train_cfg, origin = load_model(checkpoint, model_config)
    model.to(dev).eval()
    cfg = replace(cfg, crops=crops_for_checkpoint(cfg.crops, train_cfg))
    m = StageModel(model, mcfg, train_cfg, origin, data.shard_set(sources, mcfg.modality))
    plan = SnippetPlan(mcfg.modality, mcfg.snippet_length, num_snippets=cfg.num_snippets,
                       stride=getattr(cfg, "stride", None), input_size=mcfg.input_size,
                       crops=cfg.crops, scale_size=cfg.scale_size)
    tasks, failures = plan_tasks(m.shards, shard_index, num_shards, split, video_list)
    if prepare_tasks is not None:
        tasks = prepare_tasks(m, tasks)

    def batch_process(todo: List[batch.Task]):
        for task, idx, out in iter_video_outputs(model, forward,
                                                 SnippetDataset(sources, todo, plan), workers,
                                                 mcfg.mean, mcfg.std, batch_size, dev, cfg.amp):
            yield task, out if isinstance(out, BaseException) else make_record(m, task, idx, out)

    root = {"modality": mcfg.modality, "checkpoint": origin.get("checkpoint", "null"),
            "model_config": json.dumps(mcfg.to_dict(), sort_keys=True),
            "classes": json.dumps(class_names(mcfg, train_cfg, m.shards)), **root_extra(m)}
    return batch.run_batched_stage(
        kind=kind, out_dir=out_dir, shard_index=shard_index, num_shards=num_shards,
        config=dict(cfg.to_dict(), modality=mcfg.modality, input_size=mcfg.input_size, **origin),
        tasks=tasks, batch_process=batch_process, overwrite=overwrite, retry_failed=retry_failed,
        progress=progress, root_extra=root, initial_failures=failures)
