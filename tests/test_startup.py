"""Start-up: the commands that need no compiler (train, score, features, flow with every CPU
backend, its compiled torch loop included: C kernels, see flow/native.py) import neither
torchvision nor torch's compiler (torch._dynamo / torch._inductor), whose imports cost seconds
before the first work (bench/startup.py measures it)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shards import make_frame_shards, video_table

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from tsn_pipeline.cli import main

frames, out = sys.argv[1:]
def tsn(*args):
    main([str(a) for a in args], standalone_mode=False)
tsn("train", "--frames", frames, "--arch", "resnet18", "--input-size", "32", "--iterations",
    "2", "--lr-steps", "1", "--batch-size", "2", "--num-segments", "1", "--workers", "0",
    "--out", out + "/run")
tsn("score", out + "/run/checkpoint.pt", "--frames", frames, "--out", out + "/scores",
    "--num-snippets", "1", "--crops", "1", "--no-progress")
tsn("features", out + "/run/checkpoint.pt", "--frames", frames, "--out", out + "/features",
    "--stride", "8", "--no-progress")
tsn("flow", frames, "--out", out + "/flow", "--backend", "opencv", "--workers", "1",
    "--no-progress")
tsn("flow", frames, "--out", out + "/flow-eager", "--backend", "torch", "--no-compile",
    "--workers", "1", "--no-progress")
tsn("flow", frames, "--out", out + "/flow-compiled", "--backend", "torch", "--device", "cpu",
    "--workers", "1", "--no-progress")
heavy = lambda: sorted(m for m in ("torchvision", "torch._dynamo", "torch._inductor")
                       if m in sys.modules)
print("after the commands:", heavy())
import torch  # the check itself: torch.optim's optimizers import the compiler
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
print("after torch.optim.SGD:", heavy())
"""


def test_commands_that_do_not_compile_import_no_compiler_nor_torchvision(tmp_path):
    frames = make_frame_shards(tmp_path / "frames", video_table(num_videos=2, num_frames=4))
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(frames), str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "after the commands: []" in lines, run.stdout[-2000:]
    assert any(ln.startswith("after torch.optim.SGD:") and "torch._dynamo" in ln for ln in lines)
