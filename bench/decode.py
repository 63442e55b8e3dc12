"""Benchmark: `tsn decode` into HDF5 shards vs plain ffmpeg writing a folder of JPEG files.

Same clips, same output size, same parallelism, same run. Prints and writes
bench/results/decode.json:
- frames/s of each, and their ratio (goal: tsn / ffmpeg >= 0.9);
- bytes of the shard vs the JPEG folder, and mean PSNR of each against the raw frames
  (so "same quality" is checked, not assumed: ffmpeg's -q:v and libjpeg's quality differ);
- random-read throughput: 3 random frames per video, decoded, from the shard vs the folder.

    python bench/decode.py                 # the clips in tests/data, repeated 10x, 340x256, 2 workers
    python bench/decode.py --quick         # one repeat
    python bench/decode.py --videos DIR    # your own clips
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
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


def ffmpeg_jpeg_folder(exe, src: Path, dst: Path, size, qv: int) -> int:
    dst.mkdir(parents=True)
    subprocess.run([exe, "-nostdin", "-v", "error", "-i", str(src), "-vf",
                    f"scale={size[0]}:{size[1]}:flags=bilinear", "-fps_mode", "passthrough",
                    "-q:v", str(qv), str(dst / "img_%05d.jpg")], check=True)
    return len(list(dst.glob("*.jpg")))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=Path, default=REPO / "tests" / "data")
    ap.add_argument("--repeat", type=int, default=10, help="copies of each clip (more frames)")
    ap.add_argument("--size", default="340x256")
    ap.add_argument("--ffmpeg-qv", type=int, default=2,
                    help="ffmpeg -q:v for the JPEG folder and tsn decode --qscale")
    ap.add_argument("--opencv-quality", type=int, default=95,
                    help="also time tsn decode --encoder opencv at this quality")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.repeat = 1
    size = tuple(int(x) for x in args.size.split("x"))

    from tsn_pipeline import store
    from tsn_pipeline.store import decode_image
    from tsn_pipeline.videoio import ffmpeg_exe, read_video

    exe = ffmpeg_exe()
    load_start = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="tsn-bench-decode-"))
    try:
        src = work / "videos"
        clips = repeated_clips(args.videos, args.repeat, src)
        videos = sorted(src.iterdir())

        def tsn_decode(out, *extra):
            shutil.rmtree(out, ignore_errors=True)
            os.sync()                      # no earlier run's dirty pages flushed on our time
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tsn_pipeline.cli", "decode", str(src), "--out", str(out),
                            "--size", args.size, "--workers", str(args.workers), "--no-progress",
                            *extra], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - t0

        def ffmpeg_folders():
            shutil.rmtree(work / "jpeg", ignore_errors=True)
            os.sync()
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(args.workers) as pool:   # each job is an ffmpeg process
                counts = list(pool.map(lambda v: ffmpeg_jpeg_folder(
                    exe, v, work / "jpeg" / v.stem, size, args.ffmpeg_qv), videos))
            return time.perf_counter() - t0, counts

        # fixed cost of one `tsn decode` run (interpreter, imports, worker start-up), apart
        tiny = work / "tiny"
        tiny.mkdir()
        (tiny / clips[0].name).symlink_to(clips[0].resolve())
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tsn_pipeline.cli", "decode", str(tiny), "--out", str(work / "tiny_out"),
                        "--size", "32x24", "--workers", str(args.workers), "--no-progress"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        t_start = time.perf_counter() - t0

        # A B B A: each side measured twice, in both orders, and averaged
        tsn_args = ("--encoder", "ffmpeg", "--qscale", str(args.ffmpeg_qv))
        t_tsn1 = tsn_decode(work / "shards", *tsn_args)
        t_ff1, counts = ffmpeg_folders()
        t_ff2, _ = ffmpeg_folders()
        t_tsn2 = tsn_decode(work / "shards", *tsn_args)
        t_tsn, t_ff = (t_tsn1 + t_tsn2) / 2, (t_ff1 + t_ff2) / 2
        t_cv = tsn_decode(work / "shards_cv", "--encoder", "opencv", "--quality",
                          str(args.opencv_quality))
        cv_bytes = sum(p.stat().st_size for p in (work / "shards_cv").glob("*.h5"))

        shards = store.open_shards(work / "shards")
        frames = sum(shards[v].length for v in shards.ids)
        assert frames == sum(counts), (frames, sum(counts))
        shard_bytes = sum(Path(p).stat().st_size for p in shards.paths)
        jpeg_bytes = folder_bytes(work / "jpeg")

        # quality: PSNR against the raw decoded frames, first repeat of each clip
        q_tsn, q_ff = [], []
        for c in clips:
            vid = f"{c.stem}_r0"
            raw = read_video(src / f"{vid}{c.suffix}", size=size)
            idx = np.linspace(0, len(raw) - 1, 5).astype(int)
            got = shards.read_frames(vid, idx)
            q_tsn += [psnr(a, b) for a, b in zip(got, raw[idx])]
            for i in idx:
                img = decode_image((work / "jpeg" / vid / f"img_{i + 1:05d}.jpg").read_bytes())
                q_ff.append(psnr(img, raw[i]))

        rng = np.random.default_rng(0)
        picks = {v: rng.choice(shards[v].length, 3, replace=False) for v in shards.ids}
        t0 = time.perf_counter()
        for v, idx in picks.items():
            shards.read_frames(v, idx)
        t_read_shard = time.perf_counter() - t0
        t0 = time.perf_counter()
        for v, idx in picks.items():
            for i in idx:
                decode_image((work / "jpeg" / v / f"img_{i + 1:05d}.jpg").read_bytes())
        t_read_jpeg = time.perf_counter() - t0
        reads = 3 * len(picks)

        result = {
            "clips": [c.name for c in clips], "videos": len(videos), "frames": frames,
            "size": args.size, "workers": args.workers, "ffmpeg_qv": args.ffmpeg_qv,
            "note": "tsn decode --encoder ffmpeg --qscale N vs ffmpeg -q:v N img_%05d.jpg",
            "tsn_decode_fps": round(frames / t_tsn, 1), "ffmpeg_jpeg_fps": round(frames / t_ff, 1),
            "ratio_tsn_over_ffmpeg": round(t_ff / t_tsn, 3),
            "seconds": {"tsn": [round(t_tsn1, 2), round(t_tsn2, 2)],
                        "ffmpeg": [round(t_ff1, 2), round(t_ff2, 2)],
                        "order": "tsn, ffmpeg, ffmpeg, tsn; os.sync() before each"},
            "tsn_run_fixed_cost_s": round(t_start, 2),
            "tsn_decode_opencv": {"quality": args.opencv_quality, "fps": round(frames / t_cv, 1),
                                  "shard_bytes": cv_bytes},
            "shard_bytes": shard_bytes, "jpeg_folder_bytes": jpeg_bytes,
            "bytes_ratio_shard_over_folder": round(shard_bytes / jpeg_bytes, 3),
            "files": {"shard": len(shards.paths), "jpeg_folder": frames},
            "psnr_db": {"tsn": round(float(np.mean(q_tsn)), 2), "ffmpeg": round(float(np.mean(q_ff)), 2)},
            "random_read_frames_per_s": {"shard": round(reads / t_read_shard, 1),
                                         "jpeg_folder": round(reads / t_read_jpeg, 1)},
            "load_avg_at_start": load_start,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report("decode", result)


if __name__ == "__main__":
    main()
