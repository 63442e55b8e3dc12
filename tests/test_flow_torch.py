"""Batched TV-L1 in PyTorch (CPU here; the CUDA path is the same code): known motion, OpenCV
CPU TV-L1 as a reference, batching invariance, OpenCV-compatible pyramid geometry."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import CLIPS
from tsn_pipeline.flow import backend_params
from tsn_pipeline.flow.opencv import tvl1_opencv
from tsn_pipeline.flow.tvl1_torch import TVL1Params, pyramid_sizes, resize_linear, tvl1

H, W = 72, 96
INNER = (slice(None), slice(8, -8), slice(8, -8))      # EPE away from the border


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small kernels on a shared 2-core box: one intra-op thread is fastest and fair to
    OpenCV, which runs single-threaded here too."""
    import cv2
    import torch

    old, old_cv = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(old)
    cv2.setNumThreads(old_cv)


@pytest.fixture(scope="module")
def texture():
    """A real frame (gray float, lightly smoothed), big enough to crop moved windows from."""
    import cv2

    from tsn_pipeline.videoio import read_video

    img = cv2.cvtColor(read_video(CLIPS / "TrumanShow_wave_f_nm_np1_fr_med_26.avi")[10],
                       cv2.COLOR_RGB2GRAY)
    return cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0)


def epe(flow, gt):
    return float(np.sqrt(((flow - gt)[INNER] ** 2).sum(0)).mean())


def fourier_shift(img, fx, fy):
    """img moved by (fx, fy) px with an ideal (band-limited) interpolator: no cubic kernel
    favours either OpenCV warp."""
    f = np.fft.fft2(img)
    ky = np.fft.fftfreq(img.shape[0])[:, None]
    kx = np.fft.fftfreq(img.shape[1])[None, :]
    return np.real(np.fft.ifft2(f * np.exp(-2j * np.pi * (kx * fx + ky * fy))))


def to_u8(x):
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


OY, OX = 80, 150


@pytest.mark.parametrize("shift", [(0.6, -0.35), (2.3, 1.7)])
def test_known_subpixel_translation(texture, shift):
    prev = to_u8(texture[OY:OY + H, OX:OX + W])
    nxt = to_u8(fourier_shift(texture, *shift)[OY:OY + H, OX:OX + W])
    gt = np.stack([np.full((H, W), shift[0]), np.full((H, W), shift[1])])
    e_torch = epe(tvl1(prev, nxt).numpy(), gt)
    e_cv = epe(tvl1_opencv(prev, nxt, backend_params("opencv")), gt)
    # measured on the real frame: torch 0.014 / 0.015 px, OpenCV CPU 0.046 / 0.068 px
    assert e_torch < 0.05
    assert e_cv < 0.12
    assert e_torch <= e_cv + 0.02          # stated margin: 0.02 px


def test_known_smooth_warp(texture):
    import cv2

    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)

    def d(x, y):    # a smooth displacement field, up to ~1.6 px
        return np.stack([1.2 * np.sin(2 * np.pi * y / H) + 0.4, 0.8 * np.cos(2 * np.pi * x / W) - 0.3])

    # nxt(p) = T(p - d(p)), prev = T(x): the flow f solves f(x) = d(x + f(x))
    gt = d(xs, ys)
    for _ in range(30):
        gt = d(xs + gt[0], ys + gt[1])
    dd = d(xs, ys)

    def sample(mx, my):
        return to_u8(cv2.remap(texture, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_CUBIC))

    prev, nxt = sample(xs + OX, ys + OY), sample(xs + OX - dd[0], ys + OY - dd[1])
    e_torch = epe(tvl1(prev, nxt).numpy(), gt)
    e_cv = epe(tvl1_opencv(prev, nxt, backend_params("opencv")), gt)
    # measured: torch 0.17 px, OpenCV CPU 0.19 px (TV regularisation smooths the sine)
    assert e_torch < 0.25
    assert e_torch <= e_cv + 0.02


@pytest.fixture(scope="module")
def real_pairs():
    """Consecutive gray frames of two real clips at 128x96: (prev (N,H,W), nxt (N,H,W))."""
    import cv2

    from tsn_pipeline.videoio import read_video

    prev, nxt = [], []
    for clip, idx in [("TrumanShow_wave_f_nm_np1_fr_med_26.avi", [5, 40]),
                      ("v_SoccerJuggling_g23_c01.avi", [30, 120, 200])]:
        g = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
                      for f in read_video(CLIPS / clip, size=(128, 96))])
        prev += [g[i] for i in idx]
        nxt += [g[i + 1] for i in idx]
    return np.stack(prev), np.stack(nxt)


def test_one_warp_equals_opencv_cpu(real_pairs):
    """Same arithmetic as OpenCV CPU: with one level and one warp (no float drift through
    re-warping yet) the torch solver in OpenCV-CPU mode reproduces cv2 to float rounding."""
    prev, nxt = real_pairs[0][3], real_pairs[1][3]
    p = TVL1Params(nscales=1, warps=1, epsilon=0.0, iterations=60, interp="cpu", median=5,
                   check_every=1)
    diff = np.abs(tvl1(prev, nxt, p).numpy() - tvl1_opencv(prev, nxt, p))
    assert diff.max() < 1e-4          # measured 7e-7


def test_close_to_opencv_cpu_on_real_clips(real_pairs):
    prev, nxt = real_pairs
    cv = np.stack([tvl1_opencv(a, b, backend_params("opencv")) for a, b in zip(prev, nxt)])
    closest = tvl1(prev, nxt, TVL1Params(interp="cpu", median=5, check_every=1)).numpy()
    default = tvl1(prev, nxt).numpy()
    mean_epe = lambda f: float(np.sqrt(((f - cv) ** 2).sum(1)).mean())
    # measured on these 5 pairs (mean flow 0.01-0.97 px): 0.018 px with OpenCV CPU's warp,
    # median filter and stopping test; 0.035 px with the defaults (OpenCV CUDA's choices)
    assert mean_epe(closest) < 0.04
    assert mean_epe(default) < 0.08
    assert np.sqrt((cv ** 2).sum(1)).mean() > 0.2      # the pairs do move


def test_batch_gives_the_same_flow_as_each_pair_alone(real_pairs):
    prev, nxt = real_pairs[0][1:4], real_pairs[1][1:4]
    stats = {}
    batched = tvl1(prev, nxt, stats=stats).numpy()
    alone = np.stack([tvl1(a, b).numpy() for a, b in zip(prev, nxt)])
    assert batched.shape == (3, 2, 96, 128)
    np.testing.assert_allclose(batched, alone, atol=1e-4)
    # converged pairs left the batch: fewer pair-iterations than 3 pairs x all iterations
    assert stats["pair_iterations"] < 3 * 5 * 5 * 300


def test_pyramid_and_resize_match_cv2():
    import cv2

    rng = np.random.default_rng(0)
    img = (rng.random((256, 340)) * 255).astype(np.float32)
    sizes = pyramid_sizes(256, 340, TVL1Params())
    assert sizes == [(256, 340), (205, 272), (164, 218), (131, 174), (105, 139)]
    cur = img
    for h, w in sizes[1:]:
        cur = cv2.resize(cur, None, fx=0.8, fy=0.8)
        assert cur.shape == (h, w)
    assert pyramid_sizes(40, 30, TVL1Params()) == [(40, 30), (32, 24), (26, 19)]   # 15 < 16 stops
    import torch

    down = resize_linear(torch.from_numpy(img)[None], (205, 272), 0.8)[0].numpy()
    np.testing.assert_allclose(down, cv2.resize(img, None, fx=0.8, fy=0.8), atol=1e-3)
    small = img[:105, :139]
    up = resize_linear(torch.from_numpy(small)[None], (131, 174))[0].numpy()
    np.testing.assert_allclose(up, cv2.resize(small, (174, 131)), atol=5e-3)   # values 0..255


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="tau"):
        TVL1Params(tau=0.5)
    with pytest.raises(ValueError, match="interp"):
        TVL1Params(interp="linear")
    with pytest.raises(ValueError, match="shape"):
        tvl1(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 9), np.uint8))


def test_median_filters_match_opencv():
    """The torch median (used on CUDA) equals cv2.medianBlur (used on CPU), borders included."""
    import cv2
    import torch

    from tsn_pipeline.flow.tvl1_torch import median_filter, median_unfold

    u = np.random.default_rng(1).normal(size=(2, 23, 31)).astype(np.float32)
    ref = np.stack([cv2.medianBlur(x, 5) for x in u])
    assert np.array_equal(median_unfold(torch.from_numpy(u), 5).numpy(), ref)
    assert np.array_equal(median_filter(torch.from_numpy(u), 5).numpy(), ref)
    assert np.array_equal(median_filter(torch.from_numpy(u), 0).numpy(), u)


def test_compiled_loop_agrees_with_eager(real_pairs):
    """The compiled CPU loop (flow.native's C kernels) on real frames: the last-bit
    differences of tests/test_flow_native.py, and the stopping tests they can move by an
    iteration, change the flow by well under a thousandth of a pixel on average."""
    from tsn_pipeline.flow.native import cpu_kernels

    assert cpu_kernels() is not None, "the C kernels cannot be built here"
    prev, nxt = real_pairs[0][:3], real_pairs[1][:3]
    params = TVL1Params(nscales=3)
    s_c, s_e = {}, {}
    compiled = tvl1(prev, nxt, params, compile=True, stats=s_c).numpy()
    eager = tvl1(prev, nxt, params, compile=False, stats=s_e).numpy()
    d = np.sqrt(((compiled - eager) ** 2).sum(1))
    assert d.mean() < 1e-3 and np.percentile(d, 99) < 0.01, (d.mean(), d.max())
    assert abs(s_c["pair_iterations"] - s_e["pair_iterations"]) <= 0.02 * s_e["pair_iterations"]


@pytest.mark.parametrize("check_every", [0, 3])
def test_unrolled_iterations_give_the_same_flow(real_pairs, check_every):
    """The CUDA default runs 8 iterations per call between stopping tests; same numbers."""
    prev, nxt = real_pairs[0][2:4], real_pairs[1][2:4]
    p = TVL1Params(nscales=3, check_every=check_every)
    s1, s8 = {}, {}
    one = tvl1(prev, nxt, p, unroll=1, stats=s1).numpy()
    eight = tvl1(prev, nxt, p, unroll=8, stats=s8).numpy()
    assert np.array_equal(one, eight)
    assert s1 == s8
