"""The shard format: what `tsn verify` covers (metadata too), a seeded byte-flip fuzz,
old schemas, shard sets that must agree, and `tsn info`'s counts."""
from __future__ import annotations

import logging
import random
import shutil

import h5py
import numpy as np
import pytest

from conftest import textured_frames
from shards import flow_record, frame_record, write_shards
from tsn_pipeline import batch, store


@pytest.fixture
def small_shard(tmp_path):
    """A real frame shard of three tiny videos (JPEG, 16x12, two frames each)."""
    records = {v: frame_record(v, textured_frames(2, 12, 16, seed=i), label=i, fmt="jpeg",
                               class_name=f"c{i}")
               for i, v in enumerate(["a", "b", "vidéo ü"])}
    out = write_shards(tmp_path / "frames", "frames", records, classes=["c0", "c1", "c2"])
    return out / "frames-0-of-1.h5"


def _edited(shard, tmp_path, name, edit):
    copy = tmp_path / f"edit-{name}" / shard.name
    copy.parent.mkdir()
    shutil.copy(shard, copy)
    with h5py.File(copy, "r+") as f:
        edit(f)
    return copy


@pytest.mark.parametrize("name,edit,where", [
    ("label", lambda f: f["videos/b"].attrs.__setitem__("label", 2), "b: checksum mismatch"),
    ("frames", lambda f: f["videos/a"].attrs.__setitem__("num_frames", 3), "a: checksum mismatch"),
    ("count", lambda f: f["videos/a/rgb"].attrs.__setitem__("count", 1), "a: checksum mismatch"),
    ("newattr", lambda f: f["videos/a"].attrs.__setitem__("split", "test"), "a: checksum"),
    ("moved", lambda f: f.move("videos/b", "videos/c"), "c: checksum mismatch"),
    ("deleted", lambda f: f["videos"].__delitem__("b"), "*: num_videos is 3 but 2"),
    ("config", lambda f: f.attrs.__setitem__("config", '{"test": false}'), "*: root checksum"),
    ("failed", lambda f: f.attrs.__setitem__("failed", '[{"video_id": "b", "reason": "x"}]'),
     "*: root checksum"),
    ("assigned", lambda f: f.__delitem__("assigned_ids"), "*: root checksum"),
])
def test_verify_covers_attributes_the_video_list_and_the_root(small_shard, tmp_path, cli_runner,
                                                              name, edit, where):
    assert cli_runner("verify", small_shard).exit_code == 0
    damaged = _edited(small_shard, tmp_path, name, edit)
    result = cli_runner("verify", damaged)
    assert result.exit_code == 1 and "corrupt entries" in result.output
    assert f"{damaged}: {where}" in result.output


def test_old_schema_is_refused_with_the_fix(small_shard, tmp_path, cli_runner):
    old = _edited(small_shard, tmp_path, "old", lambda f: f.attrs.__setitem__("schema_version", 1))
    result = cli_runner("verify", old)
    assert result.exit_code == 1
    assert "schema version 1, this tsn-pipeline reads version 2; re-create the shard" in result.output
    with pytest.raises(store.StoreError, match="schema version 1"):
        store.open_shards(old)


def _content(path):
    """Everything a reader gets from a shard: root attributes, assigned ids, ids, per-video
    attributes, dataset attributes and bytes."""
    with h5py.File(path, "r") as f:
        root = store.read_attrs(f)
        root.pop(store.CHECKSUM)
        videos = {}
        for vid in f[store.VIDEOS]:
            group = f[store.VIDEOS][vid]
            record = store.read_record(group)
            videos[vid] = (record.attrs, record.streams,
                           {k: store.read_attrs(group[k]) for k in group})
        return root, store.read_assigned(f), sorted(f.keys()), videos


def test_byte_flip_fuzz_verify_catches_every_change(small_shard, tmp_path, cli_runner):
    """Seeded single-bit flips anywhere in a real shard: each flip either makes `tsn verify`
    exit 1 or leaves everything a reader gets equal; `tsn info` exits 0 or 1, never with a
    traceback (cli_runner re-raises any exception) nor a crash (the HDF5 library can
    segfault on damaged files: both commands, and this test's reader, read in a child)."""
    good = _content(small_shard)
    data = small_shard.read_bytes()
    rng = random.Random(20261204)
    damaged = tmp_path / "fuzz" / small_shard.name
    damaged.parent.mkdir()
    caught = 0
    for _ in range(30):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        damaged.write_bytes(bytes(flipped))
        verify = cli_runner("verify", damaged)
        assert verify.exit_code in (0, 1)
        if verify.exit_code == 0:
            assert store.isolated(_content, damaged) == good, verify.output
        caught += verify.exit_code
        info = cli_runner("info", damaged)
        assert info.exit_code in (0, 1) and "Traceback" not in info.output
        if info.exit_code == 1:
            assert "not a readable shard" in info.output
    assert 5 < caught < 25      # the flips hit both what matters and what does not


def test_shards_of_one_set_must_agree_on_their_settings(tmp_path, caplog):
    records = {v: frame_record(v, textured_frames(2, 12, 16, seed=i)) for i, v in
               enumerate(["a", "b", "c", "d", "e"])}
    out = tmp_path / "frames"
    write_shards(out, "frames", records, num_shards=2, config={"size": [16, 12]}, indices=[0])
    write_shards(out, "frames", records, num_shards=2, config={"size": [32, 24]}, indices=[1])
    with pytest.raises(store.StoreError) as err:
        store.open_shards(out)
    assert "frames-0-of-2.h5" in str(err.value) and "frames-1-of-2.h5" in str(err.value)
    assert "config size: [16, 12] -> [32, 24]" in str(err.value)
    # another count in the same folder
    write_shards(tmp_path / "counts", "frames", records, num_shards=2, indices=[0])
    write_shards(tmp_path / "counts", "frames", records, num_shards=3, indices=[1])
    with pytest.raises(store.StoreError, match="num_shards: 2 -> 3"):
        store.open_shards(tmp_path / "counts")
    # some shards of a set: read, with a warning naming the missing ones
    with caplog.at_level(logging.WARNING, logger="tsn_pipeline.store"):
        store.open_shards(out / "frames-1-of-2.h5")
        store.open_shards(tmp_path / "counts" / "frames-0-of-2.h5")
    assert "reading 1 of the 2 frames shards" in caplog.text
    assert "shard(s) 0 are not among the files given (reading those files only, as asked)" in caplog.text
    (tmp_path / "counts" / "frames-1-of-3.h5").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tsn_pipeline.store"):
        assert store.open_shards(tmp_path / "counts").ids == batch.assign_shard(records, 0, 2)
    assert "shard(s) 1 are missing from the folder" in caplog.text


def test_flow_train_and_score_refuse_frame_shards_of_different_sizes(make_video, cli_runner,
                                                                     tmp_path):
    for i, name in enumerate(["a", "b", "c", "d", "e"]):
        make_video(f"v/k{i % 2}/{name}.mkv", n=3, seed=i)
    frames = tmp_path / "frames"
    for index, size in ((0, "32x24"), (1, "40x30")):
        assert cli_runner("decode", tmp_path / "v", "--out", frames, "--size", size,
                          "--num-shards", "2", "--shard-index", index,
                          "--no-progress").exit_code == 0
    expected = "config size: [32, 24] -> [40, 30]"
    flow = cli_runner("flow", frames, "--out", tmp_path / "flow", "--backend", "opencv",
                      "--no-progress")
    assert flow.exit_code == 1 and expected in flow.output
    assert not (tmp_path / "flow").exists()
    train = cli_runner("train", "--frames", frames, "--modality", "rgb", "--arch", "resnet10",
                       "--out", tmp_path / "run")
    assert train.exit_code == 1 and expected in train.output
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"never read: the inputs are refused first")
    score = cli_runner("score", fake, "--frames", frames, "--out", tmp_path / "scores",
                       "--no-progress")
    assert score.exit_code == 1 and expected in score.output
    assert not (tmp_path / "scores").exists()


def test_info_counts_flow_fields_in_flow_shards(tmp_path, cli_runner):
    codes = np.random.default_rng(0).integers(0, 256, (4, 2, 12, 16), dtype=np.uint8)
    out = write_shards(tmp_path / "flow", "flow", {"v": flow_record("v", {"tvl1": codes})})
    result = cli_runner("info", out)
    assert result.exit_code == 0, result.output
    assert "videos 1, flow fields 4," in result.output and "frames" not in result.output.split("config")[0]
