"""Benchmark: `tsn score` / `tsn features` throughput and where the time goes; `tsn fuse` speed.

The repository's test clips (tests/data; --videos for your own) are decoded at 340x256 (TSN's size) into one frame shard, a random-weight
checkpoint of the chosen arch is saved with the training code's writer, and then:
- `tsn score` with TSN's protocol (25 snippets x 10 crops) end to end: videos/s, crops/s;
- the same time split into input preparation (JPEG decode + crops, `SnippetDataset`) and the
  model's forward pass on prepared batches (so one sees which side limits);
- `tsn features --stride 16` (centre crop) end to end;
- `tsn fuse` of two synthetic score sets of 10,000 videos x 101 classes (read + fuse + report).
Prints and writes bench/results/score.json (machine facts included).

    python bench/score.py                  # resnet50, 224, all clips in tests/data, --workers 2
    python bench/score.py --quick          # resnet18, 5 snippets, one clip, 1000-video fuse
    python bench/score.py --arch bninception --device cuda --workers 8
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import write_result  # noqa: E402


def save_random_checkpoint(path: Path, arch: str, modality: str = "rgb", num_classes: int = 101):
    import torch

    from tsn_pipeline.model import ModelConfig, build_model
    from tsn_pipeline.train import TrainConfig, atomic_torch_save, checkpoint_state

    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, modality=modality, num_classes=num_classes)
    model = build_model(cfg).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10])
    tcfg = TrainConfig(modality=modality, frames="frames", num_classes=num_classes, iterations=1)
    atomic_torch_save(checkpoint_state(model, cfg, tcfg, opt, sched, 0, 0, None, []), path)
    return model, cfg


def run_cli(*args) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tsn_pipeline.cli", *map(str, args)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def write_synthetic_scores(out: Path, modality: str, n: int, k: int, seed: int):
    """n videos x 25 snippets x k classes, labels i % k, in the score-file format.

    Written in one h5py pass with ``store.write_record`` (the batch runner's per-video parts
    would make this setup, not the fusion, the slow part of the benchmark).
    """
    import h5py

    from tsn_pipeline import score, store

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    with h5py.File(out / store.shard_name("scores", 0, 1), "w") as f:
        videos = f.create_group(store.VIDEOS)
        for i in range(n):
            label = i % k
            s = rng.normal(size=(25, 1, k)).astype(np.float32)
            s[:, 0, label] += 0.3
            store.write_record(videos, score.scores_record(f"v{i:06d}", s, label=label,
                                                           modality=modality))
        attrs = store.root_attrs("scores", {"modality": modality}, 0, 1,
                                 {"modality": modality, "classes": "null", "num_videos": n,
                                  "failed": "[]"})
        for key, value in attrs.items():
            f.attrs[key] = value


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=Path, default=REPO / "tests" / "data")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--num-snippets", type=int, default=25)
    ap.add_argument("--crops", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fuse-videos", type=int, default=10000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-name", default="score", help="results file bench/results/NAME.json")
    args = ap.parse_args()
    if args.quick:
        args.arch, args.num_snippets, args.fuse_videos = "resnet18", 5, 1000
    clips = sorted(p for p in args.videos.iterdir() if p.suffix in (".avi", ".mp4"))
    if args.quick:
        clips = [c for c in clips if c.name.startswith("TrumanShow")] or clips[:1]
    if not clips:
        sys.exit(f"no clips in {args.videos}")

    import torch

    from tsn_pipeline import batch, data
    from tsn_pipeline.devices import resolve_device
    from tsn_pipeline.snippets import SnippetDataset, SnippetPlan
    from tsn_pipeline.transforms import normalize

    dev = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="tsn-bench-score-"))
    lst = work / "list.csv"
    lst.write_text("video_id,path,label,class_name,split\n" + "".join(
        f"{c.stem},{c.resolve()},0,c0,test\n" for c in clips))
    run_cli("decode", lst, "--out", work / "frames", "--size", "340x256", "--no-progress",
            "--workers", args.workers)
    model, cfg = save_random_checkpoint(work / "ckpt.pt", args.arch)
    n_videos = len(clips)

    t_score = run_cli("score", work / "ckpt.pt", "--frames", work / "frames", "--out",
                      work / "scores", "--num-snippets", args.num_snippets, "--crops", args.crops,
                      "--workers", args.workers, "--batch-size", args.batch_size, "--device",
                      args.device, "--no-progress")
    rows = n_videos * args.num_snippets * args.crops

    # split: input preparation alone, then the forward pass alone on the prepared rows
    sources = data.Sources.open(frames=work / "frames")
    plan = SnippetPlan("rgb", 1, num_snippets=args.num_snippets, input_size=cfg.input_size,
                       crops=args.crops)
    ds = SnippetDataset(sources, [batch.Task(c.stem, "", 0) for c in clips], plan)
    t0 = time.perf_counter()
    prepared = []
    for i in range(len(ds)):
        task, _, _, _, crops = ds[i]             # (task, part, parts, indices, rows | failure)
        if not isinstance(crops, np.ndarray):
            raise RuntimeError(f"{task.video_id}: {crops}")
        prepared.append(crops)
    t_prep = time.perf_counter() - t0
    model.to(dev)
    x = torch.from_numpy(np.concatenate(prepared))
    with torch.inference_mode():
        model.forward_snippets(normalize(x[:8].to(dev), "rgb", cfg.mean, cfg.std))  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for a in range(0, len(x), args.batch_size):
            model.forward_snippets(normalize(x[a:a + args.batch_size].to(dev), "rgb",
                                                  cfg.mean, cfg.std)).cpu()
        t_fwd = time.perf_counter() - t0

    frames = sum(sources.frames[c.stem].length for c in clips)
    t_feat = run_cli("features", work / "ckpt.pt", "--frames", work / "frames", "--out",
                     work / "features", "--stride", 16, "--workers", args.workers,
                     "--device", args.device, "--no-progress")

    write_synthetic_scores(work / "s-rgb", "rgb", args.fuse_videos, 101, 0)
    write_synthetic_scores(work / "s-flow", "flow", args.fuse_videos, 101, 1)
    from tsn_pipeline.score import load_video_scores

    t0 = time.perf_counter()
    load_video_scores([work / "s-rgb"])
    t_load = time.perf_counter() - t0
    t_fuse = run_cli("fuse", "--scores", work / "s-rgb", "--scores", work / "s-flow",
                     "--out", work / "fused")
    fused = json.loads((work / "fused" / "fused.json").read_text())

    result = {
        "arch": args.arch, "device": str(dev), "workers": args.workers,
        "batch_size": args.batch_size, "videos": n_videos, "frames": frames,
        "clips": [c.name for c in clips], "num_snippets": args.num_snippets,
        "crops": args.crops, "quick": args.quick,
        "score": {"seconds": round(t_score, 2), "videos_per_s": round(n_videos / t_score, 3),
                  "crops_per_s": round(rows / t_score, 1),
                  "note": "end to end incl. process start, torch import and checkpoint load"},
        "split": {"prepare_crops_per_s_1_process": round(rows / t_prep, 1),
                  "forward_crops_per_s": round(rows / t_fwd, 1)},
        "features_stride16": {"seconds": round(t_feat, 2),
                              "frames_per_s": round(frames / t_feat, 1)},
        "fuse": {"videos": args.fuse_videos, "classes": 101, "seconds": round(t_fuse, 2),
                 "read_one_score_set_seconds": round(t_load, 2),
                 "fused_top1": fused["metrics"]["fused"]["top1"]},
    }
    print(json.dumps(result, indent=2))
    print("wrote", write_result(args.out_name, result))


if __name__ == "__main__":
    main()
