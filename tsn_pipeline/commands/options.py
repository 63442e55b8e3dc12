"""Options and helpers shared by the stage commands (one place, so every stage agrees)."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import click

# Every option can also come from TSN_<COMMAND>_<OPTION> (e.g. TSN_DECODE_WORKERS): cli.py sets
# click's auto_envvar_prefix.

log = logging.getLogger(__name__)


def cap_workers(ctx, param, value):
    """Callback of every --workers: more processes than the cores this process may use only
    add memory and contention, so the count is capped there with a warning."""
    cores = usable_cores()
    if value is not None and value > cores:
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


def device_option(f):
    """--device of the commands that run torch models (train, score, features)."""
    return click.option("--device", default="auto", show_default=True, callback=torch_device,
                        help="torch device: auto (cuda if available), cpu, cuda, "
                             "cuda:N.")(f)


def amp_option(f):
    """--amp of the commands that run torch models (train, score, features)."""
    return click.option("--amp", type=click.Choice(["none", "bf16"]), default="none",
                        show_default=True,
                        help="bf16: bfloat16 autocast, on CUDA and CPU (faster where the "
                             "device has bf16 units: recent GPUs, some CPUs; results differ "
                             "slightly from float32's).")(f)


def shard_options(f: Callable) -> Callable:
    """--shard-index/--num-shards: which shards this process writes (see ``select_shards``)."""
    f = click.option("--num-shards", type=click.IntRange(min=1), default=None,
                     help="Number of shards the videos are split into [default: "
                          "SLURM_ARRAY_TASK_COUNT for an array 0..N-1, else 1].")(f)
    f = click.option("--shard-index", type=click.IntRange(min=0), default=None,
                     help="Which shard this process writes, 0-based [default: "
                          "SLURM_ARRAY_TASK_ID; outside an array every shard 0..N-1].")(f)
    return f


def usable_cores() -> int:
    """CPU cores this process may run on (taskset, cgroups and SLURM narrow the set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


def run_options(f: Optional[Callable] = None, *, all_cores: bool = False,
                workers_help: str = "Worker processes (at most the cores).") -> Callable:
    """--workers, --overwrite, --retry-failed, --progress/--no-progress.

    ``@run_options(all_cores=True)``: --workers defaults to every usable core on CPU, 1 on a
    GPU (``None`` until the command resolves it) instead of 1.
    """
    if f is None:
        return lambda g: run_options(g, all_cores=all_cores, workers_help=workers_help)
    f = click.option("--progress/--no-progress", default=True, show_default=True,
                     help="Progress bar on stderr.")(f)
    f = click.option("--retry-failed", is_flag=True,
                     help="Redo only the videos a finished shard recorded as failed.")(f)
    f = click.option("--overwrite", is_flag=True,
                     help="Redo the shard even if it exists or an unfinished run used other settings.")(f)
    if all_cores:
        f = click.option("--workers", type=click.IntRange(min=1), default=None,
                         help=f"Worker processes [default: every usable core on CPU "
                              f"({usable_cores()} here), 1 on a GPU].", callback=cap_workers)(f)
    else:
        f = click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                         callback=cap_workers, help=workers_help)(f)
    return f


def select_shards(shard_index: Optional[int], num_shards: Optional[int],
                  only: Optional[Sequence[int]] = None) -> Tuple[List[int], int]:
    """(shard indices this process writes, number of shards).

    Inside a SLURM array (``SLURM_ARRAY_TASK_ID`` set) or with ``--shard-index``: that one
    shard (``batch.resolve_shard``'s rules). Otherwise every shard ``0..N-1`` (N:
    ``--num-shards``, default 1), or the shards ``only`` when the input names them (flow
    given some frame shard files).
    """
    from ..batch import resolve_shard

    in_array = "SLURM_ARRAY_TASK_ID" in os.environ
    try:
        if shard_index is None and not in_array:
            count = 1 if num_shards is None else num_shards
            return (list(range(count)) if only is None else sorted(only)), count
        index, count = resolve_shard(shard_index, num_shards)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard-index/--num-shards") from exc
    return [index], count


def report(summary) -> None:
    """Print one shard's JSON summary as one line on stdout."""
    click.echo(json.dumps(summary.to_json(), sort_keys=True))


def run_shards(indices: Sequence[int], run_one: Callable[[int], Any]) -> None:
    """``run_one(i)`` for every shard index (each prints its summary line); then exit 1
    (ClickException) naming the shards where any video failed."""
    failed = []
    for index in indices:
        summary = run_one(index)
        report(summary)
        if summary.failed:
            failed.append(summary)
    if failed:
        n, total = sum(s.failed for s in failed), sum(s.videos for s in failed)
        where = ", ".join(f"{s.shard_index}/{s.num_shards}" for s in failed)
        files = ", ".join(str(s.failures_file) for s in failed if s.failures_file)
        raise click.ClickException(f"{n} of {total} videos failed in {failed[0].stage} "
                                   f"shard(s) {where}; reasons in "
                                   f"{files or 'the JSON summary above'}")


@contextlib.contextmanager
def fails_with(*errors: type) -> Iterator[None]:
    """The ``errors`` raised inside become click errors (exit 1) with their message."""
    try:
        yield
    except errors as exc:
        raise click.ClickException(str(exc)) from exc


@contextlib.contextmanager
def bad_settings(param_hint: Optional[str] = None) -> Iterator[None]:
    """A ValueError raised inside (a settings object refusing its values) becomes a
    BadParameter error (exit 2) with its message."""
    try:
        yield
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from exc


def stage_errors(fn: Callable) -> Callable:
    """Turn StageError/StoreError into click errors (exit 1) with their message."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..batch import StageError
        from ..store import StoreError

        with fails_with(StageError, StoreError):
            return fn(*args, **kwargs)
    return wrapper


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
