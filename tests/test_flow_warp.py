"""Warped flow: a synthetic camera pan/zoom (a known homography) plus an independently
moving object. After compensation the background flow is ~0 and the object keeps its motion."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import textured_frames
from tsn_pipeline.flow import compute_flow
from tsn_pipeline.flow.warp import WarpParams, estimate_homography, warp_back

H, W = 96, 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gray(rgb):
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def scene():
    """(prev, nxt, camera homography prev->nxt, object box in prev, object motion in nxt)."""
    import cv2

    bg = _gray(textured_frames(1, 2 * H, 2 * W, seed=5)[0]).astype(np.float32)
    obj = _gray(textured_frames(1, 24, 24, seed=9)[0]).astype(np.float32)
    obj = cv2.GaussianBlur(obj, (0, 0), 0.7) * 0.5 + 60      # darker, other texture
    c = np.array([[1, 0, -W / 2], [0, 1, -H / 2], [0, 0, 1]])
    zoom = np.diag([1.03, 1.03, 1.0])
    pan = np.array([[1, 0, 2.0], [0, 1, 1.0], [0, 0, 1]])
    cam = np.linalg.inv(c) @ pan @ zoom @ c                 # prev pixel -> nxt pixel
    crop = np.array([[1, 0, W / 2], [0, 1, H / 2], [0, 0, 1]])    # window into bg
    prev = cv2.warpPerspective(bg, crop, (W, H), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
    nxt = cv2.warpPerspective(bg, crop @ np.linalg.inv(cam), (W, H),
                              flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
    y0, x0 = 36, 52
    prev[y0:y0 + 24, x0:x0 + 24] = obj
    nxt[y0 + 3:y0 + 27, x0 - 3:x0 + 21] = obj               # object moves (-3, +3) px
    to_u8 = lambda a: np.clip(a + 0.5, 0, 255).astype(np.uint8)
    return to_u8(prev), to_u8(nxt), cam, (y0, x0), (-3.0, 3.0)


def test_warped_flow_removes_camera_motion_and_keeps_the_object():
    prev, nxt, cam, (y0, x0), motion = scene()
    out = compute_flow(prev[None], nxt[None], kinds=("tvl1", "warped"), backend="torch")
    raw, warped, hom = out["tvl1"][0], out["warped"][0], out["homography"][0]
    assert not out["identity"][0]
    # the estimated homography moves points like the camera (within 0.3 px over the frame)
    pts = np.array([[10, 10, 1], [W - 10, 10, 1], [10, H - 10, 1], [W - 10, H - 10, 1]], float).T
    proj = lambda m: (m @ pts)[:2] / (m @ pts)[2]
    assert np.abs(proj(hom / hom[2, 2]) - proj(cam)).max() < 0.3
    bg = np.ones((H, W), bool)
    bg[y0 - 10:y0 + 36, x0 - 10:x0 + 36] = False           # object and its surroundings
    bg[:10], bg[-10:], bg[:, :10], bg[:, -10:] = False, False, False, False
    mag = lambda f: np.sqrt((f ** 2).sum(0))
    assert mag(raw)[bg].mean() > 1.5                        # the camera moves ~2-4 px
    assert mag(warped)[bg].mean() < 0.15                    # ... and is compensated
    # the object: its motion relative to the compensated background is kept
    centre = np.array([x0 + 12 + motion[0], y0 + 12 + motion[1], 1.0])
    back = np.linalg.inv(cam) @ centre
    expected = back[:2] / back[2] - np.array([x0 + 12, y0 + 12])
    inner = (slice(None), slice(y0 + 6, y0 + 18), slice(x0 + 6, x0 + 18))
    got = np.median(warped[inner].reshape(2, -1), axis=1)
    assert np.abs(got - expected).max() < 0.5, (got, expected)
    assert np.linalg.norm(expected) > 4.0           # ~(-4.9, 1.9) px


def test_too_few_matches_fall_back_to_identity():
    flat = np.full((H, W), 128, np.uint8)
    Hm, info = estimate_homography(flat, flat, np.zeros((2, H, W), np.float32), WarpParams())
    assert info["identity"] and np.array_equal(Hm, np.eye(3))
    out = compute_flow(flat[None], flat[None], kinds=("warped",), backend="opencv")
    assert out["identity"].tolist() == [True]
    assert np.abs(out["warped"]).max() < 1e-6


def test_warp_back_copies_prev_outside():
    rng = np.random.default_rng(0)
    prev = rng.integers(0, 255, (H, W), dtype=np.uint8)
    nxt = rng.integers(0, 255, (H, W), dtype=np.uint8)
    shift = np.array([[1, 0, 5.0], [0, 1, 0], [0, 0, 1]])    # prev x -> nxt x + 5
    out = warp_back(prev, nxt, shift)
    assert np.array_equal(out[:, :W - 5], nxt[:, 5:])         # integer shift: exact samples
    assert np.array_equal(out[:, W - 4:], prev[:, W - 4:])    # H x outside nxt: from prev


def test_bad_warp_settings_are_refused():
    with pytest.raises(ValueError, match="SURF"):
        WarpParams(features="surf")
