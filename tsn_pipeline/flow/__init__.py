"""Optical flow stage: TV-L1 and warped TV-L1 between grayscale frames (see docs/FLOW.md).

Reads frame shards (``frames-<i>-of-<n>.h5`` from ``tsn decode``), writes flow shards
(``flow-<i>-of-<n>.h5``). Modules: ``quantize`` (TSN's 8-bit codec, flip helpers), ``reader``
(read flow shards), ``tvl1_torch`` (batched TV-L1 in PyTorch), ``opencv`` (OpenCV CPU / CUDA
wrappers), ``warp`` (camera-motion compensation), ``stage`` (frame shards -> flow shards).
``compute_flow`` is the one numeric entry point; heavy libraries are imported inside it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .quantize import (DEFAULT_BOUND, dequantize_flow, flip_flow, flip_flow_quantized,
                       hflip_flow, quantize_flow)
from .reader import read_flow

BACKENDS = ("auto", "opencv-cuda", "torch", "opencv")
from ..modalities import FLOW_KINDS

__all__ = ["BACKENDS", "DEFAULT_BOUND", "FLOW_KINDS", "backend_params", "compute_flow",
           "dequantize_flow", "flip_flow", "flip_flow_quantized", "hflip_flow", "quantize_flow",
           "read_flow", "resolve_backend"]


def resolve_backend(backend: str = "auto", device: Optional[str] = None,
                    compile: bool = True) -> Tuple[str, str]:
    """(backend, device) to run. ``auto``: opencv-cuda when cv2 has a CUDA device, else torch
    on CUDA when torch sees one, else on CPU torch when it can compile its loop (a C
    compiler is present and ``compile``) and OpenCV CPU otherwise: bench/flow.py measured the
    compiled loop (``flow.native``) 7.5-8.1x OpenCV CPU per core with the same parameters (AMD EPYC)
    and the eager one 0.8-1.3x.
    Raises ``opencv.BackendUnavailable`` when an explicit request cannot run."""
    from .opencv import BackendUnavailable, opencv_cuda_available, require_opencv_cuda

    if backend not in BACKENDS:
        raise ValueError(f"flow backend {backend!r} unknown; expected one of {BACKENDS}")
    if backend == "opencv-cuda":
        require_opencv_cuda()
        return backend, device or "cuda"
    if backend == "opencv":
        return backend, "cpu"
    from ..devices import resolve_device

    try:
        device = str(resolve_device(device))
    except ValueError as exc:
        raise BackendUnavailable(f"--device {device}: {exc}") from None
    if backend == "torch":
        return backend, device
    if opencv_cuda_available():
        return "opencv-cuda", "cuda"
    if device.startswith("cuda"):
        return "torch", device
    from .native import compiler

    return ("torch", "cpu") if (compile and compiler()) else ("opencv", "cpu")


def backend_params(backend: str, params=None):
    """The TV-L1 settings a backend really runs with.

    ``params=None``: the backend's defaults (torch / opencv-cuda: OpenCV CUDA's; opencv: the
    same numbers plus OpenCV CPU's 5x5 median filter). Settings a backend cannot change are
    set to what it does (opencv: cubic remap and a test every iteration; opencv-cuda: CUDA
    warp, sparse test, no median filter), so the config written to the shard is true.
    """
    from .tvl1_torch import TVL1Params

    if params is None:
        params = TVL1Params(interp="cpu", median=5, check_every=1) if backend == "opencv" \
            else TVL1Params()
    if backend == "opencv":
        return dataclasses.replace(params, interp="cpu", check_every=1)
    if backend == "opencv-cuda":
        if params.median > 1:
            raise ValueError("OpenCV's CUDA TV-L1 has no median filter; use median=0 or "
                             "--backend torch")
        return dataclasses.replace(params, interp="cuda", check_every=0)
    return params


def compute_flow(prev: np.ndarray, nxt: np.ndarray, kinds: Sequence[str] = ("tvl1",),
                 backend: str = "torch", params=None, warp=None, device: str = "cpu",
                 compile: bool = False, batch_size: int = 64) -> Dict[str, np.ndarray]:
    """Flow for pairs of gray uint8 frames ``prev``/``nxt`` (N, H, W) -> dict of float32 arrays.

    Keys: each of ``kinds`` ("tvl1", "warped") -> (N, 2, H, W) pixels, x first, with
    prev(x) ~ nxt(x + flow(x)); with "warped" also "homography" (N, 3, 3) and "identity" (N,)
    (pairs where too few matches left the camera motion uncompensated). ``backend`` is a
    resolved one ("torch", "opencv", "opencv-cuda"); the torch backend runs ``batch_size``
    pairs at once on ``device``.
    """
    from .warp import WarpParams, stabilise

    prev, nxt = np.asarray(prev), np.asarray(nxt)
    if prev.shape != nxt.shape or prev.ndim != 3:
        raise ValueError(f"prev {prev.shape} and nxt {nxt.shape} must both be (N, H, W)")
    if prev.dtype != np.uint8 or nxt.dtype != np.uint8:
        raise TypeError("compute_flow expects gray uint8 frames")
    bad = [k for k in kinds if k not in FLOW_KINDS]
    if bad or not kinds:
        raise ValueError(f"flow kinds {list(kinds)}: expected a non-empty subset of {FLOW_KINDS}")
    params = backend_params(backend, params)
    warp = warp or WarpParams()
    tvl1_fn = _pair_function(backend, params, device, compile, batch_size)
    base = tvl1_fn(prev, nxt)
    out = {}
    if "tvl1" in kinds:
        out["tvl1"] = base
    if "warped" in kinds:
        warped_frames = np.empty_like(nxt)
        hom = np.zeros((len(prev), 3, 3))
        ident = np.zeros(len(prev), bool)

        def one(i):
            warped_frames[i], hom[i], info = stabilise(prev[i], nxt[i], base[i], warp)
            ident[i] = info["identity"]

        # OpenCV releases the GIL: threads keep the camera-motion step off the critical path
        # of a fast GPU batch (each pair is independent, so the result does not depend on it);
        # on CPU each worker process has one core
        threads = min(8, os.cpu_count() or 1, len(prev))
        if threads > 1 and backend == "torch" and str(device).startswith("cuda"):
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, range(len(prev))))
        else:
            for i in range(len(prev)):
                one(i)
        out["warped"] = tvl1_fn(prev, warped_frames)
        out["homography"] = hom
        out["identity"] = ident
    return out


def _pair_function(backend: str, params, device: str, compile: bool, batch_size: int):
    """A function (prev (N,H,W), nxt (N,H,W)) -> float32 (N, 2, H, W) for one backend."""
    if backend == "torch":
        from .tvl1_torch import tvl1_numpy

        return lambda a, b: tvl1_numpy(a, b, params, device=device, compile=compile,
                                       batch_size=batch_size)
    if backend in ("opencv", "opencv-cuda"):
        from . import opencv

        make, run = ((opencv.make_cpu_tvl1, opencv.tvl1_opencv) if backend == "opencv"
                     else (opencv.make_cuda_tvl1, opencv.tvl1_opencv_cuda))
        algo = make(params)

        def pairs(a, b):
            h, w = a.shape[1:]
            if len(a) == 0:
                return np.zeros((0, 2, h, w), np.float32)
            return np.stack([run(a[i], b[i], params, algo) for i in range(len(a))])
        return pairs
    raise ValueError(f"flow backend {backend!r} is not a resolved backend "
                     "(torch, opencv, opencv-cuda); call resolve_backend first")
