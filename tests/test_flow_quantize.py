"""Flow codec: TSN's 8-bit quantisation bit-exact on a hand-computed table; flip helpers."""
from __future__ import annotations

import numpy as np
import pytest

from tsn_pipeline.flow.quantize import (dequantize_flow, flip_flow, flip_flow_quantized,
                                        hflip_flow, quantize_flow)

# v (px), bound, expected code: q = 255 if v > b; 0 if v < -b; else round(255 (v + b) / 2b)
# computed by hand; .5 cases round half to even (cvRound), e.g. 127.5 -> 128, 0.5 -> 0.
TABLE = [
    (-20.0, 20, 0), (20.0, 20, 255), (-20.001, 20, 0), (20.001, 20, 255),
    (-1e9, 20, 0), (1e9, 20, 255), (0.0, 20, 128),                     # 127.5 -> 128 (even)
    (-20 / 255, 20, 127),                                              # exactly 127.0
    (20 / 255, 20, 128),                                               # exactly 128.0
    # bound 127.5 makes 255 (v + b) / 2b = v + 127.5 exact: ties at integer v
    (1.0, 127.5, 128), (2.0, 127.5, 130), (-127.0, 127.5, 0), (-126.0, 127.5, 2),
    (-20 + 40 / 255 * 0.49, 20, 0), (-20 + 40 / 255 * 0.51, 20, 1),
    (1.0, 20, 134),                                                    # 133.875 -> 134
    (-1.0, 20, 121),                                                   # 121.125 -> 121
    (5.0, 10, 191),                                                    # 191.25 -> 191
    (-7.5, 10, 32),                                                    # 31.875 -> 32
    (10.0, 10, 255), (-10.0, 10, 0), (0.25, 1, 159),                   # 159.375 -> 159
]


@pytest.mark.parametrize("v,bound,code", TABLE)
def test_quantize_matches_the_tsn_formula_on_edges(v, bound, code):
    assert quantize_flow(np.array([v], np.float64), bound)[0] == code


def test_quantize_array_dtype_shape_and_float32_input():
    v = np.array([[-25.0, -20.0, 0.0], [1.0, 20.0, 30.0]], np.float32)
    q = quantize_flow(v, 20)
    assert q.dtype == np.uint8 and q.shape == v.shape
    assert q.tolist() == [[0, 0, 128], [134, 255, 255]]


def test_dequantize_inverts_within_half_a_bin():
    v = np.linspace(-20, 20, 1001)
    back = dequantize_flow(quantize_flow(v, 20), 20)
    assert back.dtype == np.float32
    assert np.abs(back - v).max() <= 20 / 255 + 1e-5
    assert dequantize_flow(np.array([0, 255], np.uint8), 20).tolist() == [-20.0, 20.0]


@pytest.mark.parametrize("bound", [0, -1, float("nan")])
def test_bad_bound_is_refused(bound):
    with pytest.raises(ValueError, match="bound"):
        quantize_flow(np.zeros(3), bound)


def test_flip_inverts_x_quantized_and_float():
    rng = np.random.default_rng(0)
    flow = rng.uniform(-25, 25, size=(3, 2, 5, 7)).astype(np.float32)    # (T, 2, H, W)
    q = quantize_flow(flow, 20)
    # value rule: 255 - x on codes, -x on pixels
    assert np.array_equal(flip_flow_quantized(np.array([0, 128, 134, 255], np.uint8)),
                          [255, 127, 121, 0])
    assert np.array_equal(flip_flow(np.array([1.5, -2.0])), [-1.5, 2.0])
    # a mirrored scene: the x flow at mirrored position x' = W-1-x is -u(x); y is unchanged
    fq = hflip_flow(q, quantized=True)
    ff = hflip_flow(flow, quantized=False)
    assert np.array_equal(ff[:, 0], -flow[:, 0, :, ::-1])
    assert np.array_equal(ff[:, 1], flow[:, 1, :, ::-1])
    assert np.array_equal(fq[:, 0], 255 - q[:, 0, :, ::-1])
    assert np.array_equal(fq[:, 1], q[:, 1, :, ::-1])
    # quantising the flipped float flow agrees with flipping the codes (no .5 ties here)
    assert np.abs(quantize_flow(ff, 20).astype(int) - fq.astype(int)).max() <= 1
    assert (quantize_flow(ff, 20) == fq).mean() > 0.99
    with pytest.raises(ValueError, match="2, H, W"):
        hflip_flow(np.zeros((3, 5, 7)), quantized=False)
