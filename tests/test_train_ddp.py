"""DDP: 2 gloo processes on CPU (torchrun) take the same steps as 1 process with the same
global batch. BatchNorm is frozen and dropout off, so a sample's gradient does not depend on
which process's batch it sits in (PyTorch has no CPU SyncBatchNorm; see docs/TRAINING.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shards import make_frame_shards, video_table

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(tmp_path, cli_runner):
    make_frame_shards(tmp_path / "frames", video_table(num_videos=8, num_classes=4, num_frames=9))
    args = ["train", "--frames", str(tmp_path / "frames"), "--modality", "rgb",
            "--arch", "resnet10", "--input-size", "32", "--num-segments", "2", "--workers", "0",
            "--threads", "1", "--freeze-bn", "--dropout", "0", "--batch-size", "4",
            "--epochs", "2", "--lr", "0.01", "--seed", "3", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tsn_pipeline.cli", *args, "--out", str(tmp_path / "ddp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["steps"] == 4

    r = cli_runner(*args, "--out", tmp_path / "single")
    assert r.exit_code == 0, r.output
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    one = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)
    assert ddp["step"] == one["step"] == 4
    for k, v in one["model"].items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    # the run did move the weights (so the comparison is not trivially of two initial states)
    h_ddp = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    h_one = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [h["clips"] for h in h_ddp] == [h["clips"] for h in h_one] == [8, 8]
    for a, b in zip(h_ddp, h_one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert h_one[1]["loss"] != h_one[0]["loss"]
