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


def shard_options(f: Callable) -> Callable:
    """--shard-index/--num-shards; default from SLURM_ARRAY_TASK_ID/_COUNT, else 0 of 1."""
    f = click.option("--num-shards", type=click.IntRange(min=1), default=None,
                     help="Number of shards the video list is split into [default: "
                          "SLURM_ARRAY_TASK_COUNT for an array 0..N-1, else 1].")(f)
    f = click.option("--shard-index", type=click.IntRange(min=0), default=None,
                     help="Which shard this process writes, 0-based "
                          "[default: SLURM_ARRAY_TASK_ID, else 0].")(f)
    return f


def usable_cores() -> int:
    """CPU cores this process may run on (taskset, cgroups and SLURM narrow the set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


def run_options(f: Optional[Callable] = None, *, all_cores: bool = False) -> Callable:
    """--workers, --overwrite, --retry-failed, --progress/--no-progress.

    ``@run_options(all_cores=True)``: --workers defaults to every usable core on CPU, 1 on a
    GPU (``None`` until the command resolves it) instead of 1.
    """
    if f is None:
        return lambda g: run_options(g, all_cores=all_cores)
    f = click.option("--progress/--no-progress", default=True, show_default=True,
                     help="Progress bar on stderr.")(f)
    f = click.option("--retry-failed", is_flag=True,
                     help="Redo only the videos a finished shard recorded as failed.")(f)
    f = click.option("--overwrite", is_flag=True,
                     help="Redo the shard even if it exists or an unfinished run used other settings.")(f)
    if all_cores:
        f = click.option("--workers", type=click.IntRange(min=1), default=None,
                         help=f"Worker processes [default: every usable core on CPU "
                              f"({usable_cores()} here), 1 on a GPU].")(f)
    else:
        f = click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                         help="Worker processes.")(f)
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
