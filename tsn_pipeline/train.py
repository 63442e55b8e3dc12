"""Train one TSN stream (rgb, flow, warped or rgbdiff) from frame/flow shards.

Reads frame shards and/or flow shards (and optionally a list CSV with splits); writes a run
folder::

    <out>/checkpoint.pt     latest state (model, optimizer, scheduler, RNG, epoch, configs)
    <out>/best.pt           the checkpoint with the best validation top-1 (when validating)
    <out>/metrics.jsonl     one JSON line per epoch: loss, top-1, val loss/top-1, lr, clips/s
    <out>/metrics.png       the curves (matplotlib, Agg)
    <out>/train_config.json the resolved training config
    <out>/.train.lock       held by the process training into <out>: a second one refuses

Checkpoints are written to ``name.tmp`` and renamed, so a killed run leaves a whole file;
``resume=True`` continues from ``checkpoint.pt`` to the same final weights as an uninterrupted
run (every random draw is a function of ``(seed, epoch, index)`` or re-seeded per epoch).

Under ``torchrun`` (``WORLD_SIZE > 1``) training is data parallel (DDP; NCCL on CUDA, gloo on
CPU): ``batch_size`` is the GLOBAL batch, split evenly over the processes, and each process
reads its share of every global batch (``DistributedSampler``), so 2 processes x 4 clips
take the same steps as 1 process x 8 clips. Partial BN's first BatchNorm normalises each
process's own batch (as the original multi-GPU TSN did); ``sync_bn`` (CUDA only) makes it
use the global batch.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import modalities

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
PLOT = "metrics.png"
# wall-clock fields of an epoch's row: in metrics.jsonl, not in checkpoints, so that the same
# training writes the same checkpoint bytes (and sha256) every time
WALL_CLOCK = ("seconds", "clips_per_s")
CONFIG_JSON = "train_config.json"
LOCK = ".train.lock"       # held by the process writing the run folder
PLOT_EVERY_S = 30.0     # redraw metrics.png at most this often (and after the last epoch)



class TrainError(RuntimeError):
    """Training cannot start or go on (bad data, NaN loss, incompatible resume)."""


@dataclass(frozen=True)
class TrainConfig:
    """Resolved settings of one training run (saved in every checkpoint, as JSON).

    ``epochs`` xor ``iterations`` (if neither, the TSN recipe's iterations for the modality);
    ``lr_steps`` are in the same unit (epochs or iterations). ``None`` fields take the
    modality's recipe defaults (``modalities.MODALITIES``: TSN's released recipe) in
    ``resolve``.
    """

    modality: str = "rgb"
    frames: Optional[str] = None
    flow: Optional[str] = None
    list_file: Optional[str] = None
    split: Optional[str] = "train"
    val_split: Optional[str] = None
    num_classes: Optional[int] = None
    classes: Optional[Tuple[str, ...]] = None   # label i's name (from the list or shards)
    epochs: Optional[int] = None
    iterations: Optional[int] = None
    batch_size: int = 32
    lr: Optional[float] = None
    lr_steps: Optional[Tuple[int, ...]] = None
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_grad: Optional[float] = None
    amp: str = "none"
    sync_bn: bool = False
    workers: int = 2
    threads: Optional[int] = None
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    val_every: int = 1
    flip: bool = True          # random horizontal flips (off for direction-sensitive classes)

    def __post_init__(self):
        modalities.get(self.modality)          # a ValueError naming the modalities
        if self.epochs is not None and self.iterations is not None:
            raise ValueError("give epochs or iterations, not both")
        for k in ("epochs", "iterations"):
            v = getattr(self, k)
            if v is not None and int(v) < 1:
                raise ValueError(f"{k}={v} must be >= 1")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.lr_steps is not None:
            steps = tuple(int(s) for s in self.lr_steps)
            if any(s < 1 for s in steps) or list(steps) != sorted(steps):
                raise ValueError(f"lr_steps {steps} must be increasing positive numbers")
            object.__setattr__(self, "lr_steps", steps)
        if self.clip_grad is not None and not self.clip_grad >= 0:
            raise ValueError(f"clip_grad={self.clip_grad} must be >= 0 (0 turns clipping off)")
        if int(self.seed) < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"amp {self.amp!r} must be 'none' or 'bf16'")
        if not self.frames and not self.flow:
            raise ValueError("give frame shards (--frames) and/or flow shards (--flow)")

    def resolve(self) -> "TrainConfig":
        """Fill recipe defaults: lr, clip_grad, iterations, lr_steps (scaled to epochs)."""
        r = vars(modalities.get(self.modality))
        new = {}
        if self.lr is None:
            new["lr"] = r["lr"]
        if self.clip_grad is None:
            new["clip_grad"] = r["clip_grad"]
        if self.epochs is None and self.iterations is None:
            new["iterations"] = r["iterations"]
        if self.lr_steps is None:
            if self.epochs is None:
                total = new.get("iterations", self.iterations)
                new["lr_steps"] = tuple(s for s in r["lr_steps"] if s < total)
            else:   # the recipe's steps as fractions of its length, scaled to the epochs
                new["lr_steps"] = tuple(sorted({max(1, round(self.epochs * s / r["iterations"]))
                                                for s in r["lr_steps"]} - {self.epochs}))
        return replace(self, **new)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for k in ("lr_steps", "classes"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d


# -- distributed --------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: Any = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Single process unless launched by torchrun (WORLD_SIZE > 1): then init NCCL (CUDA)
    or gloo (CPU) and pin one GPU per local rank."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    from .devices import resolve_device

    try:
        device = str(resolve_device(device))
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    if device == "cuda":
        device = f"cuda:{local}" if world > 1 else "cuda"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def _all_sum(values: Sequence[float], d: Dist) -> List[float]:
    import torch

    if d.world == 1:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


class _StridedSampler:
    """Evaluation sampler: indices ``rank, rank + world, ...`` (no padding, no repeats)."""

    def __init__(self, n: int, rank: int, world: int):
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self):
        return len(self.idx)


# -- setup --------------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; with ``deterministic`` allow only deterministic kernels
    (``run_training`` restores the previous setting when it returns)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True


def class_names_of(sources, modality: str, video_list) -> Optional[Tuple[str, ...]]:
    """The class names label ``i`` stands for: the list's, else the shards' ``classes`` root
    attribute, else None (labels without names)."""
    from . import data

    if video_list is not None and video_list.classes:
        return tuple(video_list.classes)
    for attrs in data.shard_set(sources, modality).root.values():
        classes = attrs.get("classes")
        if isinstance(classes, list) and classes:
            return tuple(str(c) for c in classes)
    return None


def build_datasets(cfg: TrainConfig):
    """(sources, train samples, val samples, num_classes) with every check done up front."""
    from . import data

    sources = data.Sources.open(cfg.frames, cfg.flow)
    video_list = None
    if cfg.list_file:
        from .videolist import load_video_list

        video_list = load_video_list(cfg.list_file)
    try:
        train = data.select_videos(sources, cfg.modality, cfg.split, video_list)
    except data.DataError as exc:
        raise TrainError(str(exc)) from exc
    if not train:
        everything = data.select_videos(sources, cfg.modality, None, video_list)
        splits = sorted({_split_of(sources, cfg.modality, v.video_id, video_list)
                         for v in everything})
        raise TrainError(f"no training videos of split {cfg.split!r} in the "
                         f"{'list ' + cfg.list_file if cfg.list_file else 'shards'} (splits "
                         f"there: {splits}); choose one with --split, or --split '' for all")
    val_split = cfg.val_split
    val: List = []
    if val_split:
        val = data.select_videos(sources, cfg.modality, val_split, video_list)
        if not val:
            raise TrainError(f"--val-split {val_split!r}: no videos of that split in the "
                             f"{'list ' + cfg.list_file if cfg.list_file else 'shards'}")
    classes = class_names_of(sources, cfg.modality, video_list)
    num_classes = cfg.num_classes or (len(classes) if classes else
                                      max(smp.label for smp in train + val) + 1)
    try:
        data.check_labels(train + val, num_classes)
        data.check_modality(sources, cfg.modality, train + val)
    except data.DataError as exc:
        raise TrainError(str(exc)) from exc
    if classes and len(classes) != num_classes:
        classes = None                  # --num-classes overrides: the names no longer fit
    return sources, train, val, num_classes, classes


def _split_of(sources, modality, video_id, video_list) -> str:
    from . import data

    if video_list is not None:
        return next(it.split for it in video_list.items if it.video_id == video_id)
    return str(data.shard_set(sources, modality)[video_id].attrs.get("split", "") or "")


class SGD:
    """``torch.optim.SGD`` (momentum, weight decay, no dampening or Nesterov) with the same
    steps and the same ``state_dict`` format: a checkpoint of either resumes with the other.

    Written here because ``torch.optim``'s optimizers import ``torch._dynamo`` when built and
    stepped: seconds before the first training step on a small machine.
    """

    def __init__(self, groups: List[Dict[str, Any]], lr: float, momentum: float):
        defaults = {"lr": lr, "momentum": momentum, "dampening": 0, "weight_decay": 0,
                    "nesterov": False, "maximize": False, "foreach": None,
                    "differentiable": False, "fused": None}
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: Dict[Any, Dict[str, Any]] = {}      # parameter -> {"momentum_buffer": t}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self) -> None:
        import torch

        with torch.no_grad():
            for g in self.param_groups:
                ps = [p for p in g["params"] if p.grad is not None]
                if not ps:
                    continue
                d = [p.grad for p in ps]
                if g["weight_decay"]:
                    d = torch._foreach_add(d, ps, alpha=g["weight_decay"])
                if g["momentum"]:
                    bufs = [self.state.setdefault(p, {}).get("momentum_buffer") for p in ps]
                    if all(b is not None for b in bufs):
                        torch._foreach_mul_(bufs, g["momentum"])
                        torch._foreach_add_(bufs, d)
                    else:           # the first step: buffers start as the gradients
                        for i, p in enumerate(ps):
                            if bufs[i] is None:
                                bufs[i] = self.state[p]["momentum_buffer"] = d[i].detach().clone()
                            else:
                                bufs[i].mul_(g["momentum"]).add_(d[i])
                    d = bufs
                torch._foreach_add_(ps, d, alpha=-g["lr"])

    def state_dict(self) -> Dict[str, Any]:
        index = {}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index.setdefault(id(p), len(index)) for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items()},
                "param_groups": groups}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        params = [p for g in self.param_groups for p in g["params"]]
        saved = state["param_groups"]
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimizer state has other parameter groups")
        for g, s in zip(self.param_groups, saved):
            g.update({k: v for k, v in s.items() if k != "params"})
        self.state = {params[int(i)]: {k: v.to(params[int(i)].device, params[int(i)].dtype)
                                      for k, v in s.items()} for i, s in state["state"].items()}


class MultiStepLR:
    """``torch.optim.lr_scheduler.MultiStepLR`` over ``SGD``: every group's lr times ``gamma``
    at each milestone (in steps), computed as torch does, with its ``state_dict`` format."""

    def __init__(self, optimizer: SGD, milestones: Sequence[int], gamma: float):
        from collections import Counter

        self.optimizer = optimizer
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.milestones, self.gamma = Counter(milestones), gamma
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch, self._step_count = 0, 1
        self._last_lr = [g["lr"] for g in optimizer.param_groups]

    def step(self) -> None:
        self.last_epoch += 1
        self._step_count += 1
        if self.last_epoch in self.milestones:
            for g in self.optimizer.param_groups:
                g["lr"] = g["lr"] * self.gamma ** self.milestones[self.last_epoch]
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> List[float]:
        return self._last_lr

    def state_dict(self) -> Dict[str, Any]:
        return {"milestones": self.milestones, "gamma": self.gamma, "base_lrs": self.base_lrs,
                "last_epoch": self.last_epoch, "_step_count": self._step_count,
                "_is_initial": False, "_get_lr_called_within_step": False,
                "_last_lr": self._last_lr}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k in ("milestones", "gamma", "base_lrs", "last_epoch", "_step_count", "_last_lr"):
            setattr(self, k, state[k])


def make_optimizer(model, cfg: TrainConfig) -> SGD:
    """SGD over TSN's parameter groups: lr = lr * lr_mult, weight decay = wd * decay_mult."""
    groups = []
    for g in model.param_groups():
        groups.append({"params": g["params"], "lr": cfg.lr * g["lr_mult"],
                       "weight_decay": cfg.weight_decay * g["decay_mult"], "name": g["name"]})
    return SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def milestones(cfg: TrainConfig, steps_per_epoch: int) -> List[int]:
    """lr steps in optimizer steps (the scheduler steps once per iteration)."""
    unit = steps_per_epoch if cfg.epochs is not None else 1
    return [int(s) * unit for s in (cfg.lr_steps or ())]


# -- checkpoints --------------------------------------------------------------------------
def atomic_torch_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def checkpoint_state(model, mcfg, cfg: TrainConfig, optimizer, scheduler, epoch: int, step: int,
                     best: Optional[float], history: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Everything ``load_checkpoint`` and ``--resume`` need; only tensors, numbers, strings."""
    import torch

    from . import __version__
    from .model import CHECKPOINT_FORMAT

    return {
        "format": CHECKPOINT_FORMAT,
        "package_version": __version__,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": json.dumps(mcfg.to_dict(), sort_keys=True),
        "train_config": json.dumps(cfg.to_dict(), sort_keys=True),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": int(epoch),
        "step": int(step),
        "best": -1.0 if best is None else float(best),
        "history": json.dumps([{k: v for k, v in row.items() if k not in WALL_CLOCK}
                               for row in history]),
        "torch_rng": torch.get_rng_state(),
    }


_RESUME_FREE = {"workers", "device", "threads"}   # settings a resumed run may change


def _resume_check(stored: Dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    from .store import config_diff

    # a setting added after the checkpoint was written had its default then; one removed
    # since (moved to the model config, e.g. channels_last) is not this config's to compare
    stored = {f.name: stored.get(f.name, f.default) for f in fields(TrainConfig)
              if f.name not in _RESUME_FREE}
    diff = config_diff(stored, {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE})
    if diff:
        raise TrainError(f"{path} was trained with other settings ({'; '.join(diff[:6])}); "
                         "resume with the same options, or train into a new --out")


# -- the loop -----------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 1009 + rank) % (2**63 - 1)


def _batches(loader):
    """The loader's batches; a damaged image is a TrainError naming its shard and video."""
    from .data import DataError, worker_error_message

    try:
        yield from loader
    except DataError as exc:
        raise TrainError(worker_error_message(exc)) from None


def train_one_epoch(model, loader, optimizer, scheduler, cfg: TrainConfig, d: Dist, epoch: int,
                    step: int, stop: int, video_ids: Sequence[str]) -> Tuple[Dict[str, float], int]:
    """One pass (or until ``stop`` optimizer steps). Returns (metrics, step)."""
    import torch
    import torch.nn.functional as F

    model.train()
    loss_sum, correct, count, batches = 0.0, 0.0, 0.0, 0
    t0 = time.perf_counter()
    autocast = torch.autocast(device_type=d.device.type, dtype=torch.bfloat16,
                              enabled=cfg.amp == "bf16")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for b, (x, y, idx) in enumerate(_batches(loader)):
        if step >= stop:
            break
        x = x.to(d.device, non_blocking=True)
        y = y.to(d.device, non_blocking=True)
        with autocast:
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        bad = _all_sum([0.0 if torch.isfinite(loss).item() else 1.0], d)[0]
        if bad:
            ids = [video_ids[int(i)] for i in idx]
            raise TrainError(f"loss is not finite ({loss.item()}) at step {step + 1} (epoch "
                             f"{epoch + 1}, batch {b + 1} of the epoch, rank {d.rank}; videos "
                             f"{ids[:8]}); lower --lr, keep --clip-grad on, or check the input "
                             "of these videos")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        optimizer.step()
        scheduler.step()
        step += 1
        n = y.shape[0]
        loss_sum += loss.item() * n
        correct += (out.argmax(1) == y).sum().item()
        count += n
        batches += 1
    loss_sum, correct, count = _all_sum([loss_sum, correct, count], d)
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum / max(count, 1), "top1": correct / max(count, 1),
            "clips": int(count), "seconds": seconds,
            "clips_per_s": count / seconds if seconds > 0 else 0.0}, step


def evaluate(model, loader, d: Dist, amp: str = "none") -> Dict[str, float]:
    """Loss and top-1 of the consensus scores (segment centres, centre crop), all ranks."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    with torch.no_grad(), torch.autocast(device_type=d.device.type, dtype=torch.bfloat16,
                                         enabled=amp == "bf16"):
        for x, y, _ in _batches(loader):
            x, y = x.to(d.device), y.to(d.device)
            out = model(x).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            count += y.shape[0]
    loss_sum, correct, count = _all_sum([loss_sum, correct, count], d)
    return {"val_loss": loss_sum / max(count, 1), "val_top1": correct / max(count, 1),
            "val_clips": int(count)}


def plot_metrics(history: List[Dict[str, Any]], path: Path) -> None:
    """Loss and top-1 curves (train and validation) per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    ep = [h["epoch"] for h in history]
    ax1.plot(ep, [h["loss"] for h in history], "o-", label="train")
    ax2.plot(ep, [h["top1"] for h in history], "o-", label="train")
    val = [h for h in history if "val_top1" in h]
    if val:
        ax1.plot([h["epoch"] for h in val], [h["val_loss"] for h in val], "s-", label="val")
        ax2.plot([h["epoch"] for h in val], [h["val_top1"] for h in val], "s-", label="val")
    else:
        # training curves alone say nothing about generalisation: say why there is no val
        fig.suptitle("no validation: train with --val-split (e.g. test) for val curves",
                     fontsize=9, color="firebrick")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax2.set(xlabel="epoch", ylabel="top-1", title="accuracy", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def _with_wall_clock(history: List[Dict[str, Any]], out: Path) -> List[Dict[str, Any]]:
    """A checkpoint's history with the wall-clock fields the run's metrics.jsonl kept for the
    same epochs (none when the file is gone or unreadable)."""
    try:
        rows = [json.loads(line) for line in (out / METRICS).read_text().splitlines() if line]
        timed = {(r["epoch"], r["step"]): r for r in rows}
    except (OSError, ValueError, KeyError, TypeError):
        return history
    out_rows = []
    for row in history:
        kept = timed.get((row.get("epoch"), row.get("step")), {})
        out_rows.append({**row, **{k: kept[k] for k in WALL_CLOCK if k in kept}})
    return out_rows


def _write_history(history: List[Dict[str, Any]], out: Path) -> None:
    from .batch import atomic_write_text

    atomic_write_text(out / METRICS, "".join(json.dumps(h, sort_keys=True) + "\n" for h in history))


def run_training(cfg: TrainConfig, mcfg, out, resume: bool = False, overwrite: bool = False,
                 progress=None) -> Dict[str, Any]:
    """Train (or resume) into run folder ``out``; returns a summary dict.

    ``mcfg``: the ``model.ModelConfig`` of the stream (its ``num_classes`` is replaced by the
    training config's or the data's). ``progress(row)`` is called on the main rank once the
    data and model are ready, with the plan (``{"start": {...}}``: videos, steps, batch,
    device, the step it resumes from), then after every epoch with its metrics (the command
    prints there).
    """
    cfg = cfg.resolve()
    out = Path(out)
    d = setup_distributed(cfg.device)
    if cfg.batch_size % d.world:
        raise TrainError(f"batch size {cfg.batch_size} (global) does not split over "
                         f"{d.world} processes; use a multiple of {d.world}")
    if cfg.sync_bn and d.device.type != "cuda":
        raise TrainError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
    ckpt_path = out / CHECKPOINT
    if not d.main:       # rank 0 holds the run folder's lock for all ranks
        return _run_locked(cfg, mcfg, out, d, ckpt_path, resume, overwrite, progress)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainError(f"cannot create the run folder {out}: {exc.strerror or exc}; "
                         "choose a writable --out") from exc
    from .batch import Lock, StageError

    try:
        with Lock(out / LOCK, f"the training run {out}"):
            return _run_locked(cfg, mcfg, out, d, ckpt_path, resume, overwrite, progress)
    except StageError as exc:
        raise TrainError(str(exc)) from exc


def _run_locked(cfg: TrainConfig, mcfg, out: Path, d: Dist, ckpt_path: Path,
                resume: bool, overwrite: bool, progress) -> Dict[str, Any]:
    import torch

    if ckpt_path.exists() and not resume and not overwrite:
        raise TrainError(f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue "
                         "it or --overwrite to start again")
    if resume and not ckpt_path.exists():
        raise TrainError(f"--resume: no {CHECKPOINT} in {out}")
    if overwrite and not resume and d.main:     # no stale best.pt / metrics from the old run
        for name in (CHECKPOINT, BEST, METRICS, PLOT, CONFIG_JSON):
            (out / name).unlink(missing_ok=True)

    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                torch.get_num_threads())
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed, cfg.deterministic)
        return _train(cfg, mcfg, out, d, ckpt_path, resume, progress)
    finally:
        if torch.are_deterministic_algorithms_enabled() != previous[0]:   # (imports Inductor)
            torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]
        torch.set_num_threads(previous[2])


def _train(cfg: TrainConfig, mcfg, out: Path, d: Dist, ckpt_path: Path, resume: bool,
           progress) -> Dict[str, Any]:
    """Data, model, optimiser, the restored state of a resumed run, then the epoch loop."""
    import torch

    from .model import build_model, load_weights

    sources, train_s, val_s, num_classes, classes = build_datasets(cfg)
    cfg = replace(cfg, num_classes=num_classes, classes=classes)
    if mcfg.modality != cfg.modality:
        raise TrainError(f"model modality {mcfg.modality!r} differs from the run's "
                         f"{cfg.modality!r}")
    mcfg = replace(mcfg, num_classes=cfg.num_classes)

    model = build_model(mcfg)
    # a resumed run takes every weight from its checkpoint: the ImageNet file is not re-read
    if mcfg.pretrained and not resume:
        report = load_weights(model, mcfg.pretrained)
        if d.main:
            log.info("pretrained: %s", report)
    if cfg.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(d.device)

    loaders = _build_loaders(cfg, mcfg, sources, train_s, val_s, d)
    steps_per_epoch = len(loaders.train)
    stop = cfg.iterations if cfg.iterations is not None else cfg.epochs * steps_per_epoch
    optimizer = make_optimizer(model, cfg)
    scheduler = MultiStepLR(optimizer, milestones(cfg, steps_per_epoch), cfg.lr_gamma)
    state = _RunState()
    if resume:
        state = _restore(ckpt_path, cfg, mcfg, model, optimizer, scheduler, out, d)
    if d.main:
        (out / CONFIG_JSON).write_text(json.dumps(
            {"train": cfg.to_dict(), "model": mcfg.to_dict(), "world_size": d.world},
            indent=1, sort_keys=True) + "\n")
        if progress:
            progress({"start": {"arch": mcfg.arch, "modality": mcfg.modality,
                                "device": str(d.device), "world_size": d.world,
                                "train_videos": len(train_s), "val_videos": len(val_s),
                                "steps": stop, "steps_per_epoch": steps_per_epoch,
                                "batch_size": cfg.batch_size, "from_step": state.step}})
    state = _loop(cfg, mcfg, model, optimizer, scheduler, loaders, state, stop,
                  math.ceil(stop / steps_per_epoch), [s.video_id for s in train_s], out,
                  ckpt_path, d, progress)
    return {"out": str(out), "epochs": len(state.history), "steps": state.step,
            "final": state.history[-1] if state.history else {},
            "best_val_top1": state.best, "world_size": d.world,
            "num_classes": cfg.num_classes, "train_videos": len(train_s),
            "val_videos": len(val_s)}


@dataclass
class _Loaders:
    train_set: Any          # data.TSNDataset (set_epoch per epoch)
    sampler: Any            # data.EpochSampler over a DistributedSampler
    train: Any              # DataLoader
    val: Any = None         # DataLoader or None


@dataclass
class _RunState:
    start_epoch: int = 0
    step: int = 0
    best: Optional[float] = None
    history: List[Dict[str, Any]] = field(default_factory=list)


def _build_loaders(cfg: TrainConfig, mcfg, sources, train_s, val_s, d: Dist) -> _Loaders:
    """Training and validation DataLoaders of this process's share of the global batch."""
    from torch.utils.data import DataLoader, DistributedSampler

    from . import data

    per_proc = cfg.batch_size // d.world
    train_ds = data.TSNDataset(sources, train_s, cfg.modality, mcfg.num_segments, mcfg.new_length,
                               "train", mcfg.input_size, mcfg.mean, mcfg.std, seed=cfg.seed,
                               flip=cfg.flip)
    sampler = data.EpochSampler(DistributedSampler(
        train_ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed,
        drop_last=False))
    loader_kw = dict(num_workers=cfg.workers, pin_memory=d.device.type == "cuda",
                     persistent_workers=cfg.workers > 0)
    if cfg.workers > 0:
        loader_kw["prefetch_factor"] = 4
    loaders = _Loaders(train_ds, sampler, DataLoader(train_ds, batch_size=per_proc,
                                                     sampler=sampler, drop_last=False,
                                                     **loader_kw))
    if val_s:
        val_ds = data.TSNDataset(sources, val_s, cfg.modality, mcfg.num_segments, mcfg.new_length,
                                 "val", mcfg.input_size, mcfg.mean, mcfg.std, seed=cfg.seed)
        loaders.val = DataLoader(val_ds, batch_size=per_proc,
                                 sampler=_StridedSampler(len(val_ds), d.rank, d.world),
                                 **loader_kw)
    return loaders


def _restore(ckpt_path: Path, cfg: TrainConfig, mcfg, model, optimizer, scheduler, out: Path,
             d: Dist) -> _RunState:
    """Weights, optimiser, schedule, history and RNG of the run at ``ckpt_path`` (refused
    when it was trained with other settings)."""
    import torch

    from .store import config_diff
    from .checkpoint import MODEL_KEYS, RESUME_KEYS, load_checkpoint_weights, read_checkpoint

    ckpt = read_checkpoint(ckpt_path, "cpu", MODEL_KEYS + RESUME_KEYS)
    _resume_check(json.loads(ckpt["train_config"]), cfg, ckpt_path)
    diff = config_diff(json.loads(ckpt["model_config"]), mcfg.to_dict())
    if diff:
        raise TrainError(f"{ckpt_path} was trained with another model ({'; '.join(diff[:6])}"
                         "); resume with the same options, or train into a new --out")
    load_checkpoint_weights(model, ckpt, ckpt_path)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["torch_rng"])
    state = _RunState(int(ckpt["epoch"]), int(ckpt["step"]),
                      None if ckpt["best"] < 0 else float(ckpt["best"]),
                      _with_wall_clock(json.loads(ckpt["history"]), out))
    if d.main:
        _write_history(state.history, out)
        log.info("resumed %s at epoch %d, step %d", ckpt_path, state.start_epoch, state.step)
    return state


def _loop(cfg: TrainConfig, mcfg, model, optimizer, scheduler, loaders: _Loaders,
          state: _RunState, stop: int, num_epochs: int, video_ids: List[str], out: Path,
          ckpt_path: Path, d: Dist, progress) -> _RunState:
    """Epochs from ``state`` until ``stop`` steps: train, validate, checkpoint (atomically,
    every epoch), metrics and plot. Returns the final state."""
    import torch

    net = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    step, best, history = state.step, state.best, state.history
    last_plot = time.monotonic()
    for epoch in range(state.start_epoch, num_epochs):
        if step >= stop:
            break
        torch.manual_seed(_epoch_seed(cfg.seed, epoch, d.rank))
        loaders.sampler.set_epoch(epoch)
        loaders.train_set.set_epoch(epoch)
        lr = current_lr(optimizer)
        metrics, step = train_one_epoch(net, loaders.train, optimizer, scheduler, cfg, d, epoch,
                                        step, stop, video_ids)
        row = {"epoch": epoch + 1, "step": step, "lr": lr, **metrics}
        if loaders.val is not None and ((epoch + 1) % cfg.val_every == 0 or step >= stop):
            row.update(evaluate(model, loaders.val, d, cfg.amp))
        history.append(row)
        improved = "val_top1" in row and (best is None or row["val_top1"] > best)
        if improved:
            best = row["val_top1"]
        if d.main:
            _write_history(history, out)    # first: a checkpoint's epochs all have their row
            saved = checkpoint_state(model, mcfg, cfg, optimizer, scheduler, epoch + 1, step,
                                     best, history)
            atomic_torch_save(saved, ckpt_path)
            if improved:
                atomic_torch_save(saved, out / BEST)
            last_epoch = epoch + 1 == num_epochs or step >= stop
            if last_epoch or time.monotonic() - last_plot > PLOT_EVERY_S:
                plot_metrics(history, out / PLOT)
                last_plot = time.monotonic()
            if progress:
                progress(row)
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return _RunState(state.start_epoch, step, best, history)


def current_lr(optimizer) -> float:
    """The lr of the 'normal_weight' group (lr_mult 1): the run's base lr after its steps."""
    for g in optimizer.param_groups:
        if g.get("name") == "normal_weight":
            return float(g["lr"])
    return float(optimizer.param_groups[0]["lr"])


def cleanup_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
