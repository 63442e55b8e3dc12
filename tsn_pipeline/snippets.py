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
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

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


def run_snippet_stage(*, kind: str, model, mcfg, forward: str, plan: SnippetPlan, sources, shards,
                      out_dir, config: Mapping[str, Any], root_extra: Mapping[str, Any],
                      make_record: Callable[[batch.Task, np.ndarray, np.ndarray], store.VideoRecord],
                      shard_index: int = 0, num_shards: int = 1, split: Optional[str] = None,
                      video_list=None, batch_size: int = 250, device="cpu", workers: int = 1,
                      amp: str = "none", overwrite: bool = False, retry_failed: bool = False,
                      progress: bool = True,
                      prepare_tasks: Optional[Callable[[List[batch.Task]], List[batch.Task]]]
                      = None) -> batch.Summary:
    """Output shard ``shard_index`` of ``num_shards`` of a snippet stage (`tsn score`,
    `tsn features`): ``model.<forward>`` over the snippets of the videos of that shard.

    ``shards`` is the input shard set of ``mcfg.modality`` (from ``sources``);
    ``make_record(task, indices (S, L), outputs (crops, S, D))`` turns one video's outputs
    into its stored record; ``prepare_tasks(tasks) -> tasks`` may relabel or refuse the
    planned videos before any work. A video that cannot be read or forwarded is a recorded
    failure of the shard.
    """
    tasks, failures = plan_tasks(shards, shard_index, num_shards, split, video_list)
    if prepare_tasks is not None:
        tasks = prepare_tasks(tasks)

    def batch_process(todo: List[batch.Task]):
        for task, idx, out in iter_video_outputs(model, forward,
                                                 SnippetDataset(sources, todo, plan), workers,
                                                 mcfg.mean, mcfg.std, batch_size, device, amp):
            yield task, out if isinstance(out, BaseException) else make_record(task, idx, out)

    return batch.run_batched_stage(kind=kind, out_dir=out_dir, shard_index=shard_index,
                           num_shards=num_shards, config=config, tasks=tasks,
                           batch_process=batch_process, overwrite=overwrite,
                           retry_failed=retry_failed, progress=progress,
                           root_extra=root_extra, initial_failures=failures)
