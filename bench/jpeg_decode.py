"""Benchmark: JPEG frames to a uint8 batch on the training device, decoded on the CPU (what the
DataLoader workers do now) or by torchvision's ``decode_jpeg`` on the device (nvJPEG on CUDA).

The same payloads both ways: frames of the tests/data clips of bench/flow.py at 340x256
encoded at JPEG quality 95 (as `tsn decode` stores them), in batches of ``--batch`` frames:
- cpu: ``store.decode_images`` (OpenCV, the shard reader's own call) in this process, one
  thread, then the batch copied to the device; frames/s per CPU core (a DataLoader spreads this
  over its worker processes);
- device: the payloads as uint8 tensors, ``torchvision.io.decode_jpeg(list, device=...)``, the
  batch stacked on the device (host-to-device copy of the bytes included).
Both are timed to a synchronised device. Also the mean absolute difference of the two decodes
in grey levels (decoders differ in their IDCT and chroma upsampling). Whether training and
scoring should decode on the device is decided from these figures: on the GPU it pays when
device frames/s beat the CPU figure times the cores a node gives each GPU.

    python bench/jpeg_decode.py                    # cuda when available, else cpu
    python bench/jpeg_decode.py --device cpu --quick
Writes bench/results/jpeg_decode_<device>.json with the machine's facts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import report  # noqa: E402

def payloads(frames_per_clip: int) -> list:
    """JPEG q95 payloads of ``bench/flow.py``'s clips at 340x256 (its ``load_videos``)."""
    from bench.flow import load_videos
    from tsn_pipeline import store

    videos, _ = load_videos(frames_per_clip)
    return [store.encode_image(x, "jpeg", 95) for frames in videos.values() for x in frames]


def timed(fn, sync, reps: int) -> float:
    """Best seconds of ``reps`` calls of ``fn`` (after one untimed call)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--quick", action="store_true", help="fewer frames and repeats")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    import torchvision
    from torchvision.io import decode_jpeg

    from tsn_pipeline import store

    data = payloads(40 if args.quick else 80)
    reps = 2 if args.quick else 5

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    result = {"device": str(device), "torchvision": torchvision.__version__,
              "frames": f"{len(data)} frames of 4 tests/data clips at 340x256, JPEG q95",
              "mean_payload_bytes": int(np.mean([len(p) for p in data])), "batches": {}}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    for b in args.batch:
        batches = [data[i:i + b] for i in range(0, len(data) - b + 1, b)]
        if not batches:
            sys.exit(f"--batch {b}: only {len(data)} frames")
        n = b * len(batches)

        def on_cpu():
            return [torch.from_numpy(store.decode_images(x)).to(device) for x in batches]

        def on_device():
            return [torch.stack(decode_jpeg([torch.frombuffer(bytearray(p), dtype=torch.uint8)
                                             for p in x], device=device))
                    for x in batches]

        cpu_s, dev_s = timed(on_cpu, sync, reps), timed(on_device, sync, reps)
        a = on_cpu()[0].permute(0, 3, 1, 2).float()          # (B, H, W, 3) -> (B, 3, H, W)
        d = on_device()[0].float()
        result["batches"][str(b)] = {
            "cpu_frames_per_s_one_core": n / cpu_s, "device_frames_per_s": n / dev_s,
            "device_vs_one_core": cpu_s / dev_s,
            "mean_abs_diff_grey_levels": float((a - d).abs().mean())}
    report(f"jpeg_decode_{device.type}", result)


if __name__ == "__main__":
    main()
