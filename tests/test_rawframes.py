"""Rawframes interop: dense_flow / mmaction2 folders <-> shards, byte for byte."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import textured_frames
from shards import flip_byte, flow_record, frame_record, payload_offset, write_shards
from tsn_pipeline import store
from tsn_pipeline.flow.quantize import quantize_flow
from tsn_pipeline.flow.reader import read_flow
from tsn_pipeline.rawframes import image_size

N = 7                      # frames per video -> 6 flow fields (dense_flow: N - 1)


def _flow_codes(frames: np.ndarray) -> np.ndarray:
    """(N-1, 2, H, W) uint8: Farneback flow (a real OpenCV flow) quantised like dense_flow."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    out = []
    for a, b in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 2, 9, 3, 5, 1.1, 0)
        out.append(quantize_flow(flow.transpose(2, 0, 1), 20.0))
    return np.stack(out)


def write_rawframes(folder: Path, frames: np.ndarray, start: int = 1, flow: bool = True,
                    x_prefix: str = "flow_x_", y_prefix: str = "flow_y_", img: bool = True):
    """A dense_flow-style folder written with cv2.imwrite, as dense_flow does."""
    folder.mkdir(parents=True, exist_ok=True)
    if img:
        for t, f in enumerate(frames):
            cv2.imwrite(str(folder / f"img_{t + start:05d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    if flow:
        for t, (x, y) in enumerate(_flow_codes(frames)):
            cv2.imwrite(str(folder / f"{x_prefix}{t + start:05d}.jpg"), x)
            cv2.imwrite(str(folder / f"{y_prefix}{t + start:05d}.jpg"), y)


def _files(folder: Path, prefix: str):
    return [p.read_bytes() for p in sorted(folder.glob(f"{prefix}*"))]


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "rawframes"
    for i, vid in enumerate(["vid_a", "vid_b", "vid_c"]):
        write_rawframes(src / vid, textured_frames(N, 48, 64, seed=i, dx=1.5, dy=-0.5))
    return src


def test_import_copies_bytes_and_records_counts(tree, tmp_path, cli_runner):
    result = cli_runner("import-rawframes", tree, "--frames-out", tmp_path / "frames",
                        "--flow-out", tmp_path / "flow", "--no-progress")
    assert result.exit_code == 0, result.output
    frames = store.open_shards(tmp_path / "frames", "frames")
    flow = store.open_shards(tmp_path / "flow", "flow")
    assert frames.ids == flow.ids == ["vid_a", "vid_b", "vid_c"]
    for vid in frames.ids:
        folder = tree / vid
        assert frames.read_encoded(vid, "rgb", range(N)) == _files(folder, "img_")
        assert flow.read_encoded(vid, "tvl1_x", range(N - 1)) == _files(folder, "flow_x_")
        assert flow.read_encoded(vid, "tvl1_y", range(N - 1)) == _files(folder, "flow_y_")
        e = flow[vid]
        assert (e.attrs["num_flows"], e.attrs["num_frames"], e.attrs["step"]) == (N - 1, N, 1)
        assert (e.attrs["width"], e.attrs["height"], e.attrs["start_index"]) == (64, 48, 1)
        assert frames[vid].length == N and frames[vid].attrs["num_frames"] == N
        # the flow reader of the flow stage reads imported shards: x first, 1-based file k -> field k-1
        codes = read_flow(flow, vid, "tvl1", [0, 5])
        for j, t in enumerate([0, 5]):
            x = cv2.imread(str(folder / f"flow_x_{t + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
            y = cv2.imread(str(folder / f"flow_y_{t + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
            np.testing.assert_array_equal(codes[j, 0], x)
            np.testing.assert_array_equal(codes[j, 1], y)
    config = flow.config()
    assert (config["kinds"], config["bound"], config["encoding"]) == (["tvl1"], 20.0, "jpeg")


def test_start_index_detection_class_folders_and_failures(tmp_path, cli_runner):
    src = tmp_path / "mm"
    # mmaction2 layout <class>/<id>/, numbered from 0
    write_rawframes(src / "run" / "r0", textured_frames(N, 48, 64, seed=1), start=0)
    write_rawframes(src / "jump" / "j0", textured_frames(N, 48, 64, seed=2), start=0)
    # a gap (file 3 missing) and a folder whose img and flow numbering disagree
    write_rawframes(src / "jump" / "j1", textured_frames(N, 48, 64, seed=3), start=1)
    (src / "jump" / "j1" / "flow_x_00003.jpg").unlink()
    write_rawframes(src / "run" / "r1", textured_frames(N, 48, 64, seed=4), start=0, img=False)
    (src / "run" / "r1" / "flow_y_00000.jpg").rename(src / "run" / "r1" / "flow_y_00009.jpg")
    out = tmp_path / "flow"
    result = cli_runner("import-rawframes", src, "--flow-out", out, "--no-progress")
    assert result.exit_code == 1
    reasons = {f["video_id"]: f["reason"] for f in
               json.loads((out / "flow-0-of-1.failures.json").read_text())}
    assert set(reasons) == {"j1", "r1"}
    assert "number 3 is missing between 1 and 6" in reasons["j1"]
    assert "cannot tell the start index" in reasons["r1"]
    flow = store.open_shards(out)
    assert flow.ids == ["j0", "r0"]
    assert (flow["j0"].label, flow["j0"].attrs["class_name"], flow["r0"].label) == (0, "jump", 1)
    assert flow["r0"].attrs["start_index"] == 0 and flow["r0"].length == N - 1
    assert flow.read_encoded("r0", "tvl1_x", [0]) == [(src / "run" / "r0" / "flow_x_00000.jpg").read_bytes()]
    # forcing the start index: the 0-based folders now fail, explaining why
    result = cli_runner("import-rawframes", src, "--flow-out", tmp_path / "f1", "--start-index", "1",
                        "--no-progress")
    assert result.exit_code == 1 and "starts at 0, expected 1" in (tmp_path / "f1" / "flow-0-of-1.failures.json").read_text()


def test_round_trip_export_import_is_byte_identical(make_video, tmp_path, cli_runner):
    """decode (the real stage) + a flow shard with tvl1 and warped -> export -> import."""
    for i, cls in enumerate(["a", "b", "a"]):
        make_video(f"videos/{cls}/clip{i}.mkv", n=N, size=(64, 48), seed=i)
    frames_dir, flow_dir = tmp_path / "frames", tmp_path / "flow"
    assert cli_runner("decode", tmp_path / "videos", "--out", frames_dir, "--size", "original",
                      "--num-shards", "2", "--shard-index", "0", "--no-progress").exit_code == 0
    assert cli_runner("decode", tmp_path / "videos", "--out", frames_dir, "--size", "original",
                      "--num-shards", "2", "--shard-index", "1", "--no-progress").exit_code == 0
    frames = store.open_shards(frames_dir)
    # flow shards in the flow stage's layout: Farneback codes of the decoded frames as tvl1,
    # the same with x inverted as warped, gray JPEG
    records = {}
    for vid in frames.ids:
        tvl1 = _flow_codes(frames.read_frames(vid, range(frames[vid].length)))
        warped = tvl1.copy()
        warped[:, 0] = 255 - tvl1[:, 0]
        records[vid] = flow_record(vid, {"tvl1": tvl1, "warped": warped}, frames[vid].label,
                                   fmt="jpeg", quality=90,
                                   class_name=frames[vid].attrs["class_name"])
    write_shards(flow_dir, "flow", records, num_shards=2,
                 config={"kinds": ["tvl1", "warped"], "bound": 20.0, "encoding": "jpeg"})
    flow = store.open_shards(flow_dir)
    out = tmp_path / "exported"
    export = ("export-rawframes", "--frames", frames_dir, "--flow", flow_dir, "--out", out,
              "--by-class", "--list-out", tmp_path / "list.txt", "--no-progress")
    result = cli_runner(*export)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["written"] == 3
    again = json.loads(cli_runner(*export).stdout.strip().splitlines()[-1])
    assert (again["written"], again["skipped"]) == (0, 3)       # finished folders are kept
    # warped flow goes to its own tree, as dense_flow's extract_warp_gpu writes it
    result = cli_runner("export-rawframes", "--flow", flow_dir, "--out", tmp_path / "warped",
                        "--by-class", "--flow-kind", "warped", "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "list.txt").read_text() == f"a/clip0 {N} 0\nb/clip1 {N} 1\na/clip2 {N} 0\n"
    assert sorted(p.name for p in (out / "b" / "clip1").iterdir())[:2] == ["flow_x_00001.jpg",
                                                                          "flow_x_00002.jpg"]
    back_f, back_w = tmp_path / "back_frames", tmp_path / "back_flow"
    for i in range(2):
        result = cli_runner("import-rawframes", out, "--list", tmp_path / "list.txt",
                            "--frames-out", back_f, "--flow-out", back_w, "--warped-src",
                            tmp_path / "warped", "--num-shards", "2", "--shard-index", str(i),
                            "--no-progress")
        assert result.exit_code == 0, result.output
    frames2, flow2 = store.open_shards(back_f), store.open_shards(back_w)
    assert frames2.ids == frames.ids and flow2.ids == flow.ids
    # same assignment of videos to shard files as the stages
    for vid in frames.ids:
        assert Path(frames2[vid].shard).name == Path(frames[vid].shard).name
        assert frames2[vid].label == frames[vid].label
        n = frames[vid].length
        assert frames2.read_encoded(vid, "rgb", range(n)) == frames.read_encoded(vid, "rgb", range(n))
        for stream in ("tvl1_x", "tvl1_y", "warped_x", "warped_y"):
            m = flow[vid].attrs["num_flows"]
            assert flow2.read_encoded(vid, stream, range(m)) == flow.read_encoded(vid, stream, range(m))
        assert flow2[vid].attrs["kinds"] == ["tvl1", "warped"]


def test_export_refuses_float16_flow(tmp_path, cli_runner):
    codes = np.zeros((2, 2, 8, 8), np.uint8)
    write_shards(tmp_path / "flow", "flow", {"v": flow_record("v", {"tvl1": codes}, fmt="float16")},
                 config={"encoding": "float16"})
    result = cli_runner("export-rawframes", "--flow", tmp_path / "flow", "--out", tmp_path / "o",
                        "--no-progress")
    assert result.exit_code == 1 and "float16" in result.output


@pytest.mark.parametrize("shape,fmt", [((48, 64, 3), ".jpg"), ((30, 17), ".jpg"),
                                       ((30, 17), ".png"), ((5, 9, 3), ".png")])
def test_image_size_reads_headers_like_opencv(shape, fmt):
    img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    ok, buf = cv2.imencode(fmt, img)
    w, h, c = image_size(buf.tobytes())
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    assert (h, w) == decoded.shape[:2] and c == (decoded.shape[2] if decoded.ndim == 3 else 1)


def test_export_refuses_a_damaged_video_and_writes_the_others(tmp_path, cli_runner):
    records = {v: frame_record(v, textured_frames(3, 24, 32, seed=i), fmt="jpeg")
               for i, v in enumerate(["good", "bad"])}
    frames = write_shards(tmp_path / "frames", "frames", records)
    shard = frames / "frames-0-of-1.h5"
    flip_byte(shard, payload_offset(shard, "bad", "rgb") + 50)
    out = tmp_path / "raw"
    result = cli_runner("export-rawframes", "--frames", frames, "--out", out, "--no-progress")
    assert result.exit_code == 1 and "1 of 2 videos failed" in result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    (failure,) = summary["failures"]
    assert failure["video_id"] == "bad" and f"{shard}: video 'bad' is damaged" in failure["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["good"]
