"""`tsn flow` end to end: frame shards in, flow shards out (read back with read_flow), both
backends, encodings, step, failures, resume, shard selection, backend selection."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CLIPS, textured_frames
from shards import flip_byte, payload_offset, summaries, write_frames
from tsn_pipeline import store
from tsn_pipeline.flow import read_flow, resolve_backend
from tsn_pipeline.flow.opencv import BackendUnavailable, cuda_device_count

# one process: spawning workers that import torch costs seconds per test on a 2-core box; the
# worker-process path is tested on its own (test_worker_processes_give_the_same_bytes)
FAST = ["--no-progress", "--no-compile", "--nscales", "3", "--warps", "3", "--workers", "1"]


@pytest.fixture
def moving(tmp_path):
    """Two videos of a texture moving 1 px/frame to the left (flow x = -1), 64x48."""
    videos = {"vid_a": textured_frames(4, 48, 64, seed=1, dx=1.0),
              "vid_b": textured_frames(5, 48, 64, seed=2, dx=1.0)}
    return write_frames(tmp_path / "frames", videos), videos


def test_torch_backend_writes_tvl1_and_warped_flow(moving, cli_runner, tmp_path):
    frames, videos = moving
    out = tmp_path / "flow"
    result = cli_runner("flow", frames, "--out", out, "--backend", "torch", "--kind", "both",
                        *FAST)
    assert result.exit_code == 0, result.output
    (summary,) = summaries(result.output)
    assert summary["status"] == "written" and summary["ok"] == 2 and summary["failed"] == 0
    shards = store.open_shards(out, kind="flow")
    assert shards.ids == ["vid_a", "vid_b"]
    entry = shards["vid_b"]
    assert entry.length == 4 and entry.attrs["num_frames"] == 5 and entry.attrs["step"] == 1
    assert entry.attrs["label"] == 1 and entry.attrs["class_name"] == "c1"
    codes = read_flow(shards, "vid_b", "tvl1", [0, 3, 1])
    assert codes.shape == (3, 2, 48, 64) and codes.dtype == np.uint8
    flow = read_flow(shards, "vid_b", "tvl1", range(4), quantized=False)
    inner = flow[:, :, 8:-8, 8:-8]
    assert abs(inner[:, 0].mean() + 1.0) < 0.1 and abs(inner[:, 1].mean()) < 0.1
    # the whole frame moving is camera motion: warped flow removes it
    warped = read_flow(shards, "vid_b", "warped", range(4), quantized=False)
    assert np.abs(warped[:, :, 8:-8, 8:-8]).mean() < 0.2
    assert shards.read_array("vid_b", "warped_homography").shape == (4, 3, 3)
    root = shards.root[shards.paths[0]]
    cfg = root["config"]
    assert cfg["backend"] == "torch" and cfg["bound"] == 20.0 and cfg["encoding"] == "jpeg"
    assert cfg["tvl1"]["nscales"] == 3 and cfg["tvl1"]["lambda"] == 0.15
    assert cfg["kinds"] == ["tvl1", "warped"] and cfg["warp"]["features"] == "orb"
    assert root["classes"] == ["c0", "c1"] and root["shard_index"] == 0
    assert store.verify_shard(shards.paths[0]) == []


def test_opencv_workers_float16_agree_with_torch_png(moving, cli_runner, tmp_path):
    frames, _ = moving
    r1 = cli_runner("flow", frames, "--out", tmp_path / "cv", "--backend", "opencv",
                    "--encoding", "float16", *FAST, "--workers", "2")
    assert r1.exit_code == 0, r1.output
    r2 = cli_runner("flow", frames, "--out", tmp_path / "pt", "--backend", "torch",
                    "--encoding", "png", *FAST)
    assert r2.exit_code == 0, r2.output
    cv, pt = store.open_shards(tmp_path / "cv"), store.open_shards(tmp_path / "pt")
    assert cv.config()["tvl1"]["median"] == 5 and cv.config()["tvl1"]["interp"] == "cpu"
    f_cv = read_flow(cv, "vid_a", "tvl1", range(3), quantized=False)
    assert f_cv.dtype == np.float32 and cv.read_array("vid_a", "tvl1").dtype == np.float16
    f_pt = read_flow(pt, "vid_a", "tvl1", range(3), quantized=False)
    epe = np.sqrt(((f_cv - f_pt)[:, :, 8:-8, 8:-8] ** 2).sum(1)).mean()
    assert epe < 0.15
    # float16 shards quantise on read with the same TSN codec
    assert np.abs(read_flow(cv, "vid_a", "tvl1", [0]).astype(int)
                  - read_flow(pt, "vid_a", "tvl1", [0]).astype(int))[..., 8:-8, 8:-8].mean() < 2


@pytest.mark.slow
def test_worker_processes_give_the_same_bytes(moving, cli_runner, tmp_path):
    """torch on CPU: --workers 2 (one video per worker process, one thread each) stores the
    very bytes of one process: flow fields, warped flow and homographies."""
    frames, _ = moving
    records = {}
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        r = cli_runner("flow", frames, "--out", out, "--backend", "torch", "--kind", "both",
                       "--encoding", "float16", *FAST, "--workers", workers)
        assert r.exit_code == 0, r.output
        (summary,) = summaries(r.output)
        assert summary["ok"] == 2 and summary["failed"] == 0
        shards = store.open_shards(out, kind="flow")
        assert shards.root[shards.paths[0]]["runtime"]["workers"] == int(workers)
        import h5py

        with h5py.File(shards.paths[0], "r") as f:
            records[workers] = {v: store.read_record(f[store.VIDEOS][v]) for v in shards.ids}
    assert sorted(records["1"]) == sorted(records["2"]) == ["vid_a", "vid_b"]
    for vid, one in records["1"].items():
        two = records["2"][vid]
        assert sorted(one.arrays) == sorted(two.arrays) == ["tvl1", "warped", "warped_homography"]
        for name in one.arrays:
            assert one.arrays[name].tobytes() == two.arrays[name].tobytes(), (vid, name)
        assert one.attrs == two.attrs
        assert np.abs(one.arrays["tvl1"]).max() > 0.5          # the texture does move


def test_step_two_and_too_short_video_is_a_recorded_failure(tmp_path, cli_runner):
    videos = {"long": textured_frames(5, 48, 64, seed=1, dx=1.0),
              "short": textured_frames(2, 48, 64, seed=2)}
    frames = write_frames(tmp_path / "frames", videos)
    out = tmp_path / "flow"
    result = cli_runner("flow", frames, "--out", out, "--backend", "torch", "--step", "2", *FAST)
    assert result.exit_code == 1
    assert "1 of 2 videos failed" in result.output
    (summary,) = summaries(result.output)
    assert summary["ok"] == 1 and summary["failed"] == 1
    failures = json.loads((out / "flow-0-of-1.failures.json").read_text())
    assert failures[0]["video_id"] == "short" and "needs at least 3" in failures[0]["reason"]
    shards = store.open_shards(out)
    assert shards.ids == ["long"] and shards["long"].length == 3
    flow = read_flow(shards, "long", "tvl1", range(3), quantized=False)
    assert abs(flow[:, 0, 8:-8, 8:-8].mean() + 2.0) < 0.15     # 2 frames apart: 2 px


def test_rerun_is_complete_and_other_settings_are_refused(moving, cli_runner, tmp_path):
    frames, _ = moving
    out = tmp_path / "flow"
    args = ["flow", frames, "--out", out, "--backend", "opencv", *FAST]
    assert cli_runner(*args).exit_code == 0
    again = cli_runner(*args)
    assert again.exit_code == 0 and summaries(again.output)[0]["status"] == "complete"
    other = cli_runner(*args, "--bound", "10")
    assert other.exit_code == 1 and "other settings" in other.output and "bound" in other.output


def test_flow_writes_every_shard_and_shard_i_holds_frame_shard_i(tmp_path, cli_runner):
    videos = {f"v{i}": textured_frames(3, 32, 40, seed=i, dx=1.0) for i in range(5)}
    for i in range(2):
        write_frames(tmp_path / "frames", videos, i, 2)
    frame_ids = [store.open_shards(tmp_path / "frames" / f"frames-{i}-of-2.h5").ids for i in range(2)]
    out = tmp_path / "flow"
    args = ["flow", tmp_path / "frames", "--backend", "opencv", *FAST]
    one = cli_runner(*args, "--out", out, "--shard-index", "1")    # count: the frames' 2
    assert one.exit_code == 0, one.output
    assert sorted(p.name for p in out.glob("*.h5")) == ["flow-1-of-2.h5"]
    assert store.open_shards(out / "flow-1-of-2.h5").ids == frame_ids[1]
    every = cli_runner(*args, "--out", out)           # no --shard-index: every shard, resumed
    assert every.exit_code == 0, every.output
    assert [(s["shard_index"], s["status"]) for s in summaries(every.output)] == [
        (0, "written"), (1, "complete")]
    for i in range(2):
        assert store.open_shards(out / f"flow-{i}-of-2.h5").ids == frame_ids[i]
    # one frame shard file given: its flow shard only
    single = cli_runner("flow", tmp_path / "frames" / "frames-1-of-2.h5", "--out",
                        tmp_path / "flow1", "--backend", "opencv", *FAST)
    assert single.exit_code == 0, single.output
    assert sorted(p.name for p in (tmp_path / "flow1").glob("*.h5")) == ["flow-1-of-2.h5"]
    # a frame shard missing: the flow shard that needs it is refused, naming it
    (tmp_path / "frames" / "frames-0-of-2.h5").unlink()
    missing = cli_runner(*args, "--out", tmp_path / "flow2", "--shard-index", "0")
    assert missing.exit_code == 1 and "needs frame shard(s) [0] of 2" in missing.output
    assert not (tmp_path / "flow2" / "flow-0-of-2.h5").exists()


def test_real_clip_through_decode_and_flow(tmp_path, cli_runner):
    clip = CLIPS / "TrumanShow_wave_f_nm_np1_fr_med_26.avi"
    src = tmp_path / "videos"
    src.mkdir()
    (src / clip.name).symlink_to(clip)
    assert cli_runner("decode", src, "--out", tmp_path / "frames", "--size", "64x48",
                      "--no-progress").exit_code == 0
    result = cli_runner("flow", tmp_path / "frames", "--out", tmp_path / "flow",
                        "--backend", "torch", *FAST)
    assert result.exit_code == 0, result.output
    shards = store.open_shards(tmp_path / "flow")
    vid = clip.stem
    assert shards[vid].length == 47 and shards[vid].attrs["num_frames"] == 48   # README: 48 decode
    assert read_flow(shards, vid, "tvl1", [0, 46]).shape == (2, 2, 48, 64)


def test_backend_selection_and_missing_opencv_cuda(cli_runner, moving, tmp_path):
    assert resolve_backend("opencv") == ("opencv", "cpu")
    assert resolve_backend("torch", "cpu") == ("torch", "cpu")
    if cuda_device_count() == 0:
        # auto skips opencv-cuda; without a compiled loop OpenCV CPU is the faster CPU choice
        assert resolve_backend("auto", "cpu", compile=False) == ("opencv", "cpu")
        with pytest.raises(BackendUnavailable, match="CUDA"):
            resolve_backend("opencv-cuda")
        frames, _ = moving
        result = cli_runner("flow", frames, "--out", tmp_path / "x", "--backend", "opencv-cuda",
                            "--no-progress")
        assert result.exit_code == 1 and "--backend torch" in result.output


def test_opencv_cuda_backend_matches_torch():
    if cuda_device_count() == 0:
        pytest.skip("cv2 reports no CUDA device (PyPI OpenCV has no CUDA): the opencv-cuda "
                    "backend cannot run here")
    from tsn_pipeline.flow import compute_flow

    frames = textured_frames(3, 48, 64, seed=1, dx=1.0)
    gray = np.stack([f.mean(-1).astype(np.uint8) for f in frames])
    a = compute_flow(gray[:-1], gray[1:], backend="opencv-cuda")["tvl1"]
    b = compute_flow(gray[:-1], gray[1:], backend="torch")["tvl1"]
    assert np.sqrt(((a - b) ** 2).sum(1)).mean() < 0.05


def test_a_damaged_frame_video_fails_alone_naming_shard_and_video(moving, cli_runner, tmp_path):
    """A payload byte flipped on disk: flow checks each video's checksum before reading it."""
    frames, _ = moving
    flip_byte(frames, payload_offset(frames, "vid_a", "rgb") + 100)
    out = tmp_path / "flow"
    result = cli_runner("flow", frames, "--out", out, "--backend", "opencv", *FAST)
    assert result.exit_code == 1 and "1 of 2 videos failed" in result.output
    (failure,) = json.loads((out / "flow-0-of-1.failures.json").read_text())
    assert failure["video_id"] == "vid_a"
    assert str(frames) in failure["reason"] and "'vid_a' is damaged" in failure["reason"]
    assert store.open_shards(out).ids == ["vid_b"]
