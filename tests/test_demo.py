"""Demo data generator (known motion, real files) and the end-to-end demo pipeline."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from tsn_pipeline.datasets import ucf101
from tsn_pipeline.demo import CLASSES, DemoConfig, make_demo_dataset, render_video
from tsn_pipeline.videoio import read_video

SMALL = DemoConfig(groups=2, clips_per_group=1, test_groups=1, frames=8, width=64, height=48)


def _render(ci: int, cfg: DemoConfig, seed: int = 0):
    group = np.random.default_rng([seed, ci, 1])
    clip = np.random.default_rng([seed, ci, 1, 1, 1])
    return render_video(ci, group, clip, cfg)


@pytest.mark.parametrize("ci", range(len(CLASSES)))
def test_rendered_motion_matches_ground_truth(ci):
    """Farneback flow (OpenCV) inside the object and on the background recovers the recorded
    velocities, and their difference is the class direction."""
    cfg = replace(DemoConfig(), noise=0.0, frames=10)
    frames, meta = _render(ci, cfg)
    assert frames.shape == (10, 72, 96, 3) and frames.dtype == np.uint8
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    size = meta["object_size"]
    obj_v, bg_v = [], []
    for t in range(3, 6):
        flow = cv2.calcOpticalFlowFarneback(gray[t], gray[t + 1], None, 0.5, 3, 15, 5, 5, 1.2, 0)
        x0, y0 = np.array(meta["object_start"]) + np.array(meta["object_image_velocity"]) * t
        inside = np.zeros(gray[0].shape, bool)
        xa, ya = int(x0 + size * 0.3), int(y0 + size * 0.3)
        inside[max(ya, 0):max(ya + int(size * 0.4), 0), max(xa, 0):max(xa + int(size * 0.4), 0)] = True
        far = np.ones(gray[0].shape, bool)
        far[max(int(y0) - 8, 0):int(y0) + size + 8, max(int(x0) - 8, 0):int(x0) + size + 8] = False
        far[:8], far[-8:], far[:, :8], far[:, -8:] = False, False, False, False
        if inside.sum() > 4:
            obj_v.append(np.median(flow[inside], axis=0))
        bg_v.append(np.median(flow[far], axis=0))
    bg = np.median(bg_v, axis=0)
    obj = np.median(obj_v, axis=0)
    np.testing.assert_allclose(bg, meta["background_velocity"], atol=0.25)
    np.testing.assert_allclose(obj, meta["object_image_velocity"], atol=0.4)
    rel = obj - bg
    direction = np.array(CLASSES[ci][1])
    if direction.any():
        assert np.dot(rel, direction) > 0.8 and abs(rel[0] * direction[1] - rel[1] * direction[0]) < 0.5
    else:
        assert np.hypot(*rel) < 0.4
    assert meta["class_name"] == CLASSES[ci][0]


def test_a_group_shares_its_appearance_and_clips_differ_in_motion():
    cfg = replace(DemoConfig(), noise=0.0)
    metas = [render_video(2, np.random.default_rng([0, 2, 5]), np.random.default_rng([0, 2, 5, c, 1]),
                          cfg)[1] for c in (1, 2)]
    assert metas[0]["object_size"] == metas[1]["object_size"]
    assert metas[0]["background_velocity"] != metas[1]["background_velocity"]
    # the class fixes the direction of the relative motion only (MoveUp: x = 0, y < 0)
    for m in metas:
        vx, vy = m["object_velocity"]
        assert vx == 0 and -1.8 <= vy <= -1.2


def test_make_demo_dataset_writes_real_videos_and_ucf101_splits(tmp_path):
    cfg = SMALL
    summary = make_demo_dataset(tmp_path / "demo", cfg)
    assert (summary["videos"], summary["train"], summary["test"]) == (10, 5, 5)
    vl = ucf101(tmp_path / "demo", split=1)
    assert vl.classes == tuple(c for c, _ in CLASSES)
    assert {it.split for it in vl.items} == {"train", "test"}
    assert all("_g01_" in it.video_id for it in vl.items if it.split == "test")
    motion = json.loads((tmp_path / "demo" / "motion.json").read_text())
    assert sorted(motion["videos"]) == sorted(it.video_id for it in vl.items)
    item = vl.items[0]
    frames = read_video(item.path)
    assert frames.shape == (8, 48, 64, 3)
    # the decoded file is the rendered clip up to mpeg4 loss
    ci, g, c = item.label, 1, 1
    rendered, _ = render_video(ci, np.random.default_rng([cfg.seed, ci, g]),
                               np.random.default_rng([cfg.seed, ci, g, c, 1]), cfg)
    gray = lambda a: np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in a]).astype(int)  # noqa: E731
    assert np.abs(gray(frames) - gray(rendered)).mean() < 3.5      # measured: 2.4 grey levels
    # deterministic, rerun is a no-op, other settings are refused
    assert make_demo_dataset(tmp_path / "demo", cfg)["skipped"] is True
    with pytest.raises(FileExistsError, match="other settings"):
        make_demo_dataset(tmp_path / "demo", replace(cfg, seed=1))
    again = make_demo_dataset(tmp_path / "demo2", cfg)
    assert again["skipped"] is False
    assert (tmp_path / "demo2" / "motion.json").read_text() == \
        (tmp_path / "demo" / "motion.json").read_text()


@pytest.mark.parametrize("kwargs,message", [
    ({"test_groups": 2, "groups": 2}, "test_groups 2 must be in 1..groups-1"),
    ({"width": 63}, "must be even"),
    ({"num_classes": 6}, "num_classes 6 outside 2..5"),
    ({"pan_speed": (2.0, 1.0)}, "must be (low, high)"),
])
def test_demo_config_validation(kwargs, message):
    with pytest.raises(ValueError) as err:
        DemoConfig(**kwargs)
    assert message in str(err.value)


SMALL_DEMO_TOML = """
[make-demo-data]
num_classes = 3
groups = 3
clips_per_group = 2
test_groups = 1
frames = 10
size = "64x48"
codec = "mpeg4"

[make-list]
split = 1

[decode]
size = "original"

[flow]
kind = "both"
bound = 5.0
backend = "opencv"
iterations = 30
nscales = 2
warps = 1
median = "0"

[train]
arch = "resnet10"
input_size = 32
num_segments = 2
batch_size = 6
epochs = 1
partial_bn = false
workers = 0
device = "cpu"

[train.flow]
new_length = 3

[train.warped]
new_length = 3

[score]
num_snippets = 2
crops = "1"
device = "cpu"
"""


@pytest.mark.slow
def test_make_demo_end_to_end_small(tmp_path):
    """`make demo` typed as the README has it, from the root of a copy of the repository
    (relative default OUT=out/demo, the default pipelines/demo.toml), on an 18-video version
    of the demo: every stage through make and the CLI, the same ids at every stage, and a
    second `make` has nothing left to do. (.ci/run also runs the full `make demo` in a fresh
    clone with its own install.)"""
    import shutil
    import subprocess
    import sys

    from conftest import REPO
    from tsn_pipeline import store
    from tsn_pipeline.videolist import load_video_list

    assert shutil.which("make"), "GNU make is needed (apt-get install make)"
    bin_dir = Path(sys.executable).parent            # the environment running the tests
    assert (bin_dir / "tsn").is_file(), f"no tsn entry point in {bin_dir} (make install)"
    # a copy of what a clone holds: the tracked files (and new ones not ignored) as they are
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    repo = tmp_path / "tsn-pipeline"
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, repo / rel)
    (repo / "pipelines" / "demo.toml").write_text(SMALL_DEMO_TOML)       # the small version
    # BIN: this environment's tsn; -o: use it as installed (never re-run pip from a test)
    args = ["make", f"BIN={bin_dir}", "-o", f"{bin_dir}/tsn", "WORKERS=1"]
    proc = subprocess.run(args + ["demo"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fused" in proc.stdout and "demo outputs in out/demo" in proc.stdout
    out = repo / "out" / "demo"
    videos = load_video_list(out / "lists" / "split1.csv")
    ids = sorted(it.video_id for it in videos.items)
    test_ids = sorted(it.video_id for it in videos.items if it.split == "test")
    assert len(ids) == 18 and len(test_ids) == 6
    motion = json.loads((out / "data" / "motion.json").read_text())
    assert sorted(motion["videos"]) == ids
    frames = store.open_shards(out / "frames", "frames")
    flow = store.open_shards(out / "flow", "flow")
    assert frames.ids == flow.ids == ids
    assert all(flow[v].length == frames[v].length - 1 == 9 for v in ids)
    assert flow.config()["kinds"] == ["tvl1", "warped"]
    split = out / "split1"
    for m in ("rgb", "flow", "warped"):
        summary = json.loads((split / f"train-{m}.json").read_text().strip().splitlines()[-1])
        assert summary["train_videos"] == 12
        assert (split / f"train-{m}" / "checkpoint.pt").is_file()
        assert (split / f"train-{m}" / "metrics.png").is_file()
        scores = store.open_shards(split / f"scores-{m}", "scores")
        assert scores.ids == test_ids
        assert [scores[v].label for v in test_ids] == [
            next(it.label for it in videos.items if it.video_id == v) for v in test_ids]
    fused = json.loads((split / "fused" / "fused.json").read_text())
    assert fused["num_videos"] == 6 and not fused["dropped"]
    assert sorted(fused["weights"]) == ["flow", "rgb", "warped"]
    predictions = (split / "fused" / "predictions.csv").read_text().splitlines()
    assert predictions[0].startswith("video_id,label,fused")
    assert sorted(line.split(",")[0] for line in predictions[1:]) == test_ids
    # nothing left to do: every file target is up to date
    again = subprocess.run(args + ["-q", "demo-all"], cwd=repo, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
