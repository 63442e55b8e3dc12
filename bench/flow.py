"""Flow benchmark: TV-L1 pairs/s of our backends against OpenCV, on the same frames, same run.

CPU (default):
  C. `tsn flow` with its defaults (torch TV-L1, compiled, one worker process per usable core)
     vs `tsn flow --backend opencv --workers N` (OpenCV's TV-L1 in N processes), both real CLI
     runs on the same frame shard, N = every usable core; goal >= 3.0x. Frames: one video per
     clip, 30 pairs each (``--cli-pairs``) at 340x256. The compile cost is paid once per
     machine (the C kernels of flow/native.py, kept on disk): a warm-up run on a tiny shard
     pays or loads it first and is reported apart; each timed run's workers still load the
     library (milliseconds). ``--cold-compile`` also times that warm-up with an empty cache,
     then again. ``startup`` breaks a worker's start-up down (imports, loading the kernels,
     a batch of 8 pairs) and runs the same batch through torch.compile (TorchInductor's
     kernels of the same two functions, the former CPU path) for comparison.
  A. `tsn flow --backend opencv --workers W` (a real CLI run on a frame shard, I/O included)
     vs a single-process loop calling cv2.optflow DualTVL1 with the same parameters
     (cv2.setNumThreads(1)); goal on 2 cores: >= 1.85x.
  B. torch backend on CPU (compiled loop, one thread) vs OpenCV CPU (one thread) on the same
     pairs; torch both with OpenCV CUDA's choices (the default) and with OpenCV CPU's choices
     (cubic remap, median filter, test every iteration: "matched"); compile time apart.
     Goal >= 3x.
GPU (`--gpu`, one command on a GPU machine):
  torch backend pairs/s at 340x256 for batch sizes 1..256, peak memory, iterations per pair.
  Goal on one H200: >= 1000 pairs/s. `--gpu --device cpu --quick` runs the same code path on CPU.

Frames: real clips from tests/data (or your own with --videos DIR) resized to 340x256, else
a synthetic textured scene with camera and object motion. Results are printed and written to
bench/results/flow.json (CPU) or bench/results/flow_gpu.json with the machine's facts.

    python bench/flow.py --quick                     # CPU, ~2-4 min on 2 cores
    python bench/flow.py                             # CPU, full
    python bench/flow.py --part cli                  # C only (~5 min on 2 cores)
    python bench/flow.py --part cli --videos DIR     # C only, on your clips
    python bench/flow.py --gpu                       # GPU sweep (CUDA machine)
    python bench/flow.py --gpu --device cpu --quick  # the GPU path, exercised on CPU
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
VIDEOS = REPO / "tests" / "data"
RESULTS = REPO / "bench" / "results"
SIZE = (340, 256)       # (W, H), TSN's frame size
CLIPS = ["v_SoccerJuggling_g23_c01.avi", "SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi",
         "RATRACE_wave_f_nm_np1_fr_goo_37.avi", "bikes.mp4"]


def machine() -> dict:
    import torch

    from bench.common import machine_info

    facts = machine_info()
    facts["numpy"] = np.__version__
    if torch.cuda.is_available():
        facts["cuda"] = torch.version.cuda
    return facts


def synthetic_video(n: int, seed: int) -> np.ndarray:
    """(n, 256, 340) gray uint8: a smooth texture under a slow pan/zoom plus a moving blob."""
    import cv2

    rng = np.random.default_rng(seed)
    w, h = SIZE
    tex = cv2.resize(rng.random((h // 4, w // 4)).astype(np.float32), (2 * w, 2 * h),
                     interpolation=cv2.INTER_CUBIC)
    tex = cv2.GaussianBlur(tex, (0, 0), 2.0)
    tex = 255 * (tex - tex.min()) / (tex.max() - tex.min())
    frames = []
    for t in range(n):
        s = 1 + 0.004 * t
        m = np.float32([[s, 0, w / 2 + 1.5 * t], [0, s, h / 2 + 0.7 * t]])
        f = cv2.warpAffine(tex, m, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
        cv2.circle(f, (60 + 3 * t, 120), 25, 40.0, -1)
        frames.append(np.clip(f + 0.5, 0, 255).astype(np.uint8))
    return np.stack(frames)


def load_videos(frames_per_video: int, folder: Path = None) -> tuple:
    """{video_id: (T, H, W, 3) uint8 RGB}, source description. ``folder``: every video in it
    (default: the clips CLIPS of tests/data)."""
    import cv2

    paths = ([VIDEOS / c for c in CLIPS] if folder is None else
             sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in
                    (".avi", ".mp4", ".mkv", ".mov", ".webm")))
    paths = [p for p in paths if p.exists()]
    if paths:
        from tsn_pipeline.videoio import read_video

        out = {}
        for path in paths:
            rgb = read_video(path, size=SIZE)
            start = min(20, max(len(rgb) - frames_per_video, 0))
            out[path.stem] = rgb[start:start + frames_per_video]
        return out, f"real clips ({folder or 'tests/data'}) at 340x256"
    out = {}
    for i in range(4):
        g = synthetic_video(frames_per_video, i)
        out[f"synthetic_{i}"] = np.stack([cv2.cvtColor(x, cv2.COLOR_GRAY2RGB) for x in g])
    return out, "synthetic pan/zoom texture with a moving object, 340x256"


def gray_pairs(videos: dict):
    import cv2

    prev, nxt = [], []
    for frames in videos.values():
        g = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        prev.append(g[:-1])
        nxt.append(g[1:])
    return np.concatenate(prev), np.concatenate(nxt)


def write_frame_shard(videos: dict, out: Path) -> Path:
    """A frame shard like `tsn decode` writes (JPEG q95) through the real batch runner."""
    from tsn_pipeline import batch, store

    def make(task):
        f = videos[task.video_id]
        return store.VideoRecord(task.video_id, attrs={
            "num_frames": len(f), "fps": 25.0, "height": f.shape[1], "width": f.shape[2],
            "label": -1, "class_name": "", "split": ""},
            streams={"rgb": [store.encode_image(x, "jpeg", 95) for x in f]})

    batch.run_stage(kind="frames", out_dir=out, shard_index=0, num_shards=1, config={},
                    tasks=[batch.Task(v, "memory") for v in sorted(videos)], process=make,
                    progress=False)
    return out / "frames-0-of-1.h5"


def pieces(videos: dict) -> dict:
    """A shard holds many videos in practice: each clip cut into videos of 5 frames (4 pairs;
    consecutive pieces share a frame, so the pairs are exactly the clip's), so that the
    workers' load balances as it does on a real shard, not on 4 long videos of unequal cost."""
    return {f"{vid}_{k // 4:02d}": frames[k:k + 5] for vid, frames in videos.items()
            for k in range(0, len(frames) - 1, 4)}


def tsn_flow(shard: Path, out: Path, *args, env=None, cpu: list = None) -> float:
    """Seconds of one `tsn flow` run (a fresh process: imports, workers, I/O included);
    ``cpu`` (a list) receives the CPU seconds (user + system) of the run and its workers,
    which other jobs on the machine change less than the wall time."""
    import resource

    cmd = [sys.executable, "-m", "tsn_pipeline.cli", "flow", str(shard), "--out", str(out), "--no-progress",
           *args]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"tsn flow {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return dt


# -- C: `tsn flow` defaults vs OpenCV TV-L1 in N processes ----------------------------------
STARTUP = r"""
import json, os, sys, time, types
t = time.perf_counter(); import numpy, cv2; out = {"import_numpy_cv2_s": time.perf_counter() - t}
t = time.perf_counter(); import torch; out["import_torch_s"] = time.perf_counter() - t
torch.set_num_threads(1); cv2.setNumThreads(1)
sys.path.insert(0, os.getcwd())
from bench.flow import SIZE, gray_pairs, load_videos
from tsn_pipeline.flow import native, tvl1_torch as T
prev, nxt = gray_pairs(load_videos(9)[0])
a, b = prev[:8], nxt[:8]
t = time.perf_counter(); k = native.cpu_kernels(); out["load_c_kernels_s"] = time.perf_counter() - t
t = time.perf_counter(); T.tvl1(a, b, compile=True); out["c_kernels_batch_of_8_s"] = time.perf_counter() - t
t = time.perf_counter(); T.tvl1(a, b, compile=True); out["c_kernels_next_batch_of_8_s"] = time.perf_counter() - t
t = time.perf_counter(); import torch._dynamo, torch._inductor.compile_fx
out["import_dynamo_inductor_s"] = time.perf_counter() - t
tc = types.SimpleNamespace(step=T._compiled("step", T.tvl1_step, True),
                           terms=T._compiled("warp", T.warp_terms, True))
native.cpu_kernels = lambda: tc         # the former path: torch.compile, warm disk cache
t = time.perf_counter(); T.tvl1(a, b, compile=True); out["torch_compile_first_batch_of_8_s"] = time.perf_counter() - t
t = time.perf_counter(); T.tvl1(a, b, compile=True); out["torch_compile_next_batch_of_8_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


def startup_costs() -> dict:
    """What a fresh worker process pays before solving, in a child process with warm caches:
    imports, loading the C kernels and a batch with them, and (the former way) torch.compile's
    first calls, which trace the functions and load their cached kernels, then a batch with
    TorchInductor's kernels."""
    import os

    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    python_s = time.perf_counter() - t
    proc = subprocess.run([sys.executable, "-c", STARTUP], cwd=REPO, capture_output=True,
                          text=True, check=True)
    out = {"python_start_s": python_s, **json.loads(proc.stdout.strip().splitlines()[-1])}
    out["load_avg_after"] = list(os.getloadavg())
    out["note"] = ("one process, one thread, warm caches, batch of 8 pairs at 340x256; "
                   "torch_compile_first - torch_compile_next = tracing and kernel loading; "
                   "torch_compile_next / c_kernels_next = TorchInductor's CPU kernels of the "
                   "same two functions against ours in C (both a second batch in the process)")
    return out


def cli_videos(pairs: int, folder: Path = None) -> tuple:
    """Each clip's frames 20..20+pairs (at 340x256), as whole videos: a video's pairs are
    solved in one worker, as on a real shard."""
    videos, source = load_videos(pairs + 1, folder)
    return videos, {v: len(f) - 1 for v, f in videos.items()}, source


def bench_cli(pairs_per_video: int, folder: Path, cold_compile: bool) -> dict:
    import os

    from tsn_pipeline.commands.options import usable_cores
    from tsn_pipeline.flow import native

    videos, pairs, source = cli_videos(pairs_per_video, folder)
    n = sum(pairs.values())
    cores = usable_cores()
    out = {"machine": machine(), "pairs": n, "videos": len(videos), "cores": cores,
           "frames": f"{source}: frames from index 20 (or fewer), pairs per video {pairs}",
           "torch_command": "tsn flow FRAMES --out OUT (defaults: torch, compiled, "
                            f"{cores} worker processes)",
           "opencv_command": f"tsn flow FRAMES --out OUT --backend opencv --workers {cores}"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shard = write_frame_shard(videos, tmp / "frames")
        tiny = write_frame_shard({k: v[:3] for k, v in list(videos.items())[:cores]},
                                 tmp / "tiny")
        if cold_compile:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor")}
            out["compile_cache"] = {
                "cold_run_s": tsn_flow(tiny, tmp / "cold", env=env),
                "warm_run_s": tsn_flow(tiny, tmp / "warm", env=env),
                "note": "`tsn flow` on 2 pairs per worker: first with an empty kernel cache "
                        "(compiles), then again (loads the cached kernels)"}
        out["cache_was_warm"] = native.library_path(
            native.library_key(native.compiler())).is_file()
        out["warmup_run_s"] = tsn_flow(tiny, tmp / "warmup")   # compiles at most once
        out["startup"] = startup_costs()
        out["load_avg_before"] = {}
        cpu = {"torch": [], "opencv": []}
        out["load_avg_before"]["torch"] = list(os.getloadavg())
        out["torch_s"] = tsn_flow(shard, tmp / "torch", cpu=cpu["torch"])
        out["load_avg_before"]["opencv"] = list(os.getloadavg())
        out["opencv_s"] = tsn_flow(shard, tmp / "opencv", "--backend", "opencv",
                                   "--workers", str(cores), cpu=cpu["opencv"])
        out["load_avg_after"] = list(os.getloadavg())
    out["torch_cpu_s"], out["opencv_cpu_s"] = cpu["torch"][0], cpu["opencv"][0]
    out["torch_pairs_per_s"] = n / out["torch_s"]
    out["opencv_pairs_per_s"] = n / out["opencv_s"]
    out["speedup"] = out["opencv_s"] / out["torch_s"]
    out["cpu_time_ratio"] = out["opencv_cpu_s"] / out["torch_cpu_s"]
    out["goal"] = ">= 3.0 (tsn flow defaults vs OpenCV TV-L1 in as many processes)"
    out["note"] = ("both times include interpreter start, imports, worker start-up, JPEG "
                   "decode/encode and the shard write; the torch run's worker processes load "
                   "the C kernels from the disk cache (built once per machine: "
                   "warmup_run_s); settings are each backend's "
                   "defaults (OpenCV CPU: its 5x5 median filter, a test every iteration); "
                   "speedup is the wall-time ratio, cpu_time_ratio the ratio of CPU seconds "
                   "of each run and its workers (less changed by other jobs on the machine)")
    return out


# -- A: tsn flow --backend opencv --workers W vs a single-process loop ---------------------
def bench_workers(videos: dict, workers: int) -> dict:
    import cv2

    from tsn_pipeline.flow import backend_params
    from tsn_pipeline.flow.opencv import make_cpu_tvl1, tvl1_opencv

    videos = pieces(videos)
    prev, nxt = gray_pairs(videos)
    params = backend_params("opencv")
    cv2.setNumThreads(1)
    algo = make_cpu_tvl1(params)
    t = time.perf_counter()
    for a, b in zip(prev, nxt):
        tvl1_opencv(a, b, params, algo)
    loop_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        shard = write_frame_shard(videos, Path(tmp) / "frames")
        cli_s = tsn_flow(shard, Path(tmp) / "flow", "--backend", "opencv", "--workers",
                         str(workers))
    n = len(prev)
    return {"pairs": n, "videos": len(videos), "workers": workers,
            "loop_pairs_per_s": n / loop_s, "cli_pairs_per_s": n / cli_s,
            "speedup": loop_s / cli_s, "goal": ">= 1.85 on 2 cores",
            "note": "CLI time includes interpreter start, JPEG decode, quantisation, JPEG "
                    "encode and the shard write; the loop only calls OpenCV"}


# -- B: torch on CPU vs OpenCV CPU -----------------------------------------------------------
def bench_torch_cpu(videos: dict, batch_size: int, threads: int) -> dict:
    import cv2
    import torch

    from tsn_pipeline.flow import backend_params
    from tsn_pipeline.flow.opencv import make_cpu_tvl1, tvl1_opencv
    from tsn_pipeline.flow.tvl1_torch import TVL1Params, tvl1

    prev, nxt = gray_pairs(videos)
    n = len(prev)
    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    out = {"pairs": n, "threads": threads, "batch_size": batch_size}
    refs, secs = {}, {}
    # OpenCV CPU as it ships (5x5 median) and with the median filter off (medianFiltering=1):
    # the latter has exactly the torch defaults' parameters ("matched")
    for name, med in (("median5", 5), ("nomedian", 0)):
        params_cv = backend_params("opencv", TVL1Params(interp="cpu", median=med, check_every=1))
        algo = make_cpu_tvl1(params_cv)
        t = time.perf_counter()
        refs[name] = np.stack([tvl1_opencv(a, b, params_cv, algo) for a, b in zip(prev, nxt)])
        secs[name] = time.perf_counter() - t
        out[f"opencv_{name}_pairs_per_s"] = n / secs[name]
    ref = refs["median5"]
    # torch runs: (name, params, compile, the OpenCV run it is compared with)
    runs = [("compiled_default", TVL1Params(), True, "nomedian"),
            ("compiled_closest", TVL1Params(interp="cpu", median=5, check_every=1), True, "median5"),
            ("eager_default", TVL1Params(), False, "nomedian")]
    for name, params, compile, against in runs:
        key = f"torch_{name}"
        t = time.perf_counter()
        tvl1(prev[:2], nxt[:2], params, compile=compile)   # compile (or warm up)
        first_s = time.perf_counter() - t
        stats = {}
        t = time.perf_counter()
        flows = []
        for i in range(0, n, batch_size):
            flows.append(tvl1(prev[i:i + batch_size], nxt[i:i + batch_size], params,
                              compile=compile, stats=stats).numpy())
        run_s = time.perf_counter() - t
        flow = np.concatenate(flows)
        out[key] = {"pairs_per_s": n / run_s, "compared_with": f"opencv_{against}",
                    "speedup_vs_opencv": secs[against] / run_s,
                    "speedup_vs_opencv_median5": secs["median5"] / run_s,
                    "warmup_or_compile_s": first_s,
                    "epe_vs_opencv_px": float(np.sqrt(((flow - refs[against]) ** 2).sum(1)).mean()),
                    "iterations_per_pair": stats["pair_iterations"] / n}
        refs[key] = flow
    # last-bit differences (torch's CPU sqrt, the order of the stopping test's sums): tiny
    # everywhere except isolated near-textureless pixels, where the threshold step
    # -rho / |grad I|^2 amplifies rounding (OpenCV CPU vs CUDA too)
    d = np.sqrt(((refs["torch_compiled_default"] - refs["torch_eager_default"]) ** 2).sum(1))
    out["compiled_vs_eager_px"] = {"mean": float(d.mean()), "p99_9": float(np.percentile(d, 99.9)),
                                   "max": float(d.max())}
    out["mean_flow_px"] = float(np.sqrt((ref ** 2).sum(1)).mean())
    out["goal"] = "torch compiled >= 3x OpenCV CPU per core, same parameters"
    return out


# -- GPU sweep ------------------------------------------------------------------------------
def bench_gpu(device: str, quick: bool, folder: Path = None) -> dict:
    import torch

    from tsn_pipeline.flow.tvl1_torch import TVL1Params, tvl1

    videos, source = load_videos(9 if quick else 40, folder)
    prev, nxt = gray_pairs(videos)
    sizes = [1, 2, 4] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    reps = 1 if quick else 2
    params = TVL1Params()
    cuda = device.startswith("cuda")
    dev = torch.device(device)

    def batch_of(b, seed):
        idx = np.random.default_rng(seed).integers(0, len(prev), b)
        return (torch.from_numpy(prev[idx]).to(dev), torch.from_numpy(nxt[idx]).to(dev))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    a, b = batch_of(2, 0)
    t = time.perf_counter()
    tvl1(a, b, params, compile=True)
    sync()
    compile_s = time.perf_counter() - t
    rows = []
    for bs in sizes:
        a, b = batch_of(bs, bs)
        tvl1(a, b, params, compile=True)          # warm (shapes, allocator)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        stats = {}
        t = time.perf_counter()
        for r in range(reps):
            tvl1(a, b, params, compile=True, stats=stats)
        sync()
        dt = time.perf_counter() - t
        row = {"batch_size": bs, "pairs_per_s": bs * reps / dt, "seconds": dt,
               "iterations_per_pair": stats["pair_iterations"] / (bs * reps)}
        if cuda:
            row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: r["pairs_per_s"])
    return {"device": device, "frames": source, "size": list(SIZE), "compile_s": compile_s,
            "params": params.to_dict(), "sweep": rows, "best": best,
            "goal": ">= 1000 pairs/s on one H200"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer pairs (checks the script runs)")
    ap.add_argument("--gpu", action="store_true", help="GPU batch-size sweep of the torch backend")
    ap.add_argument("--device", default="cuda", help="device for --gpu (cpu to exercise it)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads for part B (both sides)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/flow*.json)")
    ap.add_argument("--part", choices=["all", "cli", "workers", "torch"], default="all",
                    help="CPU: run only part C (cli), A (workers) or B (torch); the other "
                         "parts' results already in the JSON file are kept")
    ap.add_argument("--videos", type=Path, default=None,
                    help="folder of your own clips (default: tests/data)")
    ap.add_argument("--cli-pairs", type=int, default=30,
                    help="C: frame pairs per video (one video per clip; quick: 8)")
    ap.add_argument("--cold-compile", action="store_true",
                    help="C: also time a run with an empty kernel cache (the C kernels "
                         "are built and checked: ~2 s)")
    args = ap.parse_args()
    if args.quick:
        args.cli_pairs = min(args.cli_pairs, 8)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "quick": args.quick}
    default_out = RESULTS / ("flow_gpu.json" if args.gpu else "flow.json")
    if args.part != "all" and Path(args.out or default_out).exists():
        old = json.loads(Path(args.out or default_out).read_text())
        # part C records its own machine: the top-level facts stay those of parts A and B
        result = {**old, **result} if args.part != "cli" or "machine" not in old else old
    if args.gpu:
        result["gpu"] = bench_gpu(args.device, args.quick, args.videos)
        out = Path(args.out or RESULTS / "flow_gpu.json")
    else:
        # A: 16 pairs per video (64 in all) so that process start-up (~1-2 s) is small
        # against the work; B: 8 pairs per video (quick: 4 and 2)
        videos, source = load_videos(5 if args.quick else 17, args.videos)
        if args.part != "cli":
            result["frames"] = source
        if args.part in ("all", "cli"):
            result["cli"] = bench_cli(args.cli_pairs, args.videos, args.cold_compile)
            print(json.dumps({"cli": result["cli"]}, indent=1), flush=True)
        if args.part in ("all", "workers"):
            result["workers"] = bench_workers(videos, args.workers)
            print(json.dumps({"workers": result["workers"]}, indent=1), flush=True)
        if args.part in ("all", "torch"):
            small = {k: v[:3 if args.quick else 9] for k, v in videos.items()}
            result["torch_cpu"] = bench_torch_cpu(small, batch_size=8, threads=args.threads)
            print(json.dumps({"torch_cpu": result["torch_cpu"]}, indent=1), flush=True)
        out = Path(args.out or RESULTS / "flow.json")
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
