"""Clip loading and the training Dataset, on real HDF5 shards written by the batch runner.

The shards are small synthetic videos whose frames and flow we know exactly
(``tests/shards.py``: ``make_frame_shards``, ``make_flow_shards``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shards import H, W, make_flow_shards, make_frame_shards, synthetic_frames, video_table

REPO = Path(__file__).resolve().parents[1]
VIDEOS = REPO / "tests" / "data"


# -- tests ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    rows = video_table(num_videos=3, num_classes=3, num_frames=10, val=1)
    make_frame_shards(root / "frames", rows)
    make_flow_shards(root / "flow", rows, kinds=("tvl1",))
    return root, rows


def test_load_clip_rgb_reads_the_asked_frames(shards):
    from tsn_pipeline.data import Sources, load_clip

    root, rows = shards
    src = Sources.open(frames=root / "frames")
    idx = np.array([[0], [4], [9], [4]])
    clip = load_clip(src, "vid01", "rgb", idx)
    assert clip.shape == (4, 1, H, W, 3) and clip.dtype == np.uint8
    want = synthetic_frames(1, 11, seed=1)
    np.testing.assert_array_equal(clip[:, 0], want[idx[:, 0]])   # PNG: lossless
    diff = load_clip(src, "vid01", "rgbdiff", np.array([[2, 3, 4]]))
    assert diff.shape == (1, 3, H, W, 3)
    assert diff[0, :, 0, 0, 0].tolist() == [20, 30, 40]


def test_load_clip_flow_layout_and_missing_kind(shards):
    from tsn_pipeline.data import DataError, Sources, load_clip

    root, _ = shards
    src = Sources.open(flow=root / "flow")
    clip = load_clip(src, "vid02", "flow", np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]))
    assert clip.shape == (2, 5, 2, H, W)
    assert clip[1, 2, 0, 0, -1] == 100 + 10 * 7 + 2 and clip[1, 2, 1, 0, -1] == 60 + 7
    with pytest.raises(DataError, match="warped"):
        load_clip(src, "vid02", "warped", np.array([[0]]))
    with pytest.raises(DataError, match="--frames"):
        load_clip(src, "vid02", "rgb", np.array([[0]]))


def test_select_videos_by_split_and_errors(shards, tmp_path):
    from tsn_pipeline.data import DataError, Sources, check_modality, select_videos
    from tsn_pipeline.videolist import VideoItem, load_video_list, write_video_list_csv

    root, rows = shards
    src = Sources.open(frames=root / "frames", flow=root / "flow")
    train = select_videos(src, "flow", "train")
    assert [s.video_id for s in train] == ["vid00", "vid01", "vid02"]
    assert [s.label for s in train] == [0, 1, 2]
    assert [s.video_id for s in select_videos(src, "rgb", "test")] == ["val00"]
    with pytest.raises(DataError, match="label 2, outside 0..1"):
        select_videos(src, "rgb", "train", num_classes=2)
    with pytest.raises(DataError, match="warped"):
        check_modality(src, "warped", train)
    csv = tmp_path / "list.csv"
    write_video_list_csv([VideoItem("vid00", "a.avi", 1, "c1", "train"),
                          VideoItem("nope", "b.avi", 0, "c0", "train")], csv)
    with pytest.raises(DataError, match=r"no flow in .*\['nope'\]"):
        select_videos(src, "flow", "train", load_video_list(csv))
    write_video_list_csv([VideoItem("vid00", "a.avi", 1, "c1", "train"),
                          VideoItem("vid00", "b.avi", 0, "c0", "test")], csv)
    with pytest.raises(DataError, match=r"more than once: \[.vid00.\]"):
        select_videos(src, "flow", "train", load_video_list(csv))


def test_dataset_items_are_a_function_of_seed_epoch_index(shards):
    from tsn_pipeline.data import Sources, TSNDataset, select_videos

    root, _ = shards
    src = Sources.open(flow=root / "flow")
    samples = select_videos(src, "flow", "train")
    ds = TSNDataset(src, samples, "flow", 3, 5, "train", 32, (0.5, 0.5), (0.25, 0.25), seed=3)
    x, y, i = ds[1]
    assert tuple(x.shape) == (3, 10, 32, 32) and y == 1 and i == 1
    again = TSNDataset(src, samples, "flow", 3, 5, "train", 32, (0.5, 0.5), (0.25, 0.25), seed=3)
    assert np.array_equal(again[1][0].numpy(), x.numpy())
    again.set_epoch(1)
    assert not np.array_equal(again[1][0].numpy(), x.numpy())
    val = TSNDataset(src, samples, "flow", 3, 5, "val", 32, (0.5, 0.5), (0.25, 0.25))
    # val: segment centres of 10 flow fields, 5 per snippet: avail 6, tick 2 -> starts 1, 3, 5
    np.testing.assert_array_equal(val.indices(1)[:, 0], [1, 3, 5])   # vid01: 11 frames


def test_persistent_workers_follow_the_epoch(shards):
    from torch.utils.data import DataLoader, DistributedSampler

    from tsn_pipeline.data import EpochSampler, Sources, TSNDataset, select_videos

    root, _ = shards
    src = Sources.open(frames=root / "frames")
    ds = TSNDataset(src, select_videos(src, "rgb", "train"), "rgb", 2, 1, "train", 32,
                    (0.5,) * 3, (0.25,) * 3, seed=0)
    sampler = EpochSampler(DistributedSampler(ds, num_replicas=1, rank=0, shuffle=False))
    loader = DataLoader(ds, batch_size=3, sampler=sampler, num_workers=1,
                        persistent_workers=True)
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        x, y, idx = next(iter(loader))
        assert idx.tolist() == [0, 1, 2]
        for j in range(3):       # the worker's copy drew epoch `epoch`'s parameters
            np.testing.assert_array_equal(x[j].numpy(), ds[(epoch, j)][0].numpy())
        seen.append(x)
    assert not np.array_equal(seen[0].numpy(), seen[1].numpy())
