"""Benchmark: random frame reads from frame shards vs a rawframes JPEG folder vs the bound.

The same JPEG bytes three ways, 3 random frames per video per pass, decoded to one RGB array
(3, H, W, 3) per video (what a training DataLoader worker does):
- shards: a ShardSet opened once, ``read_frames(video, [i, j, k])``;
- folder: the same frames as ``img_%05d.jpg`` files (`tsn export-rawframes`, byte copies),
  read, then ``decode_images`` of the three;
- memory: the same bytes already in memory, ``decode_images`` of the three: the bound for any
  reader (the same decoder call, so the same arrays: checked on the first pass).
Warm: every file read whole into the page cache first, then the median of ``--passes`` passes
(new picks each pass, the three sides interleaved in rotating order).
Cold: the first pass after the files were dropped from the page cache (posix_fadvise
DONTNEED on every file; no root needed) with a freshly opened ShardSet; ``--cold-passes``
times (other picks each time, the two sides in alternating order), the median.
Also the training DataLoader alone (TSNDataset rgb, 3 segments, 224 px train transform, in
this process): clips/s with torch's default threads and with one thread (as in a DataLoader
worker process).
Goals: shards >= 1.0x the folder and >= 0.9x the in-memory decode. Prints and writes
bench/results/read.json with the machine's facts and load average.

    python bench/read.py                  # tests/data clips x 8 copies, 340x256
    python bench/read.py --videos DIR     # your own clips
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import repeated_clips, report  # noqa: E402


def drop_from_page_cache(paths) -> None:
    os.sync()                      # dirty pages (files just written) cannot be dropped
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def tsn(*args) -> None:
    subprocess.run([sys.executable, "-m", "tsn_pipeline.cli", *map(str, args)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)


def warm_page_cache(paths) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 22):
                pass


def read_shards(shards, picks, keep=None) -> None:
    for v, idx in picks.items():
        frames = shards.read_frames(v, idx)
        if keep is not None:
            keep.append(frames)


def read_folder(folder: Path, picks, keep=None) -> None:
    from tsn_pipeline.store import decode_images

    for v, idx in picks.items():
        payloads = []
        for i in idx:
            with open(folder / v / f"img_{i + 1:05d}.jpg", "rb") as fh:
                payloads.append(fh.read())
        frames = decode_images(payloads)
        if keep is not None:
            keep.append(frames)


def decode_memory(payloads, picks, keep=None) -> None:
    from tsn_pipeline.store import decode_images

    for v, idx in picks.items():
        frames = decode_images([payloads[v][i] for i in idx])
        if keep is not None:
            keep.append(frames)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def bench_loader(frames: Path, clips: int, threads: int = 0) -> dict:
    """clips/s of the training DataLoader in this process; ``threads``: torch's intra-op
    threads for the run (a DataLoader worker process has 1), 0 keeps torch's default."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from tsn_pipeline.data import Sources, TSNDataset, VideoSample

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    src = Sources.open(frames=frames)
    samples = [VideoSample(v, 0) for v in src.frames.ids]        # the clips have no labels
    ds = TSNDataset(src, samples, "rgb", 3, 1, "train", 224, mean, std)
    loader = DataLoader(ds, batch_size=8, num_workers=0,
                        sampler=RandomSampler(ds, replacement=True, num_samples=clips + 16))
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        it = iter(loader)
        next(it), next(it)                           # warm up
        t0 = time.perf_counter()
        n = sum(x.shape[0] for x, _, _ in it)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return {"clips_per_s": round(n / (time.perf_counter() - t0), 1), "clips": n,
            "segments": 3, "input_size": 224, "batch_size": 8, "num_workers": 0,
            "torch_threads": used}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=Path, default=REPO / "tests" / "data")
    ap.add_argument("--repeat", type=int, default=8, help="copies of each clip (more videos)")
    ap.add_argument("--passes", type=int, default=15, help="warm passes (new picks each)")
    ap.add_argument("--cold-passes", type=int, default=3,
                    help="cold first passes (page cache dropped before each)")
    ap.add_argument("--size", default="340x256")
    ap.add_argument("--loader-clips", type=int, default=160)
    args = ap.parse_args()

    from tsn_pipeline import store

    load_start = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="tsn-bench-read-"))
    try:
        src = work / "videos"
        clips = repeated_clips(args.videos, args.repeat, src)
        tsn("decode", src, "--out", work / "frames", "--size", args.size, "--workers", "2",
            "--no-progress")
        tsn("export-rawframes", "--frames", work / "frames", "--out", work / "folder",
            "--no-progress")
        shard_files = [str(p) for p in (work / "frames").glob("*.h5")]
        jpeg_files = [str(p) for p in (work / "folder").rglob("*.jpg")]

        t0 = time.perf_counter()
        shards = store.open_shards(work / "frames")
        open_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        passes = [{v: sorted(rng.choice(shards[v].length, 3, replace=False).tolist())
                   for v in shards.ids} for _ in range(args.cold_passes + 1 + args.passes)]
        cold_picks, passes = passes[:args.cold_passes], passes[args.cold_passes:]
        payloads = {v: shards.read_encoded(v, "rgb", range(shards[v].length)) for v in shards.ids}
        reads = 3 * len(shards.ids)

        # the three sides give the same arrays
        got = {name: [] for name in ("shards", "folder", "memory")}
        read_shards(shards, passes[0], got["shards"])
        read_folder(work / "folder", passes[0], got["folder"])
        decode_memory(payloads, passes[0], got["memory"])
        for name in ("folder", "memory"):
            assert all(np.array_equal(a, b) for a, b in zip(got["shards"], got[name])), name
        del got

        # cold: a first pass with the page cache dropped, a fresh ShardSet (as a new
        # DataLoader worker); both sides' files dropped before each side's pass
        cold = {"shards": [], "folder": []}
        for c, picks in enumerate(cold_picks):
            for name in (("shards", "folder") if c % 2 == 0 else ("folder", "shards")):
                drop_from_page_cache(shard_files + jpeg_files)
                if name == "shards":
                    cold_shards = store.open_shards(work / "frames")
                    cold["shards"].append(timed(read_shards, cold_shards, picks))
                    cold_shards.close()
                else:
                    cold["folder"].append(timed(read_folder, work / "folder", picks))

        # warm: every file read whole into the page cache (the cold passes dropped them);
        # the sides interleaved pass by pass in rotating order, the median pass of each
        # (other processes' load comes and goes)
        warm_page_cache(shard_files + jpeg_files)
        read_shards(shards, passes[0])
        read_folder(work / "folder", passes[0])
        sides = [("shards", read_shards, shards), ("folder", read_folder, work / "folder"),
                 ("memory", decode_memory, payloads)]
        warm = {name: [] for name, _, _ in sides}
        for k, picks in enumerate(passes[1:]):
            for name, fn, arg in sides[k % 3:] + sides[:k % 3]:
                warm[name].append(timed(fn, arg, picks))
        fps = {k: round(reads / float(np.median(t)), 1) for k, t in warm.items()}
        cold_fps = {k: round(reads / float(np.median(t)), 1) for k, t in cold.items()}
        result = {
            "clips": [c.name for c in clips], "videos": len(shards.ids), "size": args.size,
            "frames": sum(shards[v].length for v in shards.ids), "shards": len(shard_files),
            "reads_per_pass": reads, "passes": args.passes, "open_s": round(open_s, 3),
            "warm_frames_per_s": fps,
            "warm_ratio_shards_over_folder": round(fps["shards"] / fps["folder"], 3),
            "warm_ratio_shards_over_memory": round(fps["shards"] / fps["memory"], 3),
            "cold_first_pass_frames_per_s": cold_fps, "cold_passes": args.cold_passes,
            "cold_ratio_shards_over_folder": round(cold_fps["shards"] / cold_fps["folder"], 3),
            "loader": bench_loader(work / "frames", args.loader_clips),
            "loader_one_thread": bench_loader(work / "frames", args.loader_clips, threads=1),
            "goal": "warm: shards >= 1.0x folder and >= 0.9x memory",
            "load_avg_at_start": load_start,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report("read", result)


if __name__ == "__main__":
    main()
