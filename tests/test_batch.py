"""The batch runner: the one shard-assignment rule, every shard written without
--shard-index, the assignment recorded in each shard."""
from __future__ import annotations

import json
from collections import Counter

import h5py
import pytest

from tsn_pipeline import batch, store


def summaries(output: str):
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_assignment_is_a_stable_hash_of_the_id():
    ids = [f"v_Class{c}_g{g:02d}_c{k:02d}" for c in range(5) for g in range(10) for k in range(5)]
    before = {v: batch.shard_of(v, 7) for v in ids}
    # the documented rule: SHA-1 of the UTF-8 id, first 8 bytes big-endian, modulo N
    import hashlib

    assert all(s == int.from_bytes(hashlib.sha1(v.encode()).digest()[:8], "big") % 7
               for v, s in before.items())
    assert batch.shard_of("vid_a", 2) == 1 and batch.shard_of("vidéo ü", 3) in (0, 1, 2)
    # adding and removing videos never moves another one
    grown = ids[:150] + [f"new{i}" for i in range(40)]
    for i in range(7):
        kept = set(batch.assign_shard(grown, i, 7)) & set(ids)
        assert kept == {v for v in ids[:150] if before[v] == i}
    # a partition: every id in exactly one shard, sorted, near even (200 ids, 7 shards)
    parts = [batch.assign_shard(ids, i, 7) for i in range(7)]
    assert sorted(v for p in parts for v in p) == sorted(ids)
    assert all(p == sorted(p) for p in parts)
    assert max(Counter(before.values()).values()) < 2 * len(ids) / 7


def test_decode_import_export_write_every_shard(make_video, cli_runner, tmp_path):
    """--num-shards N without --shard-index outside an array: every shard 0..N-1 is written
    (empty ones too), each holding the ids the rule assigns to it; a rerun finds them all
    complete; export and import follow the same rule."""
    names = ["a", "bb", "ccc", "dddd", "eeeee"]
    for i, name in enumerate(names):
        make_video(f"v/{name}.mkv", n=3, seed=i)
    frames = tmp_path / "frames"
    args = ["decode", tmp_path / "v", "--out", frames, "--size", "32x24", "--no-progress",
            "--num-shards", "5"]
    res = cli_runner(*args)
    assert res.exit_code == 0, res.output
    assert [(s["shard_index"], s["num_shards"], s["status"]) for s in summaries(res.output)] == [
        (i, 5, "written") for i in range(5)]
    assert sorted(p.name for p in frames.glob("*.h5")) == [f"frames-{i}-of-5.h5" for i in range(5)]
    for i in range(5):
        shard = frames / f"frames-{i}-of-5.h5"
        assert store.open_shards(shard).ids == batch.assign_shard(names, i, 5)
        assert store.verify_shard(shard) == []
    assert any(not batch.assign_shard(names, i, 5) for i in range(5))   # an empty shard, valid
    again = cli_runner(*args)
    assert [s["status"] for s in summaries(again.output)] == ["complete"] * 5
    # export every shard: one list file per shard
    out = tmp_path / "raw"
    res = cli_runner("export-rawframes", "--frames", frames, "--out", out, "--num-shards", "5",
                     "--list-out", tmp_path / "list.txt", "--no-progress")
    assert res.exit_code == 0, res.output
    assert [s["shard_index"] for s in summaries(res.output)] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir()) == names
    for i in range(5):
        lines = (tmp_path / f"list-{i}-of-5.txt").read_text().splitlines()
        assert [ln.split()[0] for ln in lines] == batch.assign_shard(names, i, 5)
    # import every shard back: frame shard i holds the same videos as decode's shard i
    res = cli_runner("import-rawframes", out, "--frames-out", tmp_path / "imported",
                     "--num-shards", "5", "--no-progress")
    assert res.exit_code == 0, res.output
    assert len(summaries(res.output)) == 5
    for i in range(5):
        assert (store.open_shards(tmp_path / "imported" / f"frames-{i}-of-5.h5").ids
                == batch.assign_shard(names, i, 5))


def test_rerun_with_videos_added_or_removed_is_refused_until_overwrite(make_video, cli_runner,
                                                                        tmp_path):
    for i, name in enumerate(["a", "b", "c"]):
        make_video(f"v/{name}.mkv", n=3, seed=i)
    out = tmp_path / "frames"
    args = ["decode", tmp_path / "v", "--out", out, "--size", "32x24", "--no-progress"]
    assert cli_runner(*args).exit_code == 0
    shard = out / "frames-0-of-1.h5"
    with h5py.File(shard, "r") as f:
        assert store.read_assigned(f) == ["a", "b", "c"]
    before = shard.read_bytes()
    make_video("v/d.mkv", n=3, seed=9)
    added = cli_runner(*args)
    assert added.exit_code == 1
    assert "added: d" in added.output and "--overwrite" in added.output
    assert shard.read_bytes() == before                       # nothing changed on disk
    (tmp_path / "v" / "a.mkv").unlink()
    both = cli_runner(*args)
    assert both.exit_code == 1 and "added: d; removed: a" in both.output
    (tmp_path / "v" / "d.mkv").unlink()
    removed = cli_runner(*args)
    assert removed.exit_code == 1 and "(removed: a)" in removed.output
    redo = cli_runner(*args, "--overwrite")
    assert redo.exit_code == 0, redo.output
    assert store.open_shards(out).ids == ["b", "c"]
    with h5py.File(shard, "r") as f:
        assert store.read_assigned(f) == ["b", "c"]
    assert cli_runner("verify", out).exit_code == 0


def _record_or_failure(task):
    import numpy as np

    if task.video_id.startswith("bad"):
        raise batch.VideoFailure(f"{task.video_id}: cannot decode")
    if task.video_id.startswith("bug"):
        raise ValueError("a bug")
    frames = [store.encode_image(np.full((8, 8, 3), 7 * len(task.video_id), np.uint8))]
    return store.frame_video(task.video_id, frames, width=8, height=8, label=task.label)


def test_thread_workers_make_the_shard_of_one_worker(tmp_path):
    """run_stage(threads=True) (decode's workers): the same shard bytes and failures as one
    worker, whatever order the threads finish in."""
    ids = ["bad1", "bug2"] + [f"v{k:02d}" for k in range(12)]
    kw = dict(kind="frames", shard_index=0, num_shards=1, config={"x": 1},
              tasks=[batch.Task(v, "memory") for v in ids], process=_record_or_failure,
              progress=False)
    one = batch.run_stage(out_dir=tmp_path / "one", **kw)
    many = batch.run_stage(out_dir=tmp_path / "many", workers=3, threads=True, **kw)
    assert (many.ok, many.failed, one.ok, one.failed) == (12, 2, 12, 2)
    assert [(d["video_id"], d["reason"]) for d in many.failures] == \
        [("bad1", "bad1: cannot decode"), ("bug2", "ValueError: a bug")]
    assert (tmp_path / "many" / "frames-0-of-1.h5").read_bytes() == \
        (tmp_path / "one" / "frames-0-of-1.h5").read_bytes()
    assert store.verify_shard(tmp_path / "many" / "frames-0-of-1.h5") == []


@pytest.mark.parametrize("can_start", [1, 0])
def test_worker_threads_that_cannot_start(tmp_path, monkeypatch, caplog, can_start):
    """A process at its thread limit: with some worker threads started the stage goes on with
    them (a warning says so) and makes the one-worker shard; with none it stops with a clear
    error and writes no shard."""
    import logging
    import threading

    start, started = threading.Thread.start, []

    def limited(thread):
        if thread.name.startswith("tsn-worker-"):
            if len(started) >= can_start:
                raise RuntimeError("can't start new thread")
            started.append(thread)
        return start(thread)

    monkeypatch.setattr(threading.Thread, "start", limited)
    ids = [f"v{k:02d}" for k in range(6)]
    kw = dict(kind="frames", shard_index=0, num_shards=1, config={"x": 1},
              tasks=[batch.Task(v, "memory") for v in ids], process=_record_or_failure,
              progress=False)
    if can_start:
        with caplog.at_level(logging.WARNING):
            summary = batch.run_stage(out_dir=tmp_path / "many", workers=3, threads=True, **kw)
        assert summary.ok == 6 and "started 1 of 3 worker threads" in caplog.text
        one = batch.run_stage(out_dir=tmp_path / "one", **kw)
        assert one.ok == 6
        assert (tmp_path / "many" / "frames-0-of-1.h5").read_bytes() == \
            (tmp_path / "one" / "frames-0-of-1.h5").read_bytes()
    else:
        with pytest.raises(batch.StageError, match="cannot start a worker thread"):
            batch.run_stage(out_dir=tmp_path / "many", workers=3, threads=True, **kw)
        assert not (tmp_path / "many" / "frames-0-of-1.h5").exists()
