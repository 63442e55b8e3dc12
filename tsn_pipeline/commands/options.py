"""Options and helpers shared by the stage commands (one place, so every stage agrees)."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Callable, Optional

import click

# Every option can also come from TSN_<COMMAND>_<OPTION> (e.g. TSN_DECODE_WORKERS): cli.py sets
# click's auto_envvar_prefix.

log = logging.getLogger(__name__)


def cap_workers(ctx, param, value):
    """Callback of every --workers: more processes than the cores this process may use only
    add memory and contention, so the count is capped there with a warning."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if value is not None and cores and value > cores:
        log.warning("--workers %d is more than the %d cores this process may use; using %d",
                    value, cores, cores)
        return cores
    return value


def check_device(value: str, cuda_devices: int) -> str:
    """``value`` if it names a device this machine has (auto, cpu, cuda, cuda:N), else a
    BadParameter saying what exists."""
    if value in ("auto", "cpu"):
        return value
    import torch

    try:
        dev = torch.device(value)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N",
                                 param_hint="--device")
    if dev.type == "cuda" and not cuda_devices:
        raise click.BadParameter(f"{value!r}: no CUDA device is visible on this machine; use "
                                 "--device cpu or auto", param_hint="--device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= cuda_devices:
        raise click.BadParameter(f"{value!r}: this machine has {cuda_devices} CUDA device(s), "
                                 f"cuda:0..cuda:{cuda_devices - 1}", param_hint="--device")
    return value


def torch_device(ctx, param, value):
    """Callback of --device for the stages that run torch models."""
    if value in ("auto", "cpu"):
        return value
    import torch

    return check_device(value, torch.cuda.device_count())


def shard_options(f: Callable) -> Callable:
    """--shard-index/--num-shards; default from SLURM_ARRAY_TASK_ID/_COUNT, else 0 of 1."""
    f = click.option("--num-shards", type=click.IntRange(min=1), default=None,
                     help="Number of shards the video list is split into [default: "
                          "SLURM_ARRAY_TASK_COUNT for an array 0..N-1, else 1].")(f)
    f = click.option("--shard-index", type=click.IntRange(min=0), default=None,
                     help="Which shard this process writes, 0-based "
                          "[default: SLURM_ARRAY_TASK_ID, else 0].")(f)
    return f


def run_options(f: Callable) -> Callable:
    """--workers, --overwrite, --retry-failed, --progress/--no-progress."""
    f = click.option("--progress/--no-progress", default=True, show_default=True,
                     help="Progress bar on stderr.")(f)
    f = click.option("--retry-failed", is_flag=True,
                     help="Redo only the videos a finished shard recorded as failed.")(f)
    f = click.option("--overwrite", is_flag=True,
                     help="Redo the shard even if it exists or an unfinished run used other settings.")(f)
    f = click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     callback=cap_workers, help="Worker processes (at most the cores).")(f)
    return f


def resolve_shard_or_fail(shard_index: Optional[int], num_shards: Optional[int]):
    from ..batch import resolve_shard

    try:
        return resolve_shard(shard_index, num_shards)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard-index/--num-shards") from exc


def report(summary) -> None:
    """Print the JSON summary on stdout; exit 1 (ClickException) when any video failed."""
    click.echo(json.dumps(summary.to_json(), sort_keys=True))
    if summary.failed:
        raise click.ClickException(
            f"{summary.failed} of {summary.videos} videos failed in {summary.stage} shard "
            f"{summary.shard_index}/{summary.num_shards}; reasons in {summary.failures_file}")


def stage_errors(fn: Callable) -> Callable:
    """Turn StageError/StoreError into click errors (exit 1) with their message."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..batch import StageError
        from ..store import StoreError

        try:
            return fn(*args, **kwargs)
        except (StageError, StoreError) as exc:
            raise click.ClickException(str(exc)) from exc
    return wrapper


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
