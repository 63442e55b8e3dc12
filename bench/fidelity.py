"""Figures of docs/TRAINING.md's "Differences from tsn-pytorch": our input pipeline vs PIL.

On the frames of a real clip (tests/data, resized to 340x256 as `tsn decode` stores them):

* resize: ``transforms.resize`` (torch bilinear, antialiased) and plain ``cv2.INTER_LINEAR``
  against PIL's ``BILINEAR`` (what tsn-pytorch resizes with), in grey levels, for the sizes
  training and testing use (shrinking 256 -> 224, 340x256 -> 224, 256 -> 112; enlarging
  192 -> 224);
* JPEG decoding: OpenCV's ``imdecode`` (what the shard reader uses) against PIL's on the same
  bytes;
* time per training transform (3 segments; RGB and 5-field flow stacks), one thread.

Prints and writes bench/results/fidelity.json.

    python bench/fidelity.py
"""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import write_result  # noqa: E402

CLIP = REPO / "tests" / "data" / "v_SoccerJuggling_g23_c01.avi"


def frames(n: int = 40) -> list:
    import cv2

    cap = cv2.VideoCapture(str(CLIP))
    out = []
    while len(out) < n:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.resize(bgr, (340, 256), interpolation=cv2.INTER_AREA))
    cap.release()
    return out


def main() -> dict:
    import cv2
    import torch
    from PIL import Image

    from tsn_pipeline import transforms

    torch.set_num_threads(1)
    bgr = frames()
    rgb = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in bgr]
    cases = {"crop 256x256 -> 224": (slice(None), slice(42, 298), 224),
             "frame 340x256 -> 224x224": (slice(None), slice(None), 224),
             "crop 256x256 -> 112": (slice(None), slice(42, 298), 112),
             "crop 192x192 -> 224 (enlarging)": (slice(0, 192), slice(0, 192), 224)}
    resize = {}
    for name, (rows, cols, size) in cases.items():
        d_ours, d_cv = [], []
        for f in rgb:
            crop = np.ascontiguousarray(f[rows, cols])
            pil = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)).astype(int)
            ours = transforms.resize(crop[None, None], "hwc", size, size)[0, 0]
            plain = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
            d_ours.append(np.abs(ours - pil))
            d_cv.append(np.abs(plain - pil))
        d_ours, d_cv = np.stack(d_ours), np.stack(d_cv)
        resize[name] = {"ours_max": int(d_ours.max()), "ours_mean": round(float(d_ours.mean()), 4),
                        "cv2_linear_max": int(d_cv.max()),
                        "cv2_linear_mean": round(float(d_cv.mean()), 4)}
    jpeg = []
    for f in bgr:
        ok, buf = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])
        a = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(int)
        b = np.asarray(Image.open(io.BytesIO(buf.tobytes())).convert("RGB"))
        jpeg.append(int(np.abs(a - b).max()))
    rng = np.random.default_rng(0)
    clips = {"rgb": rng.integers(0, 256, (3, 1, 256, 340, 3), dtype=np.uint8),
             "flow": rng.integers(0, 256, (3, 5, 2, 256, 340), dtype=np.uint8)}
    timing = {}
    for modality, clip in clips.items():
        t = transforms.train_transform(modality, 224)
        r = np.random.default_rng(1)
        t(clip, r)
        t0 = time.perf_counter()
        for _ in range(50):
            t(clip, r)
        timing[modality] = round((time.perf_counter() - t0) / 50 * 1e3, 2)
    result = {"frames": len(rgb), "clip": CLIP.name, "resize_vs_pil_grey_levels": resize,
              "jpeg_cv2_vs_pil_max_difference": max(jpeg),
              "train_transform_ms_per_clip_3_segments": timing}
    return result


if __name__ == "__main__":
    res = main()
    print(write_result("fidelity", res).read_text())
