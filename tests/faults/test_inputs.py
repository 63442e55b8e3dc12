"""Careless inputs and faults that must be one clear line (exit 1, or 2 for a bad option):
damaged checkpoints, checkpoints of other classes or models, two trainings in one folder,
read-only run folders, devices that do not exist, NaN scores, odd sizes and names, unknown
config keys, damaged images in training, rawframes list round trips."""
from __future__ import annotations

import json
import os
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
from tsn_pipeline import batch, score, store
from tsn_pipeline.videoio import write_video

pytestmark = pytest.mark.faults

TINY = ["--arch", "resnet10", "--input-size", "32", "--workers", "0", "--threads", "1",
        "--num-segments", "2", "--batch-size", "2", "--split", ""]
DECODE = ["--size", "40x32", "--no-progress"]


def _videos(folder: Path, classes=("a", "b"), per_class: int = 2, frames: int = 6):
    for c, cls in enumerate(classes):
        (folder / cls).mkdir(parents=True)
        for k in range(per_class):
            write_video(folder / cls / f"{cls}{k}.avi",
                        textured_frames(frames, 32, 40, seed=10 * c + k), fps=25)
    return folder


def _one_line_error(result, *fragments):
    """exit 1, one line ``Error: ...`` holding every fragment; no traceback, no 'Aborted!'."""
    out = result.output
    assert result.exit_code == 1, out
    assert "Traceback" not in out and "Aborted!" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, out
    for f in fragments:
        assert f in errors[0], errors[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cli_runner_module):
    """A decoded 2-class folder, a 3-class one, and a 1-iteration resnet10 run on the first."""
    root = tmp_path_factory.mktemp("inputs")
    cli = cli_runner_module
    assert cli("decode", _videos(root / "v2"), "--out", root / "frames", *DECODE).exit_code == 0
    assert cli("decode", _videos(root / "v3", ("a", "b", "c"), per_class=1), "--out",
               root / "frames3", *DECODE).exit_code == 0
    result = cli("train", "--frames", root / "frames", *TINY, "--iterations", "1",
                 "--out", root / "run")
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def cli_runner_module():
    from click.testing import CliRunner

    from tsn_pipeline import cli

    def invoke(*args):
        return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)

    return invoke


# -- checkpoints ------------------------------------------------------------------------------
def _bad_checkpoint(kind: str, good: Path, path: Path) -> str:
    """Write a bad checkpoint of ``kind``; return what the message must say."""
    import torch

    if kind == "empty":
        path.write_bytes(b"")
        return "empty file (0 bytes), expected a checkpoint of `tsn train`"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:4000])
        return "damaged or truncated checkpoint (4,000 bytes; torch: "
    if kind == "text":
        path.write_text("not a checkpoint\n")
        return "not a tsn-pipeline checkpoint (17 bytes that torch cannot load"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1), "fc.bias": torch.zeros(2)}, path)
    return ("expected format 'tsn-pipeline-checkpoint-1', found a plain state dict of 2 "
            "tensors, e.g. ImageNet weights: give those to `tsn train --pretrained`")


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "state_dict"])
def test_bad_checkpoints_are_one_line_errors(run, tmp_path, cli_runner, kind):
    good = run / "run" / "checkpoint.pt"
    bad = tmp_path / "bad.pt"
    expected = _bad_checkpoint(kind, good, bad)
    _one_line_error(cli_runner("score", bad, "--frames", run / "frames", "--out",
                               tmp_path / "scores", "--no-progress"), str(bad), expected)
    _one_line_error(cli_runner("features", bad, "--frames", run / "frames", "--out",
                               tmp_path / "features", "--no-progress"), str(bad), expected)
    assert not list(tmp_path.glob("*/*.h5"))
    resumed = tmp_path / "run"
    shutil.copytree(run / "run", resumed)
    shutil.copy(bad, resumed / "checkpoint.pt")
    _one_line_error(cli_runner("train", "--frames", run / "frames", *TINY, "--iterations", "2",
                               "--out", resumed, "--resume"),
                    str(resumed / "checkpoint.pt"), expected)
    assert (resumed / "checkpoint.pt").read_bytes() == bad.read_bytes()
    assert (resumed / "metrics.jsonl").read_bytes() == (run / "run" / "metrics.jsonl").read_bytes()


def test_checkpoints_of_other_classes_or_models_are_refused(run, tmp_path, cli_runner):
    ckpt = run / "run" / "checkpoint.pt"        # trained on classes a, b (it records them)
    _one_line_error(cli_runner("score", ckpt, "--frames", run / "frames3", "--out",
                               tmp_path / "scores", "--no-progress"),
                    f"{ckpt} was trained on the classes ['a', 'b'], which do not include 'c' "
                    "(e.g. 'c0')")
    assert not (tmp_path / "scores").exists() or not list((tmp_path / "scores").glob("*.h5"))
    # videos of the classes it knows are scored, their labels in the model's class order
    lst = tmp_path / "ab.csv"
    lst.write_text("video_id,path,label,class_name\na0,a0.avi,0,a\nb0,b0.avi,1,b\n")
    res = cli_runner("score", ckpt, "--frames", run / "frames3", "--list", lst, "--out",
                     tmp_path / "scores", "--no-progress")
    assert res.exit_code == 0, res.output
    # a checkpoint without class names (as written before they were recorded): the count
    # of the shards' class list decides
    import torch

    old = torch.load(ckpt, weights_only=True)
    cfg = json.loads(old["train_config"])
    old["train_config"] = json.dumps(dict(cfg, classes=None))
    torch.save(old, tmp_path / "unnamed.pt")
    _one_line_error(cli_runner("score", tmp_path / "unnamed.pt", "--frames", run / "frames3",
                               "--list", lst, "--out", tmp_path / "scores2", "--no-progress"),
                    f"{tmp_path / 'unnamed.pt'} was trained for 2 classes, but the input shards "
                    f"in {run / 'frames3'} has 3 classes (a, b, c, ...)")
    resumed = tmp_path / "run"
    shutil.copytree(run / "run", resumed)
    before = (resumed / "checkpoint.pt").read_bytes()
    tiny18 = [a if a != "resnet10" else "resnet18" for a in TINY]
    _one_line_error(cli_runner("train", "--frames", run / "frames", *tiny18, "--iterations", "1",
                               "--out", resumed, "--resume"),
                    "was trained with another model (arch: 'resnet10' -> 'resnet18')")
    _one_line_error(cli_runner("train", "--frames", run / "frames3", *TINY, "--iterations", "1",
                               "--out", resumed, "--resume"),
                    "was trained with other settings", "num_classes: 2 -> 3")
    assert (resumed / "checkpoint.pt").read_bytes() == before


# -- training runs -------------------------------------------------------------------------
@pytest.mark.slow
def test_two_trainings_into_one_folder_the_second_refuses(run, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "tsn_pipeline.cli", "train", "--frames", str(run / "frames"), *TINY,
         "--iterations", "100000", "--lr", "0.01", "--out", str(out)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out / ".train.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lock.read_text().startswith(f"pid {first.pid} on ")
        second = run_tsn("train", "--frames", run / "frames3", *TINY, "--iterations", "1",
                         "--lr", "0.02", "--out", out, "--overwrite")
        assert second.returncode == 1, second.stderr
        assert (f"another process is writing the training run {out} (pid {first.pid} on "
                in second.stderr)
        assert "Traceback" not in second.stderr
        assert first.poll() is None                     # the first run goes on
        config = out / "train_config.json"
        deadline = time.monotonic() + 60
        while not config.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(config.read_text())["train"]["lr"] == 0.01   # the first's, not mixed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_read_only_run_folder_is_a_clear_error(run, small_fs, cli_runner):
    fs = small_fs("1m", read_only=True)
    _one_line_error(cli_runner("train", "--frames", run / "frames", *TINY, "--iterations", "1",
                               "--out", fs / "run"),
                    f"cannot create the run folder {fs / 'run'}: Read-only file system")
    _one_line_error(cli_runner("train", "--frames", run / "frames", *TINY, "--iterations", "1",
                               "--out", fs),
                    f"cannot create lock file {fs / '.train.lock'}: Read-only file system")
    assert not list(fs.iterdir())


@pytest.mark.parametrize("device,message", [
    ("tpu", "'tpu' is not a device; use auto, cpu, cuda or cuda:N"),
    ("cuda:7", "'cuda:7': "),
])
def test_devices_that_do_not_exist_are_bad_parameters(run, tmp_path, cli_runner, device,
                                                      message):
    import torch

    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    ckpt = run / "run" / "checkpoint.pt"
    for args in (("train", "--frames", run / "frames", *TINY, "--out", tmp_path / "t"),
                 ("score", ckpt, "--frames", run / "frames", "--out", tmp_path / "s"),
                 ("features", ckpt, "--frames", run / "frames", "--out", tmp_path / "f"),
                 ("flow", run / "frames", "--out", tmp_path / "fl")):
        result = cli_runner(*args, "--device", device)
        assert result.exit_code == 2, result.output
        assert "Invalid value for --device: " + message in result.output
    assert not list(tmp_path.iterdir())


# -- fuse -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scores_name_the_file_and_video(tmp_path, cli_runner, bad):
    table = {"v1": [[1.0, 0.0], [0.0, 1.0]], "v2": [[0.5, bad], [0.0, 1.0]]}
    for modality in ("rgb", "flow"):
        tasks = [batch.Task(v, "hand", 0) for v in table]

        def scores(todo, modality=modality):
            for t in todo:
                s = np.asarray(table[t.video_id], np.float32)
                if modality == "rgb":
                    s = np.nan_to_num(s, nan=0.0, posinf=0.0)
                yield t, score.scores_record(t.video_id, s[:, None, :], label=0,
                                             modality=modality)

        batch.run_batched_stage(kind="scores", out_dir=tmp_path / modality, shard_index=0,
                        num_shards=1, config={"modality": modality}, tasks=tasks,
                        batch_process=scores, progress=False,
                        root_extra={"modality": modality})
    result = cli_runner("fuse", "--scores", f"rgb={tmp_path / 'rgb'}", "--scores",
                        f"flow={tmp_path / 'flow'}", "--out", tmp_path / "fused")
    _one_line_error(result, f"{tmp_path / 'flow' / 'scores-0-of-1.h5'}: video 'v2' has a "
                            f"non-finite score ({bad} at snippet 0)")
    assert not (tmp_path / "fused").exists() or not list((tmp_path / "fused").iterdir())


# -- small inputs ---------------------------------------------------------------------------
def test_videos_under_10_px_decode(tmp_path, cli_runner):
    frames = textured_frames(4, 6, 8)
    (tmp_path / "v").mkdir()
    write_video(tmp_path / "v" / "tiny.avi", frames, fps=25)
    result = cli_runner("decode", tmp_path / "v", "--out", tmp_path / "out", "--size",
                        "original", "--encoder", "opencv", "--no-progress")
    assert result.exit_code == 0, result.output
    shards = store.open_shards(tmp_path / "out")
    entry = shards["tiny"]
    assert (entry.length, entry.attrs["width"], entry.attrs["height"]) == (4, 8, 6)
    assert shards.read_frames("tiny", [0]).shape == (1, 6, 8, 3)
    shards.close()


def test_a_file_name_with_a_leading_space_does_not_stop_the_folder(tmp_path, cli_runner):
    (tmp_path / "v").mkdir()
    for i, name in enumerate([" lead.avi", "ok.avi", "trail .avi", "lead.avi"]):
        write_video(tmp_path / "v" / name, textured_frames(3, 24, 32, seed=i), fps=25)
    result = cli_runner("decode", tmp_path / "v", "--out", tmp_path / "out", *DECODE)
    assert result.exit_code == 1                     # one duplicate id, the rest stored
    shards = store.open_shards(tmp_path / "out")
    assert shards.ids == ["lead", "ok", "trail"]
    assert shards["lead"].attrs["source"] == str(tmp_path / "v" / " lead.avi")
    shards.close()
    failures = json.loads((tmp_path / "out" / "frames-0-of-1.failures.json").read_text())
    assert [(f["video_id"], f["source"]) for f in failures] == [
        ("lead", str(tmp_path / "v" / "lead.avi"))]
    assert "duplicate video id 'lead'" in failures[0]["reason"]


def test_unknown_config_keys_are_errors_naming_key_and_section(tmp_path, cli_runner, make_video):
    make_video("v/a.avi", n=2)
    for text, message in [
            ("[decode]\nsizes = '32x24'\n", "[decode] key 'sizes' is not an option of tsn decode"),
            ("[train.rgb]\nnum-segments = 3\n",
             "[train.rgb] key 'num-segments' is not an option of tsn train; write 'num_segments'"),
            ("workers = 2\n", "keys ['workers'] are outside a [command] section"),
            ("[decodes]\nsize = '32x24'\n", "sections ['decodes'] name no command")]:
        cfg = tmp_path / "p.toml"
        cfg.write_text(text)
        result = cli_runner("--config", cfg, "decode", tmp_path / "v", "--out", tmp_path / "out",
                            "--no-progress")
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert not (tmp_path / "out").exists()
    cfg.write_text(f"[decode]\nout = '{tmp_path / 'by-option-name'}'\nsize = '32x24'\n")
    result = cli_runner("--config", cfg, "decode", tmp_path / "v", "--no-progress")
    assert result.exit_code == 0, result.output     # an option's own name (--out) works too
    assert (tmp_path / "by-option-name" / "frames-0-of-1.h5").is_file()
    for name in ("ucf101", "hmdb51", "demo", "demo-tiny", "template"):   # shipped settings load
        result = cli_runner("--config", REPO / "pipelines" / f"{name}.toml", "decode", "--help")
        assert result.exit_code == 0, result.output


def test_workers_above_the_cores_are_capped_with_a_warning(tmp_path, make_video):
    make_video("v/a.avi", n=2)
    cores = len(os.sched_getaffinity(0))
    proc = run_tsn("decode", tmp_path / "v", "--out", tmp_path / "out", *DECODE, "--workers",
                   cores * 50, check=0)
    assert (f"--workers {cores * 50} is more than the {cores} cores this process may use; "
            f"using {cores}") in proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["ok"] == 1


def test_a_corrupt_image_in_training_names_the_video_and_shard(run, tmp_path, cli_runner):
    frames = tmp_path / "frames"
    shutil.copytree(run / "frames", frames)
    shard = frames / "frames-0-of-1.h5"
    with h5py.File(shard, "r+") as f:        # zero the bytes of the images 1.. of a0: frame 0
        rgb = f["videos/a0/rgb"]             # (read up front) is whole, the loader meets the rest
        data = rgb[...]
        data[f["videos/a0/rgb_offsets"][1]:] = 0
        rgb[...] = data
    for workers in ("0", "2"):
        args = [a if a != "0" or i == 0 or TINY[i - 1] != "--workers" else workers
                for i, a in enumerate(TINY)]
        result = cli_runner("train", "--frames", frames, *args, "--iterations", "2",
                            "--out", tmp_path / f"run{workers}")
        _one_line_error(result, f"{shard}: video 'a0' (rgb, items ",
                        "cannot be read: undecodable image", "check the shard with `tsn verify`")
        assert "items 0..0" not in result.output     # met in training, not in the first check
        assert not (tmp_path / f"run{workers}" / "checkpoint.pt").exists()


def test_rawframes_list_round_trip_keeps_ids_with_spaces(tmp_path, cli_runner):
    (tmp_path / "v" / "cls").mkdir(parents=True)
    for i, name in enumerate(["my clip 2", "plain"]):
        write_video(tmp_path / "v" / "cls" / f"{name}.avi",
                    textured_frames(3, 24, 32, seed=i), fps=25)
    assert cli_runner("decode", tmp_path / "v", "--out", tmp_path / "frames",
                      *DECODE).exit_code == 0
    lst = tmp_path / "list.txt"
    result = cli_runner("export-rawframes", "--frames", tmp_path / "frames", "--out",
                        tmp_path / "raw", "--list-out", lst, "--no-progress")
    assert result.exit_code == 0, result.output
    assert lst.read_text() == "my clip 2 3 0\nplain 3 0\n"
    result = cli_runner("import-rawframes", tmp_path / "raw", "--list", lst, "--frames-out",
                        tmp_path / "again", "--no-progress")
    assert result.exit_code == 0, result.output
    a, b = store.open_shards(tmp_path / "frames"), store.open_shards(tmp_path / "again")
    assert a.ids == b.ids == ["my clip 2", "plain"]
    for vid in a.ids:
        n = a[vid].length
        assert b[vid].length == n and b[vid].label == a[vid].label == 0
        assert a.read_encoded(vid, "rgb", range(n)) == b.read_encoded(vid, "rgb", range(n))
    a.close()
    b.close()
