"""Benchmark: `tsn import-rawframes` / `tsn export-rawframes` throughput, and what packing saves.

Writes a dense_flow-style tree (img_/flow_x_/flow_y_ JPEGs, 1-based) of synthetic 340x256
videos, imports it into frame + flow shards, exports it back, and reports files/s and MB/s
of each direction, plus the file count and bytes on disk of the folder tree vs the shards
(the point of packing: a few large files instead of millions of small ones).
Prints and writes bench/results/rawframes.json.

    python bench/rawframes.py            # 40 videos x 60 frames
    python bench/rawframes.py --quick    # 8 videos x 30 frames
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import write_result  # noqa: E402


def make_tree(root: Path, videos: int, frames: int, size=(340, 256)) -> int:
    import cv2

    rng = np.random.default_rng(0)
    w, h = size
    base = cv2.resize(rng.random((h // 8, w // 8, 3)).astype(np.float32), (w + 64, h + 64))
    base = (base * 255).astype(np.uint8)
    flow_base = cv2.resize(rng.random((h // 16, w // 16)).astype(np.float32), (w, h))
    n = 0
    for v in range(videos):
        d = root / f"v_Bench_g{v // 4 + 1:02d}_c{v % 4 + 1:02d}"
        d.mkdir(parents=True)
        for t in range(frames):
            img = base[t % 64:t % 64 + h, v % 64:v % 64 + w]
            cv2.imwrite(str(d / f"img_{t + 1:05d}.jpg"), img)
            n += 1
            if t < frames - 1:
                q = np.clip(128 + 40 * (flow_base - 0.5) + t, 0, 255).astype(np.uint8)
                cv2.imwrite(str(d / f"flow_x_{t + 1:05d}.jpg"), q)
                cv2.imwrite(str(d / f"flow_y_{t + 1:05d}.jpg"), 255 - q)
                n += 2
    return n


def tree_stats(root: Path):
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def tsn(*args):
    t0 = time.monotonic()
    subprocess.run([str(REPO / ".venv" / "bin" / "tsn"), *map(str, args)], check=True,
                   capture_output=True, text=True)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.videos, args.frames = 8, 30
    tmp = Path(tempfile.mkdtemp(prefix="bench-rawframes-"))
    try:
        src = tmp / "src"
        make_tree(src, args.videos, args.frames)
        n_files, n_bytes = tree_stats(src)
        subprocess.run(["sync"], check=False)
        t_import = tsn("import-rawframes", src, "--frames-out", tmp / "frames", "--flow-out",
                       tmp / "flow", "--workers", args.workers, "--no-progress")
        shard_files, shard_bytes = tree_stats(tmp / "frames")
        f2, b2 = tree_stats(tmp / "flow")
        shard_files, shard_bytes = shard_files + f2, shard_bytes + b2
        t_export = tsn("export-rawframes", "--frames", tmp / "frames", "--flow", tmp / "flow",
                       "--out", tmp / "back", "--no-progress")
        result = {
            "videos": args.videos, "frames_per_video": args.frames, "size": "340x256",
            "workers": args.workers, "files": n_files, "mb": round(n_bytes / 1e6, 1),
            "import_s": round(t_import, 2), "import_files_per_s": round(n_files / t_import),
            "import_mb_per_s": round(n_bytes / 1e6 / t_import, 1),
            "export_s": round(t_export, 2), "export_files_per_s": round(n_files / t_export),
            "export_mb_per_s": round(n_bytes / 1e6 / t_export, 1),
            "shard_files": shard_files, "shard_mb": round(shard_bytes / 1e6, 1),
            "note": "times include the CLI's start (~1-2 s of imports)",
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in result.items():
        print(f"{k:22s} {v}")
    print(f"wrote {write_result('rawframes', result)}")


if __name__ == "__main__":
    main()
