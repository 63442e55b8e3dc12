"""The batch runner every per-video stage uses (decode, flow, score, features, rawframes).

Reads a list of ``Task`` (one per video), writes one shard ``<out>/<kind>-<i>-of-<n>.h5``.
Which videos shard i of n takes is decided here for every stage: ``shard_of`` (SHA-1 of the
id, modulo n), so adding or removing a video never moves another one.

How a shard is made, and why each step is there:

1. A lock file (``.<shard>.lock``, ``flock``) makes a second process for the same shard refuse
   at once instead of corrupting it; the kernel drops the lock when a process dies.
2. Each finished video is written on its own as ``.<shard>.parts/<id>.h5`` (write ``.tmp``,
   then rename), by the worker process that made it. A killed run loses at most the videos
   in flight; a rerun lists the parts and does only what is missing.
3. When every task is done, the parts' video groups are copied as they are (HDF5's object
   copy: no payload is decoded, re-packed or checksummed again) in sorted-id order into
   ``<shard>.tmp``, which is flushed and renamed to ``<shard>``. The shard's bytes depend
   only on its content, so an interrupted-and-resumed run gives the same file as an
   uninterrupted one.
4. Failed videos (``VideoFailure`` or any exception of the stage's function) are recorded with
   their reason in the shard's ``failed`` attribute and in ``<kind>-<i>-of-<n>.failures.json``.
   Errors of the output itself (disk full, read-only folder) stop the run, name the path and
   leave no ``.h5`` behind.

The resolved config of the stage is stored in the shard and the parts folder, and the shard
records the ids it was assigned (stored and failed): a rerun with different settings, or
with videos added to or removed from its input, is refused rather than mixed
(``--overwrite`` redoes the shard).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence,
                    Tuple)

from . import store
from .store import config_diff

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


class VideoFailure(Exception):
    """A per-video error: the video is recorded as failed and the batch goes on."""


class StageError(Exception):
    """The stage cannot run or finish (output not writable, settings mismatch, lock held)."""


@dataclass(frozen=True)
class Task:
    """One video to process. ``source`` is what the stage reads (video path, shard path)."""

    video_id: str
    source: str
    label: int = -1
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Summary:
    stage: str
    shard: str
    shard_index: int
    num_shards: int
    status: str                 # "written" | "complete" (found complete, nothing to do)
    videos: int = 0
    ok: int = 0
    failed: int = 0
    resumed: int = 0            # videos found done by an earlier, interrupted run
    items: int = 0              # frames / flow fields / snippets stored
    seconds: float = 0.0
    failures_file: Optional[str] = None
    failures: List[Dict[str, str]] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["failures"] = d["failures"][:20]
        return d


# -- shard assignment ---------------------------------------------------------------------
def resolve_shard(shard_index: Optional[int], num_shards: Optional[int],
                  env: Optional[Mapping[str, str]] = None) -> Tuple[int, int]:
    """Explicit values win; else the SLURM array variables; else shard 0 of 1.

    Under SLURM the shard index is ``SLURM_ARRAY_TASK_ID`` itself, so array task ids must be
    shard indices (``sbatch --array=0-31``), and a resubmission of some shards
    (``--array=3,17``) writes exactly those shards. The count comes from
    ``SLURM_ARRAY_TASK_COUNT`` only when the array is ``0..COUNT-1``; any other array (a
    resubmission, a 1-based range) must say ``--num-shards``, because the count of its tasks
    is not the count of shards.
    """
    env = os.environ if env is None else env
    in_array = "SLURM_ARRAY_TASK_ID" in env
    if shard_index is None and in_array:
        shard_index = int(env["SLURM_ARRAY_TASK_ID"])
    if num_shards is None and in_array and "SLURM_ARRAY_TASK_COUNT" in env:
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
        lo = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        hi = int(env.get("SLURM_ARRAY_TASK_MAX", count - 1))
        if (lo, hi) != (0, count - 1):
            raise ValueError(
                f"SLURM array {lo}..{hi} with {count} tasks is not 0..N-1: give --num-shards "
                "(array task ids are shard indices, e.g. sbatch --array=0-31 for 32 shards)")
        num_shards = count
    shard_index = 0 if shard_index is None else int(shard_index)
    num_shards = 1 if num_shards is None else int(num_shards)
    if num_shards < 1:
        raise ValueError(f"number of shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} outside 0..{num_shards - 1}"
                         + (" (SLURM array task ids are used as 0-based shard indices)"
                            if in_array else ""))
    return shard_index, num_shards


def shard_of(video_id: str, num_shards: int) -> int:
    """The shard a video belongs to: the first 8 bytes of the SHA-1 of its UTF-8 id, read as a
    big-endian integer, modulo ``num_shards``.

    The one assignment rule of every per-video stage (decode, flow, score, features,
    rawframes import/export). It depends on the id alone, so adding or removing a video
    never moves another one, and shard i of every stage holds the same videos.
    (A cryptographic hash spreads ids that differ in one character, such as ``..._c01`` and
    ``..._c02``, evenly; CRC-32's low bits do not.) Example: ``shard_of("vid_a", 2) == 1``.
    """
    digest = hashlib.sha1(video_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % int(num_shards)


def assign_shard(video_ids: Iterable[str], index: int, count: int) -> List[str]:
    """The ids among ``video_ids`` that belong to shard ``index`` of ``count``, sorted."""
    return sorted({v for v in video_ids if shard_of(v, count) == index})


def plan_shard(items: Sequence[Any], index: int, count: int,
               to_task: Callable[[Any], Task]) -> Tuple[List[Task], List[Dict[str, str]]]:
    """Tasks of shard ``index`` of ``count`` (sorted by id) plus duplicate-id failures.

    ``items`` have a ``video_id``; ``to_task(item)`` makes its Task. The first item of a
    duplicated id (in list order) is kept; the others become failures naming both sources.
    """
    tasks: Dict[str, Task] = {}
    failures: List[Dict[str, str]] = []
    mine = set(assign_shard({it.video_id for it in items}, index, count))
    for item in items:
        if item.video_id not in mine:
            continue
        task = to_task(item)
        if item.video_id in tasks:
            failures.append({"video_id": item.video_id, "source": task.source,
                             "reason": f"duplicate video id {item.video_id!r}: also "
                                       f"{tasks[item.video_id].source}"})
            continue
        tasks[item.video_id] = task
    return [tasks[k] for k in sorted(tasks)], failures


# -- small file helpers -------------------------------------------------------------------
def _part_path(parts: Path, video_id: str) -> Path:
    return parts / (urllib.parse.quote(video_id, safe="") + ".h5")


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"), durable=True)


def _atomic_write_bytes(path: Path, data, durable: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_h5(path: Path, fill: Callable[[Any], Any]) -> Any:
    """Create ``path`` via ``path.tmp`` + fsync + rename; return ``fill(file)``'s result.

    HDF5 cannot recover from a failed write: on a full disk (or past RLIMIT_FSIZE) its caches
    stay dirty, every later close raises RuntimeError and the interpreter's exit can crash.
    So the file is written in a forked child (``store.isolated``): a failure there removes
    the tmp file and comes back as ``OSError`` with the system's reason, and this process
    never holds a broken HDF5 file.
    """
    return store.isolated(_write_h5_here, path, fill)


def _write_h5_here(path: Path, fill: Callable[[Any], Any]) -> Any:
    import h5py

    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=False) as f:
            result = fill(f)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return result
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_part(parts: Path, record: store.VideoRecord) -> None:
    """Store one finished video as its part file. The HDF5 file is built in memory and
    written with plain file I/O, so a full disk is an ``OSError`` that leaves HDF5 intact.
    No fsync: a killed process loses nothing that reached the page cache, and after a
    machine crash a damaged part is found and redone when the run resumes (``_done_parts``)."""
    import io

    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w", libver=("earliest", "v110"), track_order=False) as f:
        store.write_record(f.create_group(store.VIDEOS), record)
    _atomic_write_bytes(_part_path(parts, record.video_id), buf.getbuffer(), durable=False)


def _part_ok(path: Path) -> bool:
    """A part left by an earlier run is whole: it opens and its video group is complete."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            (vid,) = list(f[store.VIDEOS].keys())
            return store.CHECKSUM in f[store.VIDEOS][vid].attrs
    except Exception:  # truncated or garbage after a machine crash: redo the video
        return False


def _output_error(path: Path, exc: BaseException, what: str) -> StageError:
    reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
    return StageError(f"cannot {what} {path}: {reason}")


# -- the worker side ----------------------------------------------------------------------
def _count_items(kind: str, record: store.VideoRecord) -> int:
    return store.item_count(kind, record.attrs)


def _process_one(process: Callable[[Task], store.VideoRecord], task: Task):
    """``process(task)``: its record, or the ``("failed", id, reason)`` tuple."""
    try:
        record = process(task)
        if record.video_id != task.video_id:
            raise RuntimeError(f"stage returned record {record.video_id!r} for task {task.video_id!r}")
    except VideoFailure as exc:
        return ("failed", task.video_id, str(exc))
    except Exception as exc:  # a bug or an unexpected library error: record it, go on
        log.debug("video %s: %s", task.video_id, traceback.format_exc())
        return ("failed", task.video_id, f"{type(exc).__name__}: {exc}")
    return record


def _run_one(kind: str, process: Callable[[Task], store.VideoRecord], task: Task, parts: str):
    """Run in a worker: process one task and store its part. Returns a small status tuple."""
    record = _process_one(process, task)
    return record if isinstance(record, tuple) else _store_part(kind, parts, record)


def _store_part(kind: str, parts: str, record: store.VideoRecord):
    try:
        write_part(Path(parts), record)
    except OSError as exc:
        return ("fatal", record.video_id, str(_output_error(Path(parts), exc, "write to")))
    return ("ok", record.video_id, _count_items(kind, record))


def _iter_threaded(kind: str, tasks: List[Task], process, workers: int, parts: str):
    """``_run_one`` of each task in ``workers`` threads of this process, results in the order
    they finish. The threads stop taking tasks when the caller stops iterating (an error,
    Ctrl-C: the caller closes this generator): a video in flight then stores no part, and
    the generator waits for the threads to end, so that none is left inside h5py or OpenCV
    while the interpreter exits (it deadlocked or crashed there)."""
    import queue
    import threading

    todo: "queue.SimpleQueue[Task]" = queue.SimpleQueue()
    for task in tasks:
        todo.put(task)
    results: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
    stop = threading.Event()

    def work():
        try:
            while not stop.is_set():
                try:
                    task = todo.get_nowait()
                except queue.Empty:
                    break
                record = _process_one(process, task)
                if stop.is_set():
                    break
                results.put(record if isinstance(record, tuple)
                            else _store_part(kind, parts, record))
        except BaseException as exc:   # never leave the caller waiting for a lost answer
            results.put(("fatal", "", f"worker thread failed: {type(exc).__name__}: {exc}"))
        finally:
            results.put(None)

    wanted, threads = min(workers, len(tasks)), []
    try:
        for k in range(wanted):
            # listed before it starts: an interrupt inside start() still joins it below
            threads.append(threading.Thread(target=work, name=f"tsn-worker-{k}", daemon=True))
            try:
                threads[-1].start()
            except RuntimeError as exc:      # "can't start new thread": a process limit
                threads.pop()
                if not threads:
                    yield ("fatal", "", f"cannot start a worker thread ({exc}); lower "
                           "--workers or raise the limit on threads (ulimit -u)")
                    return
                log.warning("started %d of %d worker threads (%s); going on with %d",
                            len(threads), wanted, exc, len(threads))
                break
        running = len(threads)
        while running:
            item = results.get()
            if item is None:
                running -= 1
            else:
                yield item
    finally:
        stop.set()
        for thread in threads:
            if thread.ident is not None:     # started
                thread.join()


def _iter_results(kind: str, tasks: List[Task], process, batch_process, workers: int,
                  parts: Path, threads: bool = False):
    if batch_process is not None:
        for task, result in batch_process(tasks):
            if isinstance(result, VideoFailure):
                yield ("failed", task.video_id, str(result))
            elif isinstance(result, BaseException):
                yield ("failed", task.video_id, f"{type(result).__name__}: {result}")
            else:
                yield _store_part(kind, str(parts), result)
    elif workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _run_one(kind, process, task, str(parts))
    elif threads:
        yield from _iter_threaded(kind, tasks, process, workers, str(parts))
    else:
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered",
                            batch_size=1, pre_dispatch="2*n_jobs")
        yield from parallel(delayed(_run_one)(kind, process, t, str(parts)) for t in tasks)


# -- the runner ---------------------------------------------------------------------------
class Lock:
    """Exclusive lock on ``path`` (``flock``) for one writer of ``what``; the holder's pid and
    host are written into the file, so a refused second process can name it."""

    def __init__(self, path: Path, what: str):
        self.path = path
        self.what = what
        self.fh = None

    def __enter__(self):
        try:
            self.fh = open(self.path, "a+")
        except OSError as exc:
            raise _output_error(self.path, exc, "create lock file") from exc
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.fh.seek(0)
            holder = self.fh.read().strip()
            self.fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StageError(f"another process is writing {self.what} ("
                                 f"{holder + '; ' if holder else ''}lock {self.path} is held); "
                                 "refusing to run twice") from exc
            raise
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
        self.fh.close()


def _normalise(config: Mapping[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(dict(config), sort_keys=True))


def _read_shard_root(path: Path) -> Tuple[Dict[str, Any], List[str]]:
    """(root attributes, assigned ids) of an existing shard."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return store.read_attrs(f), store.read_assigned(f)
    except OSError as exc:
        raise StageError(f"{path} exists but cannot be read as HDF5 ({exc}); "
                         "remove it or rerun with --overwrite") from exc


def run_stage(*, process: Callable[[Task], store.VideoRecord], workers: int = 1,
              threads: bool = False, **shard: Any) -> Summary:
    """Make one shard (``shard``: the keyword arguments of ``_run``) with
    ``process(task) -> VideoRecord`` in ``workers`` processes (it and its arguments must
    pickle: a module-level function or ``functools.partial`` of one). Decode, CPU flow and
    rawframes import use it.

    ``threads``: the workers are threads of this process instead, for a ``process`` whose
    work runs outside Python (decode: ffmpeg decodes and encodes; Python only splits its
    output and writes the part). No worker processes to start (a second or more of
    interpreters and imports per run), nothing pickled between processes."""
    return _run(process=process, batch_process=None, workers=workers, threads=threads, **shard)


def run_batched_stage(*, batch_process: Callable[[List[Task]], Iterator[Tuple[Task, Any]]],
                      **shard: Any) -> Summary:
    """Make one shard with ``batch_process(tasks)``, which runs in this process and yields
    ``(task, VideoRecord | Exception)`` in any order: for stages that batch across videos on
    one device (torch flow on CUDA, scoring, features)."""
    return _run(process=None, batch_process=batch_process, workers=1, **shard)


def _run(*, kind: str, out_dir, shard_index: int, num_shards: int,
         config: Mapping[str, Any], tasks: Sequence[Task],
         process: Optional[Callable[[Task], store.VideoRecord]],
         batch_process: Optional[Callable[[List[Task]], Iterator[Tuple[Task, Any]]]],
         workers: int = 1, threads: bool = False, overwrite: bool = False,
         retry_failed: bool = False,
         progress: bool = True, root_extra: Optional[Mapping[str, Any]] = None,
         initial_failures: Sequence[Dict[str, str]] = ()) -> Summary:
    """Make shard ``shard_index`` of ``num_shards`` of ``kind`` in ``out_dir`` from ``tasks``
    (one of ``process`` / ``batch_process``; see ``run_stage`` and ``run_batched_stage``).
    ``initial_failures`` are videos the caller already rejected (missing file, duplicate id):
    they are reported with the rest. Returns a ``Summary``; raises ``StageError``.
    """
    out_dir = Path(out_dir)
    name = store.shard_name(kind, shard_index, num_shards)
    final = out_dir / name
    parts = out_dir / f".{name}.parts"
    failures_file = out_dir / f"{kind}-{shard_index}-of-{num_shards}.failures.json"
    config = _normalise(config)
    assigned = sorted({t.video_id for t in tasks} | {d["video_id"] for d in initial_failures})
    summary = Summary(stage=kind, shard=str(final), shard_index=shard_index,
                      num_shards=num_shards, status="written", videos=len(tasks) + len(initial_failures),
                      failures_file=str(failures_file))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_error(out_dir, exc, "create output folder") from exc
    start = time.monotonic()
    with Lock(out_dir / f".{name}.lock", name):
        if final.exists() and overwrite:
            final.unlink()
            shutil.rmtree(parts, ignore_errors=True)
        if final.exists():
            root, before = _read_shard_root(final)
            _check_compatible(final, root, config)
            _check_assignment(final, before, assigned)
            previous = root.get("failed") or []
            # a run killed between the rename and its clean-up leaves these behind
            shutil.rmtree(parts, ignore_errors=True)
            if not failures_file.exists():
                try:
                    atomic_write_text(failures_file, json.dumps(previous, indent=1, sort_keys=True) + "\n")
                except OSError as exc:
                    raise _output_error(failures_file, exc, "write") from exc
            if not (retry_failed and previous):
                summary.status = "complete"
                summary.ok = int(root.get("num_videos", 0))
                summary.videos = summary.ok + len(previous)
                summary.failed = len(previous)
                summary.failures = list(previous)
                summary.items = int(root.get("num_items", 0))
                return summary
            _unpack_to_parts(final, parts, config)
        _prepare_parts(parts, config, overwrite)
        done = _done_parts(parts, check=True)
        wanted = {t.video_id for t in tasks}
        todo = [t for t in tasks if t.video_id not in done]
        summary.resumed = len(wanted & done)
        failures = list(initial_failures)
        sources = {t.video_id: t.source for t in tasks}
        bar = progress_bar(len(tasks), summary.resumed, f"{kind} {shard_index}/{num_shards}", progress)
        results = _iter_results(kind, todo, process, batch_process, workers, parts, threads)
        try:
            for status, vid, info in results:
                if status == "fatal":
                    raise StageError(info)
                if status == "failed":
                    log.warning("%s: video %s failed: %s", kind, vid, info)
                    failures.append({"video_id": vid, "source": sources.get(vid, ""), "reason": info})
                bar.update(1)
        finally:
            results.close()          # workers stopped (and threads ended) before going on
            bar.render_finish()
        failures.sort(key=lambda d: d["video_id"])
        ok_ids = sorted(wanted & _done_parts(parts))
        summary.items = _assemble(final, parts, ok_ids, kind, config, shard_index, num_shards,
                                  failures, root_extra, assigned)
        try:
            atomic_write_text(failures_file, json.dumps(failures, indent=1, sort_keys=True) + "\n")
        except OSError as exc:
            raise _output_error(failures_file, exc, "write") from exc
        shutil.rmtree(parts, ignore_errors=True)
    summary.ok = len(ok_ids)
    summary.failed = len(failures)
    summary.failures = failures
    summary.seconds = round(time.monotonic() - start, 3)
    return summary


def _check_compatible(final: Path, root: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    if root.get("schema_version") != store.SCHEMA_VERSION:
        raise StageError(f"{final} has schema version {root.get('schema_version')!r}, this "
                         f"version writes {store.SCHEMA_VERSION}; rerun with --overwrite")
    diff = config_diff(root.get("config") or {}, config)
    if diff:
        raise StageError(f"{final} was made with other settings ({'; '.join(diff[:6])}); "
                         "use another output folder or --overwrite")


def _check_assignment(final: Path, before: Sequence[str], now: Sequence[str]) -> None:
    """A finished shard was made for exactly the videos assigned to it now."""
    added, removed = sorted(set(now) - set(before)), sorted(set(before) - set(now))
    if added or removed:
        def some(ids):
            return ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")

        what = "; ".join(x for x in (added and f"added: {some(added)}",
                                      removed and f"removed: {some(removed)}") if x)
        raise StageError(f"{final} was made for other videos than the input now assigns to "
                         f"it ({what}); rerun with --overwrite to redo the shard")


def _prepare_parts(parts: Path, config: Mapping[str, Any], overwrite: bool) -> None:
    cfg_file = parts / CONFIG_FILE
    if parts.exists() and overwrite:
        shutil.rmtree(parts)
    if parts.exists() and cfg_file.exists():
        try:
            old = json.loads(cfg_file.read_text())
        except ValueError:
            old = None
        if old is not None and old != config:
            raise StageError(f"unfinished run in {parts} used other settings "
                             f"({'; '.join(config_diff(old, config)[:6])}); "
                             "rerun with the same settings to finish it, or with --overwrite")
    try:
        parts.mkdir(parents=True, exist_ok=True)
        if not cfg_file.exists():
            atomic_write_text(cfg_file, json.dumps(config, sort_keys=True))
    except OSError as exc:
        raise _output_error(parts, exc, "write to") from exc


def _done_parts(parts: Path, check: bool = False) -> set:
    """Ids with a part file. ``check``: open each one first (parts of an earlier run)."""
    done = set()
    for p in parts.iterdir():
        if p.name.endswith(".tmp"):      # a write that a kill interrupted
            p.unlink(missing_ok=True)
        elif p.suffix == ".h5":
            if check and not _part_ok(p):
                log.warning("%s: damaged part of an earlier run; redoing that video", p)
                p.unlink(missing_ok=True)
                continue
            done.add(urllib.parse.unquote(p.name[:-3]))
    return done


def _unpack_to_parts(final: Path, parts: Path, config: Mapping[str, Any]) -> None:
    """Turn a finished shard back into parts so that only its failed videos are redone."""
    import h5py

    shutil.rmtree(parts, ignore_errors=True)
    _prepare_parts(parts, config, overwrite=False)
    with h5py.File(final, "r") as f:
        for vid in f[store.VIDEOS]:
            write_part(parts, store.read_record(f[store.VIDEOS][vid]))
    final.unlink()


def _assemble(final: Path, parts: Path, ok_ids: List[str], kind: str, config, index: int,
              count: int, failures, root_extra, assigned: Sequence[str]) -> int:
    import h5py

    def fill(f) -> int:
        items = 0
        videos = f.create_group(store.VIDEOS)
        for vid in ok_ids:
            # the part's group copied as it is (H5Ocopy: datasets, attributes and the
            # checksum the worker computed), not decoded into a record and written again
            with h5py.File(_part_path(parts, vid), "r") as part:
                group = part[store.VIDEOS][vid]
                items += store.item_count(kind, group.attrs)
                part.copy(group, videos, name=vid)
        extra = dict(root_extra or {})
        extra.update(num_videos=len(ok_ids), num_items=items,
                     failed=json.dumps(failures, sort_keys=True))
        store.write_root(f, kind, config, index, count, assigned, extra)
        return items

    try:
        return _write_h5(final, fill)
    except OSError as exc:
        raise _output_error(final, exc, "write") from exc


class _NoBar:
    def update(self, n):
        pass

    def render_finish(self):
        pass


def progress_bar(total: int, done: int, label: str, enabled: bool):
    """A click progress bar on stderr (``update(n)``, ``render_finish()``), or one that shows
    nothing when ``enabled`` is false or there is nothing to do."""
    import click

    if not enabled or total == 0:
        return _NoBar()
    bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True,
                            show_eta=True)
    bar.update(done)
    return bar
