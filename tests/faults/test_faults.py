"""Fault injection across stages: bad files, SIGKILL, concurrency, full and read-only disks,
old schemas. Every test runs the real `tsn` command in a subprocess."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import REPO, run_tsn, textured_frames
from shards import frame_record
from tsn_pipeline import store
from tsn_pipeline.videoio import write_video

pytestmark = pytest.mark.faults


def _summary(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _failures(out: Path, kind: str = "frames") -> dict:
    data = json.loads((out / f"{kind}-0-of-1.failures.json").read_text())
    return {f["video_id"]: f["reason"] for f in data}


def test_odd_file_names_are_stored_under_safe_ids(tmp_path):
    names = ["with space.mkv", "vidéo ü.mkv", "quote'\"s.mkv", "100%.mkv", "-dash.mkv",
             "new\nline.mkv", "semi;colon#.mkv"]
    (tmp_path / "v").mkdir()
    for i, name in enumerate(names):
        write_video(tmp_path / "v" / name, textured_frames(3, 24, 32, seed=i))
    out = tmp_path / "out"
    run_tsn("decode", tmp_path / "v", "--out", out, "--size", "original", "--no-progress", check=0)
    ids = store.open_shards(out).ids
    assert sorted(ids) == sorted(["with space", "vidéo ü", "quote'\"s", "100%", "-dash",
                                  "new_line", "semi;colon#"])
    rows = [json.loads(line) for line in run_tsn("info", "--json", out, check=0).stdout.splitlines()]
    assert {r["video_id"] for r in rows} == set(ids)
    with h5py.File(out / "frames-0-of-1.h5", "r") as f:   # every id is a direct child of /videos
        assert sorted(f["videos"].keys()) == sorted(ids)
        assert set(f.keys()) == {"videos", "assigned_ids"}


def test_ids_that_could_escape_their_group_are_refused(tmp_path):
    for bad in ("../x", "a/b", ".", "..", "tab\there"):
        with pytest.raises(ValueError):
            store.VideoRecord(bad)
    listing = tmp_path / "list.csv"
    listing.write_text("video_id,path\n../../etc,whatever.avi\n")
    proc = run_tsn("decode", listing, "--out", tmp_path / "out", "--no-progress")
    assert proc.returncode == 1 and "not allowed" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_wrong_extension_single_frame_and_unreadable(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "real_mkv.avi", textured_frames(4, 24, 32))      # content decides
    write_video(videos / "one_frame.mkv", textured_frames(1, 24, 32))
    (videos / "text.mp4").write_text("hello")
    locked = videos / "locked.mkv"
    write_video(locked, textured_frames(4, 24, 32))
    locked.chmod(0)
    cmd = [sys.executable, "-m", "tsn_pipeline.cli", "decode", str(videos), "--out", str(tmp_path / "out"),
           "--size", "original", "--no-progress"]
    if os.geteuid() == 0:   # root reads anything: drop the capabilities that let it
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    failures = _failures(tmp_path / "out")
    assert set(failures) == {"text", "locked"}
    assert "not a readable video" in failures["text"]
    assert "locked" in failures["locked"] and "permission denied" in failures["locked"]
    shards = store.open_shards(tmp_path / "out")
    assert shards["real_mkv"].length == 4 and shards["one_frame"].length == 1


def _make_videos(folder: Path, n: int, frames: int = 24, size=(96, 72)):
    for i in range(n):
        path = folder / f"c{i % 3}" / f"vid{i:02d}.mkv"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, textured_frames(frames, size[1], size[0], seed=i))


def _kill_repeatedly(args, out: Path, times: int, seed: int, low: float, high: float) -> None:
    """Start `tsn ARGS --out OUT` and SIGKILL it (workers too) after a random delay, TIMES times."""
    rng = random.Random(seed)
    for _ in range(times):
        proc = subprocess.Popen([sys.executable, "-m", "tsn_pipeline.cli", *map(str, args), "--out", str(out)],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(low, high))
        os.killpg(proc.pid, signal.SIGKILL)      # the whole process group, as a preempted job
        proc.wait()
        for shard in out.glob("*-of-*.h5"):     # a kill never leaves a half shard under its name
            assert store.verify_shard(shard) == []


def test_repeated_sigkill_then_resume_is_byte_identical(tmp_path):
    _make_videos(tmp_path / "v", 12)
    args = ["decode", tmp_path / "v", "--size", "original", "--no-progress", "--workers", "2"]
    run_tsn(*args, "--out", tmp_path / "whole", check=0)
    out = tmp_path / "killed"
    _kill_repeatedly(args, out, times=4, seed=7, low=0.3, high=1.5)
    parts = sorted((out / ".frames-0-of-1.h5.parts").glob("*.h5"))
    if parts:   # as after a machine crash: a part renamed before its data reached the disk
        parts[0].write_bytes(parts[0].read_bytes()[: parts[0].stat().st_size // 2])
    run_tsn(*args, "--out", out, check=0)
    assert (out / "frames-0-of-1.h5").read_bytes() == (tmp_path / "whole" / "frames-0-of-1.h5").read_bytes()
    assert not list(out.glob("*.tmp")) and not (out / ".frames-0-of-1.h5.parts").exists()
    assert json.loads((out / "frames-0-of-1.failures.json").read_text()) == []


def test_two_processes_on_one_shard_never_corrupt_it(tmp_path):
    _make_videos(tmp_path / "v", 6)
    cmd = [sys.executable, "-m", "tsn_pipeline.cli", "decode", str(tmp_path / "v"), "--out",
           str(tmp_path / "out"), "--size", "original", "--no-progress"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(r[0] for r in results)
    assert codes in ([0, 0], [0, 1]), results
    for code, _, err in results:
        if code == 1:
            assert "another process is writing" in err
    assert store.verify_shard(tmp_path / "out" / "frames-0-of-1.h5") == []
    assert len(store.open_shards(tmp_path / "out")) == 6


def test_full_disk_names_the_path_and_leaves_no_shard(tmp_path, small_fs):
    _make_videos(tmp_path / "v", 6, frames=40, size=(128, 96))
    fs = small_fs("400k")
    proc = run_tsn("decode", tmp_path / "v", "--out", fs / "out", "--size", "original",
                   "--encoder", "opencv", "--quality", "100", "--no-progress")
    assert proc.returncode == 1
    assert "No space left on device" in proc.stderr and str(fs / "out") in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not list((fs / "out").glob("*.h5")) and not list((fs / "out").glob("*.h5.tmp"))


def test_read_only_output_folder_is_a_clear_error(tmp_path, small_fs):
    _make_videos(tmp_path / "v", 1, frames=2)
    fs = small_fs("1m", read_only=True)
    proc = run_tsn("decode", tmp_path / "v", "--out", fs / "out", "--no-progress")
    assert proc.returncode == 1
    assert "Read-only file system" in proc.stderr and str(fs / "out") in proc.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("limit,where", [(60_000, ".frames-0-of-1.h5.parts"),
                                         (600_000, "frames-0-of-1.h5")])
def test_write_error_via_file_size_limit(tmp_path, limit, where, workers):
    """The same failure path without mount privileges: writes past RLIMIT_FSIZE fail (EFBIG).
    At 60 kB a video's part cannot be written; at 600 kB every part is (about 365 kB each)
    but the shard is not, where h5py raises RuntimeError and used to crash on exit: both
    are one clean line naming the path, exit 1 (also with two worker threads, the second
    one still decoding when the first fails)."""
    import resource

    _make_videos(tmp_path / "v", 4, frames=30, size=(128, 96))

    def limit_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    proc = run_tsn("decode", tmp_path / "v", "--out", out, "--size", "original", "--encoder",
                   "opencv", "--quality", "100", "--no-progress", "--workers", workers,
                   preexec_fn=limit_size)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"Error: cannot write {'to ' if 'parts' in where else ''}"
                                        f"{out / where}: File too large"]
    assert not list(out.glob("*.h5")) and not list(out.glob("*.h5.tmp"))
    rerun = run_tsn("decode", tmp_path / "v", "--out", out, "--size", "original", "--encoder",
                    "opencv", "--quality", "100", "--no-progress", check=0)
    assert _summary(rerun)["ok"] == 4      # space is back: the run finishes what it had
    assert run_tsn("verify", out, check=0).stdout.endswith("ok\n")


def test_old_schema_and_other_settings_are_refused(tmp_path):
    _make_videos(tmp_path / "v", 2, frames=3)
    args = ["decode", tmp_path / "v", "--out", tmp_path / "out", "--no-progress"]
    run_tsn(*args, "--size", "32x24", check=0)
    shard = tmp_path / "out" / "frames-0-of-1.h5"
    with h5py.File(shard, "r+") as f:
        f.attrs["schema_version"] = 0
    proc = run_tsn(*args, "--size", "32x24")
    assert proc.returncode == 1 and "schema version 0" in proc.stderr
    with pytest.raises(store.StoreError, match="schema version 0"):
        store.open_shards(shard)


def test_unfinished_runs_are_never_read_as_results(tmp_path):
    _make_videos(tmp_path / "v", 2, frames=3)
    out = tmp_path / "out"
    run_tsn("decode", tmp_path / "v", "--out", out, "--size", "32x24", "--no-progress", check=0)
    (out / "frames-0-of-1.h5").rename(out / "frames-0-of-1.h5.tmp")
    with pytest.raises(store.StoreError, match="no frames files"):
        store.open_shards(out, kind="frames")
    with pytest.raises(store.StoreError, match="unfinished shard"):
        store.open_shards(out / "frames-0-of-1.h5.tmp")
    proc = run_tsn("info", out)
    assert proc.returncode == 1 and "no shard files" in proc.stderr


def test_flow_records_too_short_videos_and_resumes_identically_after_kills(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    for i in range(6):
        write_video(videos / f"vid{i}.mkv", textured_frames(8, 36, 48, seed=i, dx=1.5))
    write_video(videos / "single.mkv", textured_frames(1, 48, 64))
    run_tsn("decode", videos, "--out", tmp_path / "frames", "--size", "original",
            "--no-progress", check=0)
    args = ["flow", tmp_path / "frames", "--backend", "opencv", "--kind", "both", "--workers",
            "2", "--no-progress"]
    whole = run_tsn(*args, "--out", tmp_path / "whole")
    assert whole.returncode == 1 and "1 of 7 videos failed" in whole.stderr, whole.stderr
    reason = _failures(tmp_path / "whole", "flow")["single"]
    assert "single" in reason or "frame" in reason
    out = tmp_path / "killed"
    _kill_repeatedly(args, out, times=3, seed=3, low=0.5, high=1.5)
    rerun = run_tsn(*args, "--out", out)
    assert rerun.returncode == 1
    assert (out / "flow-0-of-1.h5").read_bytes() == (tmp_path / "whole" / "flow-0-of-1.h5").read_bytes()
    flows = store.open_shards(out, kind="flow")
    assert len(flows) == 6 and flows["vid0"].length == 7


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoints_never_execute_pickled_code(tmp_path):
    import pickle

    import torch

    from tsn_pipeline.model import load_checkpoint

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": _Payload(str(marker))}, evil)
    with pytest.raises((pickle.UnpicklingError, RuntimeError, ValueError)):
        load_checkpoint(evil)
    assert not marker.exists()


def _tiny_record(task):
    return frame_record(task.video_id, np.full((1, 8, 8, 3), len(task.video_id) * 10, np.uint8),
                        label=task.label, fmt="jpeg")


def test_damaged_part_after_a_machine_crash_is_redone(tmp_path):
    from tsn_pipeline import batch

    tasks = [batch.Task(v, "memory") for v in ("a", "bb", "ccc")]
    kw = dict(kind="frames", shard_index=0, num_shards=1, config={"x": 1}, tasks=tasks,
              process=_tiny_record, progress=False)
    batch.run_stage(out_dir=tmp_path / "whole", **kw)
    parts = tmp_path / "crashed" / ".frames-0-of-1.h5.parts"
    parts.mkdir(parents=True)
    (parts / "config.json").write_text(json.dumps({"x": 1}))
    batch.write_part(parts, _tiny_record(tasks[0]))
    (parts / "bb.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))   # renamed, data lost
    summary = batch.run_stage(out_dir=tmp_path / "crashed", **kw)
    assert summary.resumed == 1 and summary.ok == 3
    assert (tmp_path / "crashed" / "frames-0-of-1.h5").read_bytes() == \
        (tmp_path / "whole" / "frames-0-of-1.h5").read_bytes()
