"""Camera-motion compensation for warped TV-L1 flow (TSN's "warped optical flow", after
Wang & Schmid's improved dense trajectories, ICCV 2013).

For a pair (frame t, frame t+k) and the ordinary TV-L1 flow between them:

1. Point matches between the frames, from two sources (as iDT / dense_flow):
   - ORB (default) or SIFT keypoints, descriptors matched frame t+k -> frame t by brute
     force, a match allowed only when the keypoints are less than ``window`` (25) px apart in
     x and in y (OpenCV's ``windowedMatchingMask(25, 25)`` as iDT uses it);
   - up to ``max_corners`` (1000) Shi-Tomasi corners of frame t (quality 0.001, min distance
     3 px), each matched to itself displaced by the TV-L1 flow at its rounded position.
2. A homography H (frame t -> frame t+k) by RANSAC with a ``ransac_threshold`` of 1 px, when
   there are more than ``min_matches`` (50) matches; identity when there are not, or when
   RANSAC keeps ``min_inliers`` (25) or fewer inliers.
3. Frame t+k warped back onto frame t: warped(x) = I_{t+k}(H x), bilinear; where H x falls
   outside the image the pixel is copied from frame t (iDT's MyWarpPerspective).
4. TV-L1 between frame t and the warped frame (the caller does that step).

Differences from dense_flow, and why: SURF (patented, absent from PyPI OpenCV) is replaced by
ORB or SIFT; the previous frame's features are computed for the frame actually used (dense_flow
keeps the first frame's SURF features for the whole video); the corners are displaced by the
x and y flow of the right pixel (dense_flow reads y at a wrong index); there is no human
detector masking people out (iDT has one, dense_flow does not).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import numpy as np

FEATURES = ("orb", "sift")


@dataclass(frozen=True)
class WarpParams:
    features: str = "orb"          # "orb" | "sift" (SURF is non-free and not on PyPI)
    max_features: int = 1000       # keypoints per frame
    window: float = 25.0           # matches must be < window px apart in x and in y
    max_corners: int = 1000        # Shi-Tomasi corners displaced by the flow
    corner_quality: float = 0.001
    corner_min_distance: float = 3.0
    ransac_threshold: float = 1.0  # px
    min_matches: int = 50          # need more matches than this ...
    min_inliers: int = 25          # ... and more inliers than this, else identity

    def __post_init__(self):
        if self.features not in FEATURES:
            raise ValueError(f"features={self.features!r} unknown; expected one of {FEATURES} "
                             "(SURF is non-free and missing from PyPI OpenCV)")
        for name in ("max_features", "max_corners", "min_matches", "min_inliers"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"warp {name}={v!r} must be an integer >= 0")
        if self.max_features + self.max_corners == 0:
            raise ValueError("max_features and max_corners are both 0: no matches to fit a "
                             "homography to")
        for name in ("window", "corner_quality", "corner_min_distance", "ransac_threshold"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"warp {name}={v!r} must be a positive number")

    def to_dict(self) -> Dict:
        return asdict(self)


def _feature_matches(prev: np.ndarray, nxt: np.ndarray, params: WarpParams):
    """Descriptor matches (prev points, next points), each (M, 2) float32."""
    import cv2

    empty = (np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
    if params.max_features == 0:
        return empty
    if params.features == "orb":
        det = cv2.ORB_create(nfeatures=params.max_features)
        norm = cv2.NORM_HAMMING
    else:
        det = cv2.SIFT_create(nfeatures=params.max_features)
        norm = cv2.NORM_L2
    kp0, d0 = det.detectAndCompute(prev, None)
    kp1, d1 = det.detectAndCompute(nxt, None)
    if d0 is None or d1 is None or len(kp0) == 0 or len(kp1) == 0:
        return empty
    p0 = np.float32([k.pt for k in kp0])
    p1 = np.float32([k.pt for k in kp1])
    # query = next frame, train = previous frame (as iDT); windowed mask (n1, n0)
    mask = ((np.abs(p1[:, None, 0] - p0[None, :, 0]) < params.window)
            & (np.abs(p1[:, None, 1] - p0[None, :, 1]) < params.window)).astype(np.uint8)
    matches = cv2.BFMatcher(norm).match(d1, d0, mask)
    if not matches:
        return empty
    q = np.int64([m.queryIdx for m in matches])
    t = np.int64([m.trainIdx for m in matches])
    return p0[t], p1[q]


def _flow_matches(prev: np.ndarray, flow: np.ndarray, params: WarpParams):
    """Corners of ``prev`` and the same corners moved by ``flow (2, H, W)``."""
    import cv2

    if params.max_corners == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    pts = cv2.goodFeaturesToTrack(prev, params.max_corners, params.corner_quality,
                                  params.corner_min_distance)
    if pts is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    pts = pts.reshape(-1, 2)
    h, w = prev.shape
    x = np.clip(np.rint(pts[:, 0]).astype(np.int64), 0, w - 1)
    y = np.clip(np.rint(pts[:, 1]).astype(np.int64), 0, h - 1)
    p0 = np.stack([x, y], 1).astype(np.float32)
    p1 = p0 + np.stack([flow[0, y, x], flow[1, y, x]], 1)
    return p0, p1.astype(np.float32)


def estimate_homography(prev: np.ndarray, nxt: np.ndarray, flow: np.ndarray,
                        params: WarpParams = WarpParams()) -> Tuple[np.ndarray, Dict]:
    """Homography (3, 3) float64 mapping frame-t pixels onto frame t+k, and
    ``{"matches", "inliers", "identity"}``. ``prev``/``nxt`` gray uint8 (H, W); ``flow``
    the TV-L1 flow (2, H, W) from prev to nxt."""
    import cv2

    f0, f1 = _feature_matches(prev, nxt, params)
    c0, c1 = _flow_matches(prev, flow, params)
    p0 = np.concatenate([c0, f0]).astype(np.float32)
    p1 = np.concatenate([c1, f1]).astype(np.float32)
    info = {"matches": int(len(p0)), "inliers": 0, "identity": True}
    if len(p0) <= params.min_matches or len(p0) < 4:
        return np.eye(3), info
    H, inl = cv2.findHomography(p0, p1, cv2.RANSAC, params.ransac_threshold)
    if H is None or inl is None:
        return np.eye(3), info
    info["inliers"] = int(inl.sum())
    if info["inliers"] <= params.min_inliers or not np.all(np.isfinite(H)):
        return np.eye(3), info
    info["identity"] = False
    return H, info


def warp_back(prev: np.ndarray, nxt: np.ndarray, H: np.ndarray) -> np.ndarray:
    """``nxt`` seen from frame t: out(x) = nxt(H x) (bilinear), ``prev(x)`` where H x is
    outside the image. uint8 (H, W) in, uint8 out."""
    import cv2

    h, w = prev.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])
    X, Y, Z = np.asarray(H, np.float64) @ pts
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = (X / Z).reshape(h, w)
        my = (Y / Z).reshape(h, w)
    inside = np.isfinite(mx) & np.isfinite(my) & (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    mx = np.where(inside, mx, -1).astype(np.float32)
    my = np.where(inside, my, -1).astype(np.float32)
    out = cv2.remap(nxt, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.where(inside, out, prev).astype(np.uint8)


def stabilise(prev: np.ndarray, nxt: np.ndarray, flow: np.ndarray,
              params: WarpParams = WarpParams()):
    """(warped next frame, homography, info): steps 1-3 of the module docstring."""
    H, info = estimate_homography(prev, nxt, flow, params)
    if info["identity"]:
        return np.ascontiguousarray(nxt), H, info
    return warp_back(prev, nxt, H), H, info
