"""Reading `tsn train` checkpoints: every way a file can be wrong is one clear line.

A checkpoint is the dict ``train.checkpoint_state`` saves (``model.CHECKPOINT_FORMAT``):
tensors, numbers and JSON strings, loaded with ``torch.load(weights_only=True)`` so a file can
never run code. ``read_checkpoint`` is the one reader (``model.load_checkpoint``, `tsn score`,
`tsn features`, `tsn train --resume`); ``check_classes`` says when a checkpoint's classes are
not those of the data it is given. Errors say what was expected and what was found:

    run/checkpoint.pt: damaged or truncated checkpoint (5,000 bytes; torch: ...); ...
    r50.pth: not a tsn-pipeline checkpoint (found a plain state dict of 320 tensors, ...)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

MODEL_KEYS = ("format", "model", "model_config")
RESUME_KEYS = ("train_config", "optimizer", "scheduler", "epoch", "step", "best", "history",
               "torch_rng")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked (the message names the file and why)."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _found(obj: Any) -> str:
    import torch

    if isinstance(obj, dict):
        tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
        if obj and tensors == len(obj):
            return (f"a plain state dict of {tensors} tensors, e.g. ImageNet weights: give "
                    "those to `tsn train --pretrained`")
        keys = sorted(map(str, obj))
        return f"a dict with keys {keys[:8]}{' ...' if len(keys) > 8 else ''}"
    return f"a {type(obj).__name__}"


def load_weights_only(path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only,
    nothing pickled runs. Any other content or damaged bytes are one ``CheckpointError``
    line. The reader of every downloaded or converted weights file (``--pretrained``,
    ``tsn convert``); ``read_checkpoint`` adds what a `tsn train` checkpoint must hold."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:    # pickled objects other than tensors and plain containers
        raise CheckpointError(
            f"{path}: cannot be read as weights only ({first_line(exc)}); if you trust "
            "the file, keep only its weights first: torch.save(torch.load(path, "
            "weights_only=False)['state_dict'], 'weights.pth')") from None


def read_checkpoint(path, map_location="cpu", keys: Sequence[str] = MODEL_KEYS) -> Dict[str, Any]:
    """The checkpoint dict at ``path`` holding ``keys``, or a ``CheckpointError``."""
    import torch

    from .model import CHECKPOINT_FORMAT

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), expected a checkpoint of `tsn "
                              "train`")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:   # torch raises many types for bad bytes; none is worth a traceback
        with open(path, "rb") as fh:
            zipped = fh.read(4) == b"PK\x03\x04"
        if zipped:
            raise CheckpointError(f"{path}: damaged or truncated checkpoint ({size:,} bytes; "
                                  f"torch: {first_line(exc)}); use another copy or train "
                                  "again") from None
        raise CheckpointError(f"{path}: not a tsn-pipeline checkpoint ({size:,} bytes that "
                              f"torch cannot load: {first_line(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = (f"format {ckpt['format']!r}" if isinstance(ckpt, dict) and "format" in ckpt
                 else _found(ckpt))
        raise CheckpointError(f"{path}: not a tsn-pipeline checkpoint (expected format "
                              f"{CHECKPOINT_FORMAT!r}, found {found})")
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}, which `tsn train` writes; "
                              "use the checkpoint.pt or best.pt of a run")
    return ckpt


def model_config(ckpt: Dict[str, Any], path):
    """The ``ModelConfig`` stored in a checkpoint read by ``read_checkpoint``."""
    from .model import ModelConfig

    try:
        return ModelConfig.from_dict(json.loads(ckpt["model_config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unusable model settings in the checkpoint "
                              f"({first_line(exc)})") from None


def load_checkpoint_weights(model, ckpt: Dict[str, Any], path) -> None:
    """``model.load_weights`` of ``ckpt["model"]``, with a one-line error when they do not fit."""
    from .model import load_weights

    try:
        load_weights(model, ckpt["model"], name=str(path))
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: the stored weights do not fit the stored model "
                              f"settings ({first_line(exc)})") from None


def check_classes(path, num_classes: int, class_lists: Sequence[Optional[Sequence[str]]],
                  labels: Dict[str, int], where: str) -> None:
    """Refuse data of more classes than the checkpoint has: a label outside
    ``0..num_classes - 1``, or a ``classes`` list of the data (its shards' root attribute)
    longer than ``num_classes``. A shorter list is no proof (a subset's list ends at its
    largest label), so it is allowed."""
    bad = sorted((v, lab) for v, lab in labels.items() if lab >= num_classes)
    if bad:
        shown = ", ".join(f"{v!r} (label {lab})" for v, lab in bad[:3])
        raise CheckpointError(f"{path} was trained for {num_classes} classes, but {where} has "
                              f"labels outside 0..{num_classes - 1}: {shown}"
                              f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}; use the "
                              "checkpoint of this dataset")
    longest = max((list(c) for c in class_lists if c is not None), key=len, default=[])
    if len(longest) > num_classes:
        raise CheckpointError(f"{path} was trained for {num_classes} classes, but {where} has "
                              f"{len(longest)} classes ({', '.join(longest[:3])}, ...); use "
                              "the checkpoint of this dataset")


def labels_by_name(tasks, classes: Sequence[str], path) -> list:
    """``tasks`` (``batch.Task``) with their labels in the order of the checkpoint's
    ``classes``, found by each video's class name.

    The data's label ``i`` need not be the model's output ``i``: another list may order the
    classes differently, or hold a subset of them. A video whose class name is known gets the
    index of that name among ``classes``; a name the checkpoint was not trained on is an error
    naming it; a video without a class name keeps its label (then only ``check_classes``
    can check it).
    """
    from dataclasses import replace

    index = {str(c): i for i, c in enumerate(classes)}
    out, unknown = [], {}
    for task in tasks:
        name = str(task.meta.get("class_name", "") or "")
        if not name:
            out.append(task)
        elif name in index:
            out.append(replace(task, label=index[name]))
        else:
            unknown.setdefault(name, task.video_id)
    if unknown:
        shown = ", ".join(f"{n!r} (e.g. {v!r})" for n, v in sorted(unknown.items())[:3])
        raise CheckpointError(f"{path} was trained on the classes {list(classes)[:8]}"
                              f"{' ...' if len(classes) > 8 else ''}, which do not include "
                              f"{shown}; use the checkpoint of this dataset")
    return out
