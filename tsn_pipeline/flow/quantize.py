"""8-bit flow codec of TSN / dense_flow, and the flip helpers training uses.

Reads and writes nothing; pure numpy. Convention (docs/TSN.md, "Optical flow conventions"):

    q(v) = 255                          if v >  b
           0                            if v < -b
           round(255 * (v + b) / (2 b)) otherwise

with b = ``bound`` (TSN: 20 px). ``round`` is round-half-to-even, which is what dense_flow's
``cvRound`` does on x86 (SSE2 ``cvtsd2si``), evaluated in float64 here. Worked example with
b = 20: v = -20 -> 0, v = 20 -> 255, v = 0 -> round(127.5) = 128, v = 25 -> 255,
v = -0.0784314 (= -20/255) -> round(127.0) = 127.

``dequantize`` maps a code back to the centre of its bin: v = q * 2b / 255 - b (the error is
at most b / 255 inside the bound; values beyond the bound are clipped to +-b).
"""
from __future__ import annotations

import numpy as np

DEFAULT_BOUND = 20.0


def check_bound(bound: float) -> float:
    bound = float(bound)
    if not np.isfinite(bound) or bound <= 0:
        raise ValueError(f"flow bound {bound!r} must be a positive number of pixels "
                         "(TSN uses 20)")
    return bound


def quantize_flow(flow, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Float flow (any shape, pixels) -> uint8 codes with the TSN formula above."""
    b = check_bound(bound)
    v = np.asarray(flow, dtype=np.float64)
    q = np.rint(255.0 * (v + b) / (2.0 * b))
    q = np.where(v > b, 255.0, np.where(v < -b, 0.0, q))
    # NaN (never produced by TV-L1, but keep the output defined) -> the zero-flow code
    q = np.where(np.isnan(v), np.rint(127.5), q)
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize_flow(codes, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """uint8 codes -> float32 pixels: q * 2b / 255 - b (inverse of ``quantize_flow`` up to b/255)."""
    b = check_bound(bound)
    q = np.asarray(codes)
    if q.dtype != np.uint8:
        raise TypeError(f"dequantize_flow expects uint8 codes, got {q.dtype}")
    return (q.astype(np.float32) * np.float32(2.0 * b / 255.0) - np.float32(b)).astype(np.float32)


def flip_flow_quantized(x_codes: np.ndarray) -> np.ndarray:
    """Value change of the quantised x component under a horizontal flip: ``255 - x``.

    This only inverts the values; the caller mirrors the image itself (``x[..., ::-1]``).
    It is TSN's rule; note it is exact except where ``255 (v + b) / 2b`` falls on .5, where
    round-half-even makes ``255 - q(v)`` and ``q(-v)`` differ by one code.
    """
    x = np.asarray(x_codes)
    if x.dtype != np.uint8:
        raise TypeError(f"flip_flow_quantized expects uint8 codes, got {x.dtype}")
    return (255 - x).astype(np.uint8)


def flip_flow(x: np.ndarray) -> np.ndarray:
    """Value change of the float x component under a horizontal flip: ``-x``."""
    return -np.asarray(x)


def hflip_flow(flow: np.ndarray, quantized: bool) -> np.ndarray:
    """Mirror a flow stack ``(..., 2, H, W)`` (x first) left-right and invert its x component.

    ``quantized=True`` for uint8 codes (x -> 255 - x), False for float pixels (x -> -x).
    """
    f = np.asarray(flow)
    if f.ndim < 3 or f.shape[-3] != 2:
        raise ValueError(f"flow must be laid out (..., 2, H, W) with x first, got shape {f.shape}")
    out = f[..., ::-1].copy()
    out[..., 0, :, :] = flip_flow_quantized(out[..., 0, :, :]) if quantized else flip_flow(out[..., 0, :, :])
    return out
