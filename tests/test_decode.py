"""Decode stage: exact frames, real clips, bad input, sharding, resume and the reader."""
from __future__ import annotations

import fcntl
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO, CLIP_FRAMES, run_tsn, textured_frames
from tsn_pipeline import batch, store
from tsn_pipeline.videoio import FrameReader, write_video


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def summary_of(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("codec,ext", [("ffv1", "mkv"), ("png", "avi")])
def test_lossless_video_decodes_to_its_exact_frames(make_video, codec, ext):
    path, frames = make_video(f"clip.{ext}", n=7, size=(64, 48), codec=codec)
    with FrameReader(path) as reader:
        decoded = np.stack(list(reader))
    assert reader.errors == ""
    np.testing.assert_array_equal(decoded, frames)


@pytest.mark.parametrize("encoder,min_psnr", [("ffmpeg", 28.0), ("opencv", 30.0)])
def test_decode_stores_jpeg_within_psnr_and_metadata(make_video, cli_runner, tmp_path, encoder,
                                                     min_psnr):
    path, frames = make_video("a/clip.mkv", n=6, size=(64, 48))
    out = tmp_path / "out"
    result = cli_runner("decode", path.parent.parent, "--out", out, "--size", "original",
                        "--encoder", encoder, "--quality", "95", "--qscale", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    shards = store.open_shards(out, kind="frames")
    assert shards.ids == ["clip"]
    entry = shards["clip"]
    assert entry.length == 6 and entry.label == 0 and entry.attrs["class_name"] == "a"
    assert (entry.attrs["width"], entry.attrs["height"]) == (64, 48)
    stored = shards.read_frames("clip", range(6))
    assert stored.shape == frames.shape
    # 4:2:0 JPEG of a colour-noise texture, measured: opencv q95 ~31 dB, ffmpeg q:v 2 ~29 dB
    assert min(psnr(s, f) for s, f in zip(stored, frames)) > min_psnr
    root = shards.root[shards.paths[0]]
    assert root["config"]["encoder"] == encoder and root["classes"] == ["a"]
    assert root["config"]["quality"] == (95 if encoder == "opencv" else None)
    assert root["package_version"] and root["schema_version"] == store.SCHEMA_VERSION


def test_resize_fixed_and_short_side(make_video, cli_runner, tmp_path):
    path, _ = make_video("clip.mkv", n=3, size=(80, 60))
    cli_runner("decode", tmp_path, "--out", tmp_path / "a", "--size", "40x32", "--no-progress")
    cli_runner("decode", tmp_path, "--out", tmp_path / "b", "--short-side", "30", "--no-progress")
    a = store.open_shards(tmp_path / "a").read_frames("clip", [0])
    b = store.open_shards(tmp_path / "b").read_frames("clip", [0])
    assert a.shape == (1, 32, 40, 3) and b.shape == (1, 30, 40, 3)


def test_real_clips_decode_with_the_counts_that_decode(real_clips, cli_runner, tmp_path):
    out = tmp_path / "out"
    result = cli_runner("decode", real_clips, "--out", out, "--size", "64x48", "--workers",
                        "2", "--no-progress")
    assert result.exit_code == 0, result.output
    shards = store.open_shards(out)
    for name, count in CLIP_FRAMES.items():
        entry = shards[Path(name).stem]
        assert entry.length == count, name
        assert shards.read_frames(entry.video_id, [count - 1]).shape == (1, 48, 64, 3)
    # the HMDB51 headers claim one frame more than decodes; we store what decodes
    hmdb = shards["TrumanShow_wave_f_nm_np1_fr_med_26"].attrs
    assert hmdb["header_frames"] == hmdb["num_frames"] + 1


def test_timestamp_gaps_are_not_filled_with_duplicates(make_video, tmp_path):
    from tsn_pipeline.videoio import ffmpeg_exe

    src, frames = make_video("src.mkv", n=12)
    gapped = tmp_path / "gap.mkv"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", src, "-vf",
                    "setpts='PTS+if(gte(N,6),20/(25*TB),0)'", "-c:v", "ffv1",
                    "-fps_mode", "passthrough", gapped], check=True)
    with FrameReader(gapped) as reader:
        decoded = np.stack(list(reader))
    np.testing.assert_array_equal(decoded, frames)
    with FrameReader(gapped, fps=25) as reader:      # resampling asked for: gaps are filled
        assert len(list(reader)) > len(frames)


def _bad_inputs(folder: Path, make_video):
    """Write one example of each kind of bad input; return {id: expected failure text}."""
    good, _ = make_video("good.avi", n=20, codec="mpeg4", folder=folder)
    raw = good.read_bytes()
    (folder / "notavideo.avi").write_text("this is text, not a video\n")
    (folder / "empty.mp4").write_bytes(b"")
    no_frames = bytearray(raw)          # AVI header and index kept, frame data zeroed
    no_frames[4096:-400] = bytes(len(raw) - 4496)
    (folder / "header_only.avi").write_bytes(bytes(no_frames))
    corrupt = bytearray(raw)
    mid = len(corrupt) // 2
    corrupt[mid:mid + 1200] = np.random.default_rng(1).integers(0, 256, 1200, dtype=np.uint8).tobytes()
    (folder / "corrupt_middle.avi").write_bytes(bytes(corrupt))
    (folder / "truncated.avi").write_bytes(raw[: len(raw) * 9 // 10])
    return {"notavideo": "not a readable video", "empty": "empty file",
            "header_only": "no frame decodes"}


def test_bad_inputs_are_recorded_and_the_rest_is_stored(make_video, tmp_path):
    videos = tmp_path / "videos"
    expected = _bad_inputs(videos, make_video)
    listing = tmp_path / "list.csv"
    rows = ["video_id,path,label"] + [f"{p.stem},{p},0" for p in sorted(videos.iterdir())]
    rows += [f"missing,{tmp_path / 'nope.avi'},0", f"good,{videos / 'truncated.avi'},0"]
    listing.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    proc = run_tsn("decode", listing, "--out", out, "--size", "original", "--no-progress")
    assert proc.returncode == 1, proc.stderr
    assert "5 of 8 videos failed" in proc.stderr
    failures = {f["video_id"]: f for f in json.loads((out / "frames-0-of-1.failures.json").read_text())}
    assert set(failures) == set(expected) | {"missing", "good"}
    for vid, text in expected.items():
        assert text in failures[vid]["reason"] and vid in failures[vid]["reason"]
    assert "no such file" in failures["missing"]["reason"]
    assert "duplicate video id 'good'" in failures["good"]["reason"]
    shards = store.open_shards(out)
    assert shards.ids == ["corrupt_middle", "good", "truncated"]
    assert shards["good"].length == 20 and shards["good"].attrs["decode_errors"] == ""
    for vid in ("corrupt_middle", "truncated"):   # partial decodes keep what decodes
        entry = shards[vid]
        assert 0 < entry.length <= 20 and entry.attrs["decode_errors"]
        assert shards.read_frames(vid, range(entry.length)).shape[0] == entry.length
    assert store.verify_shard(shards.paths[0]) == []
    strict = run_tsn("decode", listing, "--out", tmp_path / "strict", "--size", "original",
                     "--strict", "--no-progress")
    assert strict.returncode == 1
    assert "7 of 8 videos failed" in strict.stderr


def test_all_failed_is_a_nonzero_exit_not_silence(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "x.avi").write_text("nope")
    proc = run_tsn("decode", tmp_path / "v", "--out", tmp_path / "out", "--no-progress")
    assert proc.returncode == 1 and "1 of 1 videos failed" in proc.stderr


def test_shards_partition_the_list_deterministically(make_video, cli_runner, tmp_path):
    for i in range(5):
        make_video(f"v/c{i % 2}/vid{i}.mkv", n=2, seed=i)
    ids = set()
    for i in range(2):
        cli_runner("decode", tmp_path / "v", "--out", tmp_path / "out", "--shard-index", i,
                   "--num-shards", 2, "--size", "32x24", "--no-progress")
        part = store.open_shards(tmp_path / "out" / f"frames-{i}-of-2.h5").ids
        assert part == batch.assign_shard([f"vid{k}" for k in range(5)], i, 2)
        ids |= set(part)
    assert ids == {f"vid{k}" for k in range(5)}
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1",
           "SLURM_ARRAY_TASK_COUNT": "2"}
    proc = run_tsn("decode", tmp_path / "v", "--out", tmp_path / "slurm", "--size", "32x24",
                   "--no-progress", env=env, check=0)
    assert summary_of(proc)["shard"].endswith("frames-1-of-2.h5")
    # a resubmission of shards 3 and 17 of 32 (--array=3,17): ids are indices, count explicit
    resubmit = {"SLURM_ARRAY_TASK_ID": "17", "SLURM_ARRAY_TASK_MIN": "3",
                "SLURM_ARRAY_TASK_MAX": "17", "SLURM_ARRAY_TASK_COUNT": "2"}
    proc = run_tsn("decode", tmp_path / "v", "--out", tmp_path / "slurm", "--size", "32x24",
                   "--no-progress", env=resubmit)
    assert proc.returncode == 2 and "give --num-shards" in proc.stderr
    proc = run_tsn("decode", tmp_path / "v", "--out", tmp_path / "slurm", "--size", "32x24",
                   "--no-progress", "--num-shards", "32", env=resubmit, check=0)
    assert summary_of(proc)["shard"].endswith("frames-17-of-32.h5")


def test_rerun_skips_complete_and_refuses_other_settings(make_video, cli_runner, tmp_path):
    make_video("v/a.mkv", n=3)
    args = ["decode", tmp_path / "v", "--out", tmp_path / "out", "--no-progress"]
    first = cli_runner(*args, "--size", "32x24")
    assert summary_of(first)["status"] == "written"
    before = (tmp_path / "out" / "frames-0-of-1.h5").read_bytes()
    again = cli_runner(*args, "--size", "32x24")
    assert summary_of(again)["status"] == "complete"
    other = run_tsn(*args, "--size", "40x30")
    assert other.returncode == 1 and "other settings" in other.stderr and "size" in other.stderr
    assert (tmp_path / "out" / "frames-0-of-1.h5").read_bytes() == before
    redo = cli_runner(*args, "--size", "40x30", "--overwrite")
    assert summary_of(redo)["status"] == "written"


def test_second_process_on_the_same_shard_refuses(make_video, tmp_path):
    make_video("v/a.mkv", n=2)
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".frames-0-of-1.h5.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run_tsn("decode", tmp_path / "v", "--out", tmp_path / "out", "--no-progress")
    assert proc.returncode == 1 and "another process is writing" in proc.stderr
    assert not (tmp_path / "out" / "frames-0-of-1.h5").exists()


def test_killed_run_resumes_to_identical_shard(tmp_path):
    videos = tmp_path / "v"
    for i in range(14):
        path = videos / f"c{i % 2}" / f"vid{i:02d}.mkv"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, textured_frames(24, 72, 96, seed=i), codec="ffv1")
    args = ["decode", videos, "--size", "original", "--no-progress"]
    run_tsn(*args, "--out", tmp_path / "whole", check=0)
    out = tmp_path / "killed"
    parts = out / ".frames-0-of-1.h5.parts"
    proc = subprocess.Popen([sys.executable, "-m", "tsn_pipeline.cli", *map(str, args), "--out", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("*.h5"))) >= 3:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "frames-0-of-1.h5").exists(), "killed too late to test resuming"
    rerun = run_tsn(*args, "--out", out, check=0)
    assert summary_of(rerun)["resumed"] >= 3
    assert (out / "frames-0-of-1.h5").read_bytes() == (tmp_path / "whole" / "frames-0-of-1.h5").read_bytes()
    assert not parts.exists() and not list(out.glob("*.tmp"))


def test_reader_is_picklable_and_fork_safe(make_video, cli_runner, tmp_path):
    make_video("v/a.mkv", n=4, seed=3)
    cli_runner("decode", tmp_path / "v", "--out", tmp_path / "out", "--size", "32x24", "--no-progress")
    shards = store.open_shards(tmp_path / "out")
    expected = shards.read_frames("a", [0, 3])          # opens the file in this process
    clone = pickle.loads(pickle.dumps(shards))
    np.testing.assert_array_equal(clone.read_frames("a", [0, 3]), expected)
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply(_read_in_child, (shards,))
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(IndexError, match="index 4 outside 0..3"):
        shards.read_frames("a", [4])
    with pytest.raises(KeyError, match="'nope' is not in shards"):
        shards["nope"]


def _read_in_child(shards):
    return shards.read_frames("a", [0, 3])


def test_verify_detects_bytes_corrupted_on_disk(make_video, cli_runner, tmp_path):
    make_video("v/a.mkv", n=4)
    make_video("v/b.mkv", n=4, seed=1)
    cli_runner("decode", tmp_path / "v", "--out", tmp_path / "out", "--size", "32x24", "--no-progress")
    shard = tmp_path / "out" / "frames-0-of-1.h5"
    assert cli_runner("verify", shard).exit_code == 0
    with h5py.File(shard, "r") as f:
        offset = f["videos/b/rgb"].id.get_offset()
        size = f["videos/b/rgb"].id.get_storage_size()
    with open(shard, "r+b") as fh:
        fh.seek(offset + size // 2)
        byte = fh.read(1)
        fh.seek(offset + size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    proc = run_tsn("verify", shard)
    assert proc.returncode == 1
    assert "b: checksum mismatch" in proc.stdout and "a:" not in proc.stdout


def test_info_json_lists_every_video(make_video, cli_runner, tmp_path):
    make_video("v/k/a.mkv", n=3)
    cli_runner("decode", tmp_path / "v", "--out", tmp_path / "out", "--size", "32x24", "--no-progress")
    result = cli_runner("info", "--json", tmp_path / "out")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["video_id"] == "a" and rows[0]["num_frames"] == 3 and rows[0]["label"] == 0
    assert rows[0]["shard"].endswith("frames-0-of-1.h5")


def test_bad_size_is_a_usage_error(cli_runner, tmp_path):
    from click.testing import CliRunner

    from tsn_pipeline import cli

    result = CliRunner().invoke(cli.main, ["decode", str(tmp_path), "--out", str(tmp_path / "o"),
                                           "--size", "big"])
    assert result.exit_code == 2 and "WIDTHxHEIGHT" in result.output


def test_jpeg_stream_splitter_handles_restart_markers_and_chunking():
    import cv2

    from tsn_pipeline.videoio import jpeg_end

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    payloads = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 90,
                                          cv2.IMWRITE_JPEG_RST_INTERVAL, 2])[1].tobytes()
                for im in images]
    stream = bytearray(b"".join(payloads))
    start, found = 0, []
    while (end := jpeg_end(stream, start)) is not None:
        found.append(bytes(stream[start:end]))
        start = end
    assert found == payloads
    assert jpeg_end(bytearray(payloads[0][:-1])) is None      # incomplete: wait for more


def test_reader_payloads_equal_plain_h5py_slices(make_video, cli_runner, tmp_path):
    make_video("v/a.mkv", n=5, seed=4)
    cli_runner("decode", tmp_path / "v", "--out", tmp_path / "out", "--size", "32x24", "--no-progress")
    shards = store.open_shards(tmp_path / "out")
    got = shards.read_encoded("a", "rgb", [4, 0, 2])       # pread path (contiguous buffer)
    with h5py.File(shards.paths[0], "r") as f:
        data, off = f["videos/a/rgb"], f["videos/a/rgb_offsets"][()]
        want = [data[off[i]:off[i + 1]].tobytes() for i in (4, 0, 2)]
    assert got == want and all(p[:2] == b"\xff\xd8" for p in got)
    shards.close()


def _two_clips(tmp_path) -> Path:
    folder = tmp_path / "v"
    folder.mkdir()
    for name in ("v_SoccerJuggling_g23_c01.avi", "bikes.mp4"):
        (folder / name).symlink_to(REPO / "tests" / "data" / name)
    return folder


def test_stored_payloads_are_the_bytes_ffmpeg_writes(cli_runner, tmp_path):
    """The reference: ffmpeg's own command of the reader, writing img_%05d.jpg files
    instead of the pipe. Every stored payload is byte for byte one of those files."""
    from tsn_pipeline.videoio import JpegReader

    clips = _two_clips(tmp_path)
    out = tmp_path / "out"
    r = cli_runner("decode", clips, "--out", out, "--size", "64x48", "--workers", "2",
                   "--no-progress")
    assert r.exit_code == 0, r.output
    shards = store.open_shards(out)
    for clip in sorted(clips.iterdir()):
        cmd = JpegReader(clip, (64, 48), qscale=2)._cmd
        ref = tmp_path / "ref" / clip.stem
        ref.mkdir(parents=True)
        cmd[cmd.index("image2pipe")] = "image2"
        cmd[cmd.index("pipe:")] = str(ref / "img_%05d.jpg")
        subprocess.run(cmd, check=True, capture_output=True)
        files = sorted(ref.glob("img_*.jpg"))
        n = shards[clip.stem].length
        assert len(files) == n > 0
        assert shards.read_encoded(clip.stem, "rgb", range(n)) == [p.read_bytes() for p in files]
    shards.close()
