"""tsn index: missing / incomplete / failed shards of a stage folder after array jobs."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from shards import frame_record
from tsn_pipeline import batch, store
from tsn_pipeline.index import StageIndexError, array_spec, build_index

IDS = [f"v{i:02d}" for i in range(10)]
BAD = {"v03"}


def _process(task: batch.Task) -> store.VideoRecord:
    """A real (tiny) frame record; ids in BAD fail like an undecodable video."""
    if task.video_id in BAD:
        raise batch.VideoFailure(f"{task.source}: not a readable video")
    n = 2 + int(task.video_id[1:]) % 3
    return frame_record(task.video_id, np.full((n, 8, 8, 3), 7 * n, np.uint8), label=n % 2,
                        fmt="jpeg")


def _shard(out, i, n, ids=IDS, config=None):
    tasks = [batch.Task(v, f"/videos/{v}.avi", 0) for v in batch.assign_shard(ids, i, n)]
    return batch.run_stage(kind="frames", out_dir=out, shard_index=i, num_shards=n,
                           config=config or {"size": [8, 8]}, tasks=tasks, process=_process,
                           progress=False)


@pytest.mark.parametrize("indices,spec", [([], ""), ([4], "4"), ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"),
                                          ([3, 1, 2, 2], "1-3")])
def test_array_spec(indices, spec):
    assert array_spec(indices) == spec


def test_index_finds_unfinished_runs_by_their_traces(tmp_path):
    out = tmp_path / "frames"
    ok_ids = [v for v in IDS if v not in BAD]
    for i in (0, 1, 4):
        _shard(out, i, 6, ids=ok_ids)
    # shard 2: a run killed mid-way leaves its parts folder (one video done)
    parts = out / ".frames-2-of-6.h5.parts"
    parts.mkdir()
    batch.write_part(parts, _process(batch.Task("v02", "x")))
    # shard 5: killed while assembling leaves only the .tmp file; shard 3 never ran
    (out / "frames-5-of-6.h5.tmp").write_bytes(b"partial")
    idx = build_index(out)
    assert (idx.kind, idx.num_shards) == ("frames", 6)
    assert [s.status for s in idx.shards] == ["complete", "complete", "incomplete", "missing",
                                              "complete", "incomplete"]
    assert "1 videos done" in idx.shards[2].reason and ".tmp" in idx.shards[5].reason
    assert idx.to_json()["resubmit"] == "2-3,5"


def test_index_statuses_counts_and_resubmit(tmp_path, cli_runner):
    out = tmp_path / "frames"
    for i in (0, 1, 2):
        _shard(out, i, 5)
    parts = out / ".frames-3-of-5.h5.parts"
    parts.mkdir()
    batch.write_part(parts, _process(batch.Task("v02", "x")))
    idx = build_index(out, num_shards=6)            # shards of another array size: all missing
    assert idx.by_status("missing") == list(range(6)) and "other counts [5]" in idx.problems[0]
    idx = build_index(out)                          # count read from the names: 5
    # v03 (shard 2 of 5: v01, v03, v04, v07, v09) fails -> shard 2 "failed"; shard 3 (v02,
    # v05) was killed after v02; shard 4 never ran
    assert batch.assign_shard(IDS, 2, 5) == ["v01", "v03", "v04", "v07", "v09"]
    assert batch.assign_shard(IDS, 3, 5) == ["v02", "v05"]
    assert {s.index: s.status for s in idx.shards} == {0: "complete", 1: "complete",
                                                       2: "failed", 3: "incomplete", 4: "missing"}
    assert idx.resubmit == [2, 3, 4]
    data = idx.to_json()
    assert data["resubmit"] == "2-4" and data["ok"] is False
    assert data["failed_videos"] == [{"video_id": "v03", "shard": 2,
                                      "reason": "/videos/v03.avi: not a readable video"}]
    assert data["counts"] == {"complete": 2, "failed": 1, "incomplete": 1, "missing": 1,
                              "unreadable": 0}
    # every stored video is indexed with its shard, length and label
    assert sorted(data["videos"]) == ["v01", "v04", "v06", "v07", "v08", "v09"]
    assert data["videos"]["v06"] == {"shard": "frames-0-of-5.h5", "length": 2, "label": 0}
    assert data["num_items"] == sum(v["length"] for v in data["videos"].values())


def test_index_cli_writes_json_and_exit_code(tmp_path, cli_runner):
    out = tmp_path / "frames"
    ok_ids = [v for v in IDS if v not in BAD]
    for i in range(3):
        _shard(out, i, 3, ids=ok_ids)
    result = cli_runner("index", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["num_videos"] == 9 and summary["resubmit"] == ""
    written = json.loads((out / "index.json").read_text())
    assert sorted(written["videos"]) == ok_ids
    # the list names a video no shard holds and none recorded as failed: a silent drop
    lst = tmp_path / "list.csv"
    lst.write_text("video_id,path\n" + "".join(f"{v},{v}.avi\n" for v in IDS))
    result = cli_runner("index", out, "--list", lst, "--out", tmp_path / "i.json")
    assert result.exit_code == 1
    assert "1 listed videos in no shard" in result.output
    assert json.loads((tmp_path / "i.json").read_text())["expected_missing"] == ["v03"]
    # the stage ran on one split of a list with two: --split checks that split only
    split = tmp_path / "split.csv"
    split.write_text("video_id,path,label,split\n" + "".join(
        f"{v},{v}.avi,0,{'train' if v in ok_ids else 'test'}\n" for v in IDS)
        + "extra,extra.avi,0,test\n")
    assert cli_runner("index", out, "--list", split, "--split", "train", "--out",
                      tmp_path / "i.json").exit_code == 0
    result = cli_runner("index", out, "--list", split, "--split", "test", "--out",
                        tmp_path / "i.json")
    assert result.exit_code == 1 and "2 listed videos in no shard" in result.output
    result = cli_runner("index", out, "--list", split, "--split", "val")
    assert result.exit_code == 1 and "no video of split 'val'" in result.output
    assert "splits in the list: test, train" in result.output
    assert cli_runner("index", out, "--split", "train").exit_code == 2     # no --list
    # a missing shard: exit 1 with the array spec to resubmit
    (out / "frames-1-of-3.h5").unlink()
    result = cli_runner("index", out)
    assert result.exit_code == 1 and "--array=1" in result.output
    assert cli_runner("index", out, "--no-strict").exit_code == 0


def test_index_refuses_mixed_counts_and_detects_unreadable(tmp_path):
    out = tmp_path / "frames"
    _shard(out, 0, 2)
    _shard(out, 0, 3)
    with pytest.raises(StageIndexError, match="different counts"):
        build_index(out)
    idx = build_index(out, num_shards=2)
    assert idx.by_status("missing") == [1] and "other counts [3]" in idx.problems[0]
    # a shard whose file is garbage (e.g. copied while being written elsewhere)
    (out / "frames-1-of-2.h5").write_bytes(b"not hdf5")
    idx = build_index(out, num_shards=2)
    assert idx.by_status("unreadable") == [1]
    with h5py.File(out / "frames-1-of-2.h5", "w") as f:
        f.attrs["schema_version"] = 99
    assert "schema version 99" in build_index(out, num_shards=2).shards[1].reason


def test_index_mixed_configs_and_empty_folder(tmp_path):
    out = tmp_path / "frames"
    _shard(out, 0, 2, config={"size": [8, 8]})
    _shard(out, 1, 2, config={"size": [16, 16]})
    idx = build_index(out)
    assert any("2 different configs" in p for p in idx.problems) and not idx.ok
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StageIndexError, match="no shards"):
        build_index(empty)
    idx = build_index(empty, kind="flow", num_shards=3)
    assert idx.by_status("missing") == [0, 1, 2] and idx.to_json()["resubmit"] == "0-2"
