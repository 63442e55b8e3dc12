"""`tsn train` end to end on real shards: overfitting, resume after a kill, clear errors.

Tiny settings throughout (resnet10, 32x32 input, a handful of videos) so the whole file
runs in well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shards import make_flow_shards, make_frame_shards, video_table

REPO = Path(__file__).resolve().parents[1]
TINY = ["--arch", "resnet10", "--input-size", "32", "--workers", "0", "--seed", "1", "--threads", "1",
        "--num-segments", "2"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_shards")
    rows = video_table(num_videos=4, num_classes=4, num_frames=10, val=2)
    make_frame_shards(root / "frames", rows)
    make_flow_shards(root / "flow", rows, kinds=("tvl1",))
    return root


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _history(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_overfits_real_clips_and_writes_the_run_folder(real_clips, tmp_path, cli_runner):
    from tsn_pipeline.model import load_checkpoint
    from tsn_pipeline.videolist import VideoItem, write_video_list_csv

    clips = sorted(p for p in real_clips.iterdir() if p.suffix in (".avi", ".mp4"))
    items = [VideoItem(p.stem, str(p), i, p.stem[:12], "train") for i, p in enumerate(clips)]
    write_video_list_csv(items, tmp_path / "list.csv")
    r = cli_runner("decode", tmp_path / "list.csv", "--out", tmp_path / "frames",
                   "--size", "48x36", "--fps", "15", "--no-progress")
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    r = cli_runner("train", "--frames", tmp_path / "frames", "--list", tmp_path / "list.csv",
                   "--modality", "rgb", *TINY, "--num-segments", "3", "--epochs", "60",
                   "--batch-size", str(len(items)), "--lr", "0.02", "--lr-steps", "40",
                   "--dropout", "0", "--out", run)
    assert r.exit_code == 0, r.output
    hist = _history(run)
    assert [h["epoch"] for h in hist] == list(range(1, 61))
    # from chance (1 of 5) to every training clip right in each of the last 5 epochs
    assert hist[0]["top1"] <= 0.4 and all(h["top1"] == 1.0 for h in hist[-5:])
    assert max(h["loss"] for h in hist[-5:]) < hist[0]["loss"] / 4
    assert hist[0]["lr"] == pytest.approx(0.02) and hist[-1]["lr"] == pytest.approx(0.002)
    assert (run / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, mcfg, tcfg = load_checkpoint(run / "checkpoint.pt")
    assert (mcfg.num_classes, mcfg.modality, mcfg.num_segments) == (len(items), "rgb", 3)
    assert tcfg["epochs"] == 60 and tcfg["batch_size"] == len(items) and not model.training
    assert tcfg["classes"] == [it.class_name for it in items]   # scoring maps labels by them
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["final"]["top1"] == 1.0 and summary["train_videos"] == len(items)


def test_flow_training_validates_and_keeps_best(synth, tmp_path, cli_runner):
    run = tmp_path / "flow"
    r = cli_runner("train", "--flow", synth / "flow", "--modality", "flow", *TINY,
                   "--new-length", "3", "--epochs", "3", "--batch-size", "4",
                   "--val-split", "test", "--workers", "1", "--out", run)
    assert r.exit_code == 0, r.output
    hist = _history(run)
    assert all("val_top1" in h and h["val_clips"] == 2 for h in hist)
    best = max(h["val_top1"] for h in hist)
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["best"] == best
    assert "val loss" in r.stderr and "epoch 3" in r.stderr
    # the plan comes first, once the data and model are ready
    assert r.stderr.splitlines()[0].startswith(
        "training resnet10 (flow) on cpu: 4 training videos, 2 for validation; 3 steps "
        "(1 per epoch) of batch 4"), r.stderr
    # --overwrite starts again: no stale best.pt or metrics from the first run
    r = cli_runner("train", "--flow", synth / "flow", "--modality", "flow", *TINY,
                   "--new-length", "3", "--iterations", "1", "--batch-size", "4",
                   "--out", run, "--overwrite", "--no-flip")
    assert r.exit_code == 0, r.output
    assert not (run / "best.pt").exists() and len(_history(run)) == 1
    # --no-flip is recorded, so scoring knows not to test mirrored crops
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert json.loads(ckpt["train_config"])["flip"] is False


def test_resume_after_kill_gives_the_same_weights(synth, tmp_path, cli_runner):
    args = ["train", "--frames", str(synth / "frames"), "--modality", "rgb", *TINY,
            "--epochs", "5", "--batch-size", "2", "--lr", "0.01", "--deterministic"]
    full = tmp_path / "full"
    r = cli_runner(*args, "--out", full)
    assert r.exit_code == 0, r.output

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "tsn_pipeline.cli", *args, "--out", str(killed)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not (killed / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    saved = torch.load(killed / "checkpoint.pt", weights_only=True)
    epoch = saved["epoch"]
    assert 1 <= epoch < 5, "the run finished before the kill: nothing left to resume"
    r = cli_runner("train", "--frames", synth / "frames", "--out", killed)   # no --resume
    assert r.exit_code == 1 and "--resume" in r.output
    r = cli_runner(*args, "--out", killed, "--resume")
    assert r.exit_code == 0, r.output
    assert f"resuming after step {saved['step']}" in r.stderr.splitlines()[0], r.stderr
    a, b = _weights(full / "checkpoint.pt"), _weights(killed / "checkpoint.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["loss"] for h in _history(full)] == [h["loss"] for h in _history(killed)]
    # epoch timings stay in metrics.jsonl across the resume, and out of the checkpoints: the
    # resumed run's checkpoint is the uninterrupted run's, byte for byte
    assert all(h["seconds"] > 0 and "clips_per_s" in h for h in _history(killed))
    assert (killed / "checkpoint.pt").read_bytes() == (full / "checkpoint.pt").read_bytes()
    r = cli_runner(*args, "--out", killed, "--resume", "--lr", "0.02")
    assert r.exit_code == 1 and "lr: 0.01 -> 0.02" in r.output


def test_nan_loss_stops_with_step_and_batch(synth, tmp_path, cli_runner):
    r = cli_runner("train", "--frames", synth / "frames", "--modality", "rgb", *TINY,
                   "--epochs", "4", "--batch-size", "4", "--lr", "1e12", "--clip-grad", "0",
                   "--out", tmp_path / "nan")
    assert r.exit_code == 1
    assert "loss is not finite" in r.output and "at step " in r.output and "batch 1" in r.output
    assert "vid0" in r.output


def test_clear_errors(synth, tmp_path, cli_runner):
    from tsn_pipeline.videolist import VideoItem, write_video_list_csv

    base = ["train", *TINY, "--epochs", "1", "--batch-size", "2", "--out", tmp_path / "e"]
    # label out of range
    r = cli_runner(*base, "--frames", synth / "frames", "--num-classes", "3")
    assert r.exit_code == 1 and "label 3, outside 0..2" in r.output
    # a listed video with no flow
    write_video_list_csv([VideoItem("vid00", "x.avi", 0, "c0", "train"),
                          VideoItem("ghost", "y.avi", 1, "c1", "train")], tmp_path / "l.csv")
    r = cli_runner(*base, "--flow", synth / "flow", "--modality", "flow", "--list",
                   tmp_path / "l.csv")
    assert r.exit_code == 1 and "ghost" in r.output and "no flow" in r.output
    # modality / shard mismatch: warped asked of tvl1-only shards; rgb without frame shards
    r = cli_runner(*base, "--flow", synth / "flow", "--modality", "warped")
    assert r.exit_code == 1 and "no 'warped' flow (shard holds ['tvl1'])" in r.output
    r = cli_runner(*base, "--flow", synth / "flow", "--modality", "rgb")
    assert r.exit_code == 1 and "--frames" in r.output
    r = cli_runner(*base, "--frames", synth / "flow")
    assert r.exit_code == 1 and "no frames files" in r.output
    r = cli_runner(*base, "--frames", synth / "flow" / "flow-0-of-1.h5")
    assert r.exit_code == 1 and "'flow' shard, expected 'frames'" in r.output
    # missing ImageNet weights, unsupported settings
    r = cli_runner(*base, "--frames", synth / "frames", "--pretrained", tmp_path / "no.pth")
    assert r.exit_code == 1 and "never downloads" in r.output
    r = cli_runner(*base, "--frames", synth / "frames", "--epochs", "1", "--iterations", "3")
    assert r.exit_code == 2 and "not both" in r.output
    r = cli_runner(*base, "--frames", synth / "frames", "--split", "val")
    assert r.exit_code == 1 and "splits there: ['test', 'train']" in r.output
    r = cli_runner(*base, "--frames", synth / "frames", "--val-split", "val")
    assert r.exit_code == 1 and "--val-split 'val': no videos" in r.output
    r = cli_runner(*base, "--frames", synth / "frames", "--sync-bn")
    assert r.exit_code == 1 and "CUDA" in r.output


def test_config_file_per_modality_defaults(synth, tmp_path, cli_runner):
    cfg = tmp_path / "p.toml"
    cfg.write_text('[train]\nbatch_size = 2\nlr = 0.02\n[train.flow]\nlr = 0.03\nnew_length = 2\n')
    r = cli_runner("--config", cfg, "train", "--flow", synth / "flow", "--modality", "flow",
                   *TINY, "--iterations", "1", "--out", tmp_path / "f")
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "f" / "train_config.json").read_text())
    assert saved["train"]["lr"] == 0.03 and saved["train"]["batch_size"] == 2
    assert saved["model"]["new_length"] == 2 and saved["train"]["iterations"] == 1
    r = cli_runner("--config", cfg, "train", "--frames", synth / "frames", "--modality", "rgb",
                   *TINY, "--iterations", "1", "--lr", "0.5", "--out", tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "train_config.json").read_text())
    assert r.exit_code == 0 and saved["train"]["lr"] == 0.5 and saved["model"]["new_length"] == 1


def test_rgbdiff_bf16_channels_last_iterations(synth, tmp_path, cli_runner):
    run = tmp_path / "diff"
    r = cli_runner("train", "--frames", synth / "frames", "--modality", "rgbdiff",
                   "--new-length", "2", *TINY, "--iterations", "3", "--batch-size", "2",
                   "--amp", "bf16", "--channels-last", "--out", run)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    # 4 videos / batch 2 = 2 steps per epoch: 3 iterations end inside epoch 2
    assert summary["steps"] == 3 and summary["epochs"] == 2
    hist = _history(run)
    assert [h["clips"] for h in hist] == [4, 2]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["model"]["base.conv1.weight"].shape[1] == 6     # 3 * new_length differences
    assert json.loads(ckpt["train_config"])["amp"] == "bf16"
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    # RGB difference trains on raw 0..1 values as tsn-pytorch (no mean/std); channels_last is
    # part of the model config that scoring rebuilds
    mcfg = json.loads(ckpt["model_config"])
    assert (mcfg["mean"], mcfg["std"], mcfg["channels_last"]) == ([0.0] * 3, [1.0] * 3, True)


def test_real_clips_decode_flow_then_train_warped(real_clips, tmp_path, cli_runner):
    """The stages' real outputs join: frames from `tsn decode`, TV-L1 + warped flow from
    `tsn flow` (OpenCV CPU, few iterations), then a warped-flow stream trains on them."""
    from tsn_pipeline.data import Sources, load_clip
    from tsn_pipeline.videolist import VideoItem, write_video_list_csv

    clips = sorted(p for p in real_clips.iterdir() if "wave" in p.name)
    items = [VideoItem(p.stem, str(p), i, f"c{i}", "train") for i, p in enumerate(clips)]
    write_video_list_csv(items, tmp_path / "list.csv")
    r = cli_runner("decode", tmp_path / "list.csv", "--out", tmp_path / "frames",
                   "--size", "48x36", "--fps", "10", "--no-progress")
    assert r.exit_code == 0, r.output
    r = cli_runner("flow", tmp_path / "frames", "--out", tmp_path / "flow", "--kind", "both",
                   "--backend", "opencv", "--iterations", "30", "--nscales", "3", "--warps", "2",
                   "--no-progress")
    assert r.exit_code == 0, r.output
    src = Sources.open(tmp_path / "frames", tmp_path / "flow")
    vid = items[0].video_id
    assert src.flow[vid].length == src.frames[vid].length - 1
    clip = load_clip(src, vid, "warped", [[0, 1, 2, 3, 4]])
    assert clip.shape == (1, 5, 2, 36, 48) and clip.dtype.name == "uint8"
    r = cli_runner("train", "--flow", tmp_path / "flow", "--list", tmp_path / "list.csv",
                   "--modality", "warped", *TINY, "--epochs", "2", "--batch-size", "3",
                   "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert [h["clips"] for h in _history(tmp_path / "run")] == [3, 3]


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_sgd_and_schedule_step_as_torch_optim_and_share_its_state(momentum):
    """train.SGD / MultiStepLR against torch.optim's: the same weights and lrs step by step,
    and the state_dict of either resumes the other."""
    import torch.nn.functional as F

    from tsn_pipeline.model import ModelConfig, build_model
    from tsn_pipeline.train import SGD, MultiStepLR

    cfg = ModelConfig(arch="resnet10", modality="flow", num_classes=3, input_size=32, dropout=0.0)
    torch.manual_seed(0)
    first = build_model(cfg).state_dict()
    x, y = torch.randn(2, 2, 10, 32, 32), torch.tensor([0, 2])

    def make(kind, state=None):
        m = build_model(cfg)
        m.load_state_dict(first)
        groups = [{"params": g["params"], "lr": 0.1 * g["lr_mult"], "name": g["name"],
                   "weight_decay": 1e-3 * g["decay_mult"]} for g in m.param_groups()]
        if kind == "torch":
            opt = torch.optim.SGD(groups, lr=0.1, momentum=momentum)
            return m, opt, torch.optim.lr_scheduler.MultiStepLR(opt, [2, 3, 3], 0.1)
        opt = SGD(groups, lr=0.1, momentum=momentum)
        return m, opt, MultiStepLR(opt, [2, 3, 3], 0.1)

    def step(m, opt, sched, n=1):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()
            sched.step()
        return sched.get_last_lr()

    def same(a, b):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, w), k

    ref, ours = make("torch"), make("ours")
    for _ in range(4):
        assert step(*ours) == step(*ref)
        same(ref[0], ours[0])
    g = ours[1].param_groups[0]
    assert g["lr"] == ref[1].param_groups[0]["lr"] == pytest.approx(g["initial_lr"] * 1e-3)
    # either one's state resumes the other (a checkpoint of an earlier version resumes here)
    for (m, opt, sched), (_, src, src_sched) in ((make("ours"), ref), (make("torch"), ours)):
        m.load_state_dict(ref[0].state_dict())
        opt.load_state_dict(src.state_dict())
        sched.load_state_dict(src_sched.state_dict())
        step(m, opt, sched, 2)
    step(*ref, n=2)
    step(*ours, n=2)
    same(ref[0], ours[0])
