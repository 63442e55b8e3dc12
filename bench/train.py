"""Benchmark: is the input pipeline fast enough to feed TSN training?

Measures, on the same machine and run:
- loader: clips/s of the training DataLoader alone (HDF5 shards of 340x256 JPEG frames ->
  segment sampling -> multi-scale corner crop -> 224x224 -> flip -> normalised tensors), with
  ``--workers`` worker processes;
- model: clips/s of the training step alone (forward, backward, SGD step on random input of
  the same shape), resnet18 on CPU;
- ratio loader / model (goal: >= 2, so input is never the bottleneck).

The GPU benchmark (``--gpu``) is one command for a GPU machine: resnet50, bf16 autocast,
channels_last, batch 32 x 3 segments; without CUDA it falls back to the CPU (use ``--quick``
there). Writes bench/results/train.json (or train_gpu.json) with machine facts.

    python bench/train.py                  # CPU: resnet18, batch 8 x 3 segments, 2 workers
    python bench/train.py --quick          # fewer videos and steps
    python bench/train.py --gpu            # GPU machine: resnet50, bf16, batch 32 x 3
    python bench/train.py --frames DIR     # your own frame shards instead of synthetic ones
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import write_result  # noqa: E402


def _synthetic_record(task):
    """A 340x256 video of smooth moving texture (JPEG q95, like `tsn decode`)."""
    import cv2

    from tsn_pipeline import store

    rng = np.random.default_rng(task.meta["seed"])
    n = task.meta["frames"]
    tex = cv2.resize(rng.random((80, 120, 3)).astype(np.float32), (480, 320),
                     interpolation=cv2.INTER_CUBIC)
    tex = (255 * (tex - tex.min()) / (np.ptp(tex) + 1e-6)).astype(np.uint8)
    jpegs = []
    for t in range(n):
        x, y = (2 * t) % 120, t % 60
        jpegs.append(store.encode_image(np.ascontiguousarray(tex[y:y + 256, x:x + 340]), "jpeg", 95))
    return store.VideoRecord(task.video_id, attrs={
        "num_frames": n, "fps": 25.0, "height": 256, "width": 340, "label": task.label,
        "class_name": f"c{task.label}", "split": "train"}, streams={"rgb": jpegs})


def make_shards(out: Path, videos: int, frames: int, workers: int) -> Path:
    from tsn_pipeline import batch

    tasks = [batch.Task(f"bench{i:04d}", "", i % 10, {"seed": i, "frames": frames})
             for i in range(videos)]
    s = batch.run_stage(kind="frames", out_dir=out, shard_index=0, num_shards=1,
                        config={"bench": "train", "frames": frames}, tasks=tasks,
                        process=_synthetic_record, workers=workers, progress=False,
                        root_extra={"classes": [f"c{i}" for i in range(10)]})
    if s.failed:
        raise RuntimeError(f"could not make benchmark shards: {s.failures[:2]}")
    return out


def bench_loader(frames: Path, batch: int, segments: int, workers: int, seconds: float,
                 input_size: int) -> dict:
    from torch.utils.data import DataLoader, RandomSampler

    from tsn_pipeline.data import Sources, TSNDataset, select_videos
    from tsn_pipeline.model import IMAGENET_MEAN, IMAGENET_STD

    src = Sources.open(frames=frames)
    samples = select_videos(src, "rgb", None)
    ds = TSNDataset(src, samples, "rgb", segments, 1, "train", input_size, IMAGENET_MEAN,
                    IMAGENET_STD, seed=0)
    kw = {"prefetch_factor": 4, "persistent_workers": True} if workers else {}
    sampler = RandomSampler(ds, replacement=True, num_samples=10**7)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, **kw)
    it = iter(loader)
    for _ in range(max(2, workers)):            # warm up: workers started, files opened
        next(it)
    clips, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x, y, _ = next(it)
        clips += x.shape[0]
    dt = time.perf_counter() - t0
    shape = list(x.shape)
    del it, loader
    return {"clips_per_s": clips / dt, "clips": clips, "seconds": dt, "batch_shape": shape,
            "workers": workers}


def bench_model(arch: str, batch: int, segments: int, steps: int, input_size: int, device: str,
                amp: bool, channels_last: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from tsn_pipeline.model import ModelConfig, build_model

    model = build_model(ModelConfig(arch=arch, modality="rgb", num_classes=101,
                                    num_segments=segments, input_size=input_size,
                                    channels_last=channels_last)).to(device)
    opt = torch.optim.SGD([{"params": g["params"], "lr": 0.001 * g["lr_mult"]}
                           for g in model.param_groups()], lr=0.001, momentum=0.9)
    x = torch.randn(batch, segments, 3, input_size, input_size, device=device)
    y = torch.randint(0, 101, (batch,), device=device)
    dev_type = torch.device(device).type

    def step():
        with torch.autocast(device_type=dev_type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 40)
        opt.step()

    model.train()
    for _ in range(2):
        step()
    if dev_type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev_type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"clips_per_s": batch * steps / dt, "steps": steps, "seconds": dt, "arch": arch,
           "batch": batch, "segments": segments, "input_size": input_size, "device": device,
           "amp": "bf16" if amp else "none", "channels_last": channels_last,
           "threads": torch.get_num_threads()}
    if dev_type == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small data, few steps")
    ap.add_argument("--gpu", action="store_true",
                    help="GPU benchmark: resnet50, bf16, channels_last, batch 32 x 3")
    ap.add_argument("--frames", type=Path, help="existing frame shards to load from")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--segments", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="loader timing window")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the model step [default: torch's choice]")
    args = ap.parse_args(argv)

    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    cuda = torch.cuda.is_available()
    gpu = args.gpu and cuda
    if args.gpu and not cuda:
        print("no CUDA device: running the GPU benchmark's settings on the CPU", file=sys.stderr)
    arch = args.arch or ("resnet50" if args.gpu else "resnet18")
    batch = args.batch or (32 if args.gpu and not args.quick else (4 if args.quick else 8))
    if args.gpu and args.quick and not cuda:
        batch = args.batch or 2
    workers = args.workers if args.workers is not None else (
        min(16, os.cpu_count() or 1) if gpu else min(2, os.cpu_count() or 1))
    steps = args.steps or (2 if args.quick else (20 if gpu else 5))
    seconds = args.seconds or (3.0 if args.quick else 15.0)
    device = "cuda" if gpu else "cpu"
    amp = args.gpu                       # bf16 autocast (CUDA; CPU fallback too)
    channels_last = args.gpu

    with tempfile.TemporaryDirectory(prefix="tsn-bench-train-") as tmp:
        frames = args.frames
        if frames is None:
            n_videos = 8 if args.quick else max(32, 4 * workers)
            frames = make_shards(Path(tmp) / "frames", n_videos, 40 if args.quick else 90,
                                 workers=min(4, os.cpu_count() or 1))
        loader = bench_loader(frames, batch, args.segments, workers, seconds, args.input_size)
        print(f"loader : {loader['clips_per_s']:8.1f} clips/s  ({workers} workers, batch "
              f"{batch} x {args.segments} segments, {args.input_size}px)")
        model = bench_model(arch, batch, args.segments, steps, args.input_size, device, amp,
                            channels_last)
        print(f"model  : {model['clips_per_s']:8.1f} clips/s  ({arch}, {device}, "
              f"amp {model['amp']}, {model['threads']} threads)")
    ratio = loader["clips_per_s"] / model["clips_per_s"]
    print(f"ratio loader/model: {ratio:.2f} (goal >= 2)")
    name = ("train_gpu" if gpu else "train_gpu_cpu_fallback") if args.gpu else "train"
    path = write_result(name, {"quick": args.quick, "loader": loader, "model": model,
                               "ratio_loader_over_model": ratio, "goal": ">= 2",
                               "note": "CPU shared with the model step when both run at once; "
                                       "figures measured one after the other"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
