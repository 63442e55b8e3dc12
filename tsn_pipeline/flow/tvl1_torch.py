"""Batched TV-L1 optical flow in PyTorch: the same code on CUDA and on CPU, float32.

The method is Zach, Pock & Bischof's duality-based TV-L1 ("A duality based approach for
realtime TV-L1 optical flow", DAGM 2007) as described by Sanchez Perez, Meinhardt-Llopis &
Facciolo, "TV-L1 Optical Flow Estimation", IPOL 2013, and as implemented by OpenCV's
``cv::cuda::OpticalFlowDual_TVL1`` (what dense_flow runs):

    for each scale s, coarse to fine (sizes round like cv2.resize, scale step 0.8):
        p = 0
        for each warp:
            I1w, I1wx, I1wy = bicubic(I1, I1x, I1y at x + u)        # warp the second image
            grad = |grad I1w|^2 ;  rho_c = I1w - grad I1w . u - I0
            for n < iterations while not converged:
                rho = rho_c + grad I1w . u                          # linearised residual
                v   = u + TH(rho)                                   # thresholding step
                u   = v + theta div p                               # primal step
                p   = (p + tau/theta grad u) / (1 + tau/theta |grad u|)   # dual step
        u = resize(u, next size) / scale_step

A whole batch of pairs of one size runs at once: ``tvl1(prev (N,H,W), nxt (N,H,W))``. Pairs
converge at different speeds (most after ~30 iterations per warp, a few need all 300), so
each pair has its own stopping test and converged pairs leave the batch (their state is
written back and the active tensors are compacted); a batch never waits on its slowest pair
with the others still computing. A pair's flow is therefore the same alone or in any batch
(see tests/test_flow_torch.py).

Where OpenCV's CPU and CUDA implementations differ, ``TVL1Params`` exposes the choice:

- ``interp="cuda"`` (default): the CUDA warp, Keys bicubic with a = -0.5, taps clamped to the
  image, weights normalised by their sum. ``interp="cpu"``: ``cv2.remap(INTER_CUBIC)`` as the
  CPU code does, a = -0.75, taps outside the image read 0, coordinates rounded to 1/32 px.
- ``median=5``: OpenCV CPU's 5x5 median filter of u before every block of ``median_every``
  (30) iterations; 0 (default) is CUDA's "no median filter".
- ``check_every=0`` (default): CUDA's sparse stopping test (measure the update at odd n, then
  skip about error/epsilon iterations before measuring again); ``k > 0`` measures every k
  iterations (1 = OpenCV CPU, which tests after every iteration).

The per-iteration update is one pure function, ``tvl1_step``, and the warp's constants another,
``warp_terms``; ``compile=True`` runs compiled forms of both: on CUDA ``torch.compile`` (Triton
kernels), on CPU the same two functions written in C (``flow.native``: built once per machine
in ~2 s, loaded by a new process in milliseconds). That is what makes it fast. The
results equal eager mode's up to float rounding.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

INTERPS = ("cuda", "cpu")
MIN_SIZE = 16          # OpenCV stops adding scales when a side would be < 16 px
FLT_EPSILON = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class TVL1Params:
    """TV-L1 settings. Defaults are OpenCV CUDA's (what dense_flow used for TSN)."""

    tau: float = 0.25            # time step of the dual update
    lambda_: float = 0.15        # data-term weight (smaller: smoother flow)
    theta: float = 0.3           # coupling of u and v
    nscales: int = 5             # pyramid levels (fewer when a side would drop below 16 px)
    warps: int = 5               # warpings per level
    epsilon: float = 0.01        # stop when the mean squared update of u is below epsilon^2
    iterations: int = 300        # maximum iterations per warp
    scale_step: float = 0.8      # pyramid down-scaling factor
    interp: str = "cuda"         # "cuda" (Keys a=-0.5, clamped) | "cpu" (cv2.remap cubic, zeros)
    median: int = 0              # 0: none (CUDA); 5: OpenCV CPU's 5x5 median filter
    median_every: int = 30       # iterations between median filters (OpenCV CPU innerIterations)
    check_every: int = 0         # 0: CUDA's sparse stopping test; k: test every k iterations

    def __post_init__(self):
        for name in ("tau", "lambda_", "theta", "scale_step"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"TV-L1 {name.rstrip('_')}={v!r} must be a positive number")
        if not 0 < self.scale_step < 1:
            raise ValueError(f"scale step {self.scale_step} must be in (0, 1) (OpenCV uses 0.8)")
        if self.tau > 0.25 + 1e-12:
            raise ValueError(f"tau={self.tau} > 0.25: the dual iteration is only guaranteed to "
                             "converge for tau <= 1/4 (use 0.25)")
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon >= 0):
            raise ValueError(f"epsilon={self.epsilon!r} must be >= 0 (0: always run all iterations)")
        for name in ("nscales", "warps", "iterations", "median_every"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"TV-L1 {name}={v!r} must be an integer >= 1")
        if self.interp not in INTERPS:
            raise ValueError(f"interp={self.interp!r} unknown; expected one of {INTERPS}")
        if self.median not in (0, 1, 3, 5):
            raise ValueError(f"median={self.median!r}: use 0 (off), 3 or 5 (OpenCV CPU: 5)")
        if not (isinstance(self.check_every, int) and self.check_every >= 0):
            raise ValueError(f"check_every={self.check_every!r} must be an integer >= 0 "
                             "(0: OpenCV CUDA's sparse test)")

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["lambda"] = d.pop("lambda_")
        return d

    @classmethod
    def from_dict(cls, d: Dict) -> "TVL1Params":
        d = dict(d)
        if "lambda" in d:
            d["lambda_"] = d.pop("lambda")
        return cls(**d)


# -- pyramid geometry -------------------------------------------------------------------------
def pyramid_sizes(height: int, width: int, params: TVL1Params) -> List[Tuple[int, int]]:
    """(H, W) of each level, finest first, as ``cv2.resize(src, None, fx=step, fy=step)``
    makes them: each level rounds ``size * step`` of the previous one (round half to even,
    like cvRound); a level with a side < 16 is not used. 340x256 -> 272x205 -> 218x164 ->
    174x131 -> 139x105."""
    sizes = [(int(height), int(width))]
    for _ in range(1, params.nscales):
        h, w = sizes[-1]
        nh, nw = int(round(h * params.scale_step)), int(round(w * params.scale_step))
        if nh < MIN_SIZE or nw < MIN_SIZE:
            break
        sizes.append((nh, nw))
    return sizes


def _linear_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """(n_out, n_in) float32 matrix of cv2.resize's INTER_LINEAR along one axis.

    ``scale`` is source pixels per destination pixel (cv2: 1/fx when fx is given, else
    n_in/n_out); source x = (dx + 0.5) * scale - 0.5, clamped to the image like OpenCV.
    """
    m = np.zeros((n_out, n_in), np.float64)
    for dx in range(n_out):
        fx = np.float32((dx + 0.5) * scale - 0.5)
        sx = int(np.floor(fx))
        fx = float(np.float32(fx - sx))
        if sx < 0:
            sx, fx = 0, 0.0
        if sx >= n_in - 1:
            sx, fx = n_in - 1, 0.0
        m[dx, sx] += np.float32(1.0 - fx)
        m[dx, min(sx + 1, n_in - 1)] += np.float32(fx)
    return m.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _linear_matrix_cached(n_in: int, n_out: int, scale: float) -> np.ndarray:
    return _linear_matrix(n_in, n_out, scale)


def resize_linear(x, size: Tuple[int, int], scale: Optional[float] = None):
    """Bilinear resize of ``x (..., H, W)`` to ``size`` with cv2.resize's sampling grid.

    ``scale``: the factor given to cv2 as fx=fy (down-scaling the pyramid); None: the size
    ratio (cv2 with dsize, as for up-scaling the flow). Separable: rows then columns.
    """
    import torch

    h_in, w_in = x.shape[-2:]
    h_out, w_out = size
    sx = 1.0 / scale if scale else w_in / w_out
    sy = 1.0 / scale if scale else h_in / h_out
    mx = torch.from_numpy(_linear_matrix_cached(w_in, w_out, sx)).to(x.device)
    my = torch.from_numpy(_linear_matrix_cached(h_in, h_out, sy)).to(x.device)
    return torch.matmul(my, torch.matmul(x, mx.T))


# -- image operators --------------------------------------------------------------------------
def centered_gradient(img):
    """Central differences with clamped borders (OpenCV's centeredGradient): (N,H,W) -> 2x."""
    import torch.nn.functional as F

    p = F.pad(img.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    gx = 0.5 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2])
    gy = 0.5 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1])
    return gx, gy


def _cubic_weights(t, a: float):
    """Keys cubic weights of the 4 taps at offsets -1, 0, 1, 2 for fractional position t."""
    t1, t2 = t + 1.0, 1.0 - t
    w0 = ((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * t2 - (a + 3)) * t2 * t2 + 1
    w3 = 1.0 - w0 - w1 - w2
    return (w0, w1, w2, w3)


def warp_bicubic(images, u1, u2, interp: str):
    """Sample ``images (N, C, H, W)`` at (x + u1, y + u2): the backward warp of TV-L1.

    ``interp="cuda"``: Keys a=-0.5, clamp-to-edge taps, normalised by the weight sum
    (OpenCV CUDA's warpBackwardKernel). ``interp="cpu"``: a=-0.75, coordinates rounded to
    1/32 px, taps outside the image read 0 (cv2.remap INTER_CUBIC, BORDER_CONSTANT).
    """
    import torch

    n, c, h, w = images.shape
    ys = torch.arange(h, device=images.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=images.device, dtype=torch.float32).view(1, 1, w)
    wx, wy = xs + u1, ys + u2
    if interp == "cpu":
        # cv2.remap: X = cvRound(x * 32); integer part X >> 5, fraction (X & 31) / 32
        wx, wy = torch.round(wx * 32) / 32, torch.round(wy * 32) / 32
        a = -0.75
    else:
        a = -0.5
    fx, fy = torch.floor(wx), torch.floor(wy)
    tx, ty = wx - fx, wy - fy
    cx = _cubic_weights(tx, a)
    cy = _cubic_weights(ty, a)
    ix0, iy0 = fx.long() - 1, fy.long() - 1
    flat = images.reshape(n, c, h * w)
    out = torch.zeros_like(images)
    wsum = torch.zeros_like(u1) if interp == "cuda" else None
    for j in range(4):
        iy = iy0 + j
        if interp == "cuda":
            iy_c = iy.clamp(0, h - 1)
        else:
            vy = (iy >= 0) & (iy < h)
            iy_c = iy.clamp(0, h - 1)
        for i in range(4):
            ix = ix0 + i
            wgt = cy[j] * cx[i]
            if interp == "cuda":
                wsum = wsum + wgt
            else:
                wgt = wgt * (vy & (ix >= 0) & (ix < w))
            idx = (iy_c * w + ix.clamp(0, w - 1)).reshape(n, 1, h * w).expand(n, c, h * w)
            out = out + wgt.unsqueeze(1) * torch.gather(flat, 2, idx).reshape(n, c, h, w)
    if interp == "cuda":
        out = out / wsum.unsqueeze(1)
    return out


def median_filter(u, k: int):
    """k x k median of ``u (N, H, W)``, replicated borders (cv2.medianBlur on float32)."""
    if k <= 1:
        return u
    n, h, w = u.shape
    if u.device.type == "cpu" and k in (3, 5):
        import cv2
        import torch

        # OpenCV's own filter: exact, and ~20x faster than sorting unfolded patches on CPU
        arr = u.contiguous().numpy()
        return torch.from_numpy(np.stack([cv2.medianBlur(arr[i], k) for i in range(n)]))
    return median_unfold(u, k)


def median_unfold(u, k: int):
    """k x k median of ``u (N, H, W)`` with replicated borders, in torch (any device)."""
    import torch.nn.functional as F

    n, h, w = u.shape
    r = k // 2
    p = F.pad(u.unsqueeze(1), (r, r, r, r), mode="replicate")
    patches = F.unfold(p, k)                       # (N, k*k, H*W)
    return patches.median(dim=1).values.reshape(n, h, w)


def tvl1_step(u1, u2, p11, p12, p21, p22, I1wx, I1wy, grad, rho_c,
              l_t: float, theta: float, taut: float):
    """One TV-L1 iteration (OpenCV CUDA's estimateU + estimateDualVariables), pure.

    All tensors (N, H, W) float32. Returns the new (u1, u2, p11, p12, p21, p22) and the
    per-pair sum of squared updates of u, shape (N,), for the stopping test.
    """
    import torch
    import torch.nn.functional as F

    rho = rho_c + I1wx * u1 + I1wy * u2
    lg = l_t * grad
    fi = torch.where(rho < -lg, torch.full_like(rho, l_t),
                     torch.where(rho > lg, torch.full_like(rho, -l_t),
                                 torch.where(grad > FLT_EPSILON, -rho / grad.clamp_min(FLT_EPSILON),
                                             torch.zeros_like(rho))))
    # divergence with p(-1) = 0 (backward differences)
    div1 = p11 - F.pad(p11[:, :, :-1], (1, 0)) + p12 - F.pad(p12[:, :-1, :], (0, 0, 1, 0))
    div2 = p21 - F.pad(p21[:, :, :-1], (1, 0)) + p22 - F.pad(p22[:, :-1, :], (0, 0, 1, 0))
    n1 = u1 + fi * I1wx + theta * div1
    n2 = u2 + fi * I1wy + theta * div2
    err = ((n1 - u1) ** 2 + (n2 - u2) ** 2).sum(dim=(1, 2))
    # forward differences, 0 on the last column / row
    u1x = F.pad(n1[:, :, 1:] - n1[:, :, :-1], (0, 1))
    u1y = F.pad(n1[:, 1:, :] - n1[:, :-1, :], (0, 0, 0, 1))
    u2x = F.pad(n2[:, :, 1:] - n2[:, :, :-1], (0, 1))
    u2y = F.pad(n2[:, 1:, :] - n2[:, :-1, :], (0, 0, 0, 1))
    ng1 = 1.0 + taut * torch.sqrt(u1x * u1x + u1y * u1y)
    ng2 = 1.0 + taut * torch.sqrt(u2x * u2x + u2y * u2y)
    return (n1, n2, (p11 + taut * u1x) / ng1, (p12 + taut * u1y) / ng1,
            (p21 + taut * u2x) / ng2, (p22 + taut * u2y) / ng2, err)


UNROLL = 8


def _steps_with(step, *args):
    """``UNROLL`` iterations of ``step`` (``tvl1_step`` or the CPU's C one) in one call, with
    ``tvl1_step``'s arguments: the same arithmetic, in order."""
    state, rest = args[:6], args[6:]
    for _ in range(UNROLL):
        *state, err = step(*state, *rest)
    return (*state, err)


def tvl1_steps(u1, u2, p11, p12, p21, p22, I1wx, I1wy, grad, rho_c,
               l_t: float, theta: float, taut: float):
    """``UNROLL`` iterations of ``tvl1_step`` in one call (compiled as one graph on CUDA)."""
    return _steps_with(tvl1_step, u1, u2, p11, p12, p21, p22, I1wx, I1wy, grad, rho_c,
                       l_t, theta, taut)


def warp_terms(stack, i0, u1, u2, interp: str):
    """OpenCV's warpBackward: warp (I1, I1x, I1y) = ``stack (N,3,H,W)`` by u and return the
    constant terms of the linearised data term: I1wx, I1wy, |grad I1w|^2 and
    rho_c = I1w - grad I1w . u - I0 (each (N, H, W))."""
    warped = warp_bicubic(stack, u1, u2, interp)
    I1w, I1wx, I1wy = warped[:, 0], warped[:, 1], warped[:, 2]
    grad = I1wx * I1wx + I1wy * I1wy
    rho_c = I1w - I1wx * u1 - I1wy * u2 - i0
    return I1wx.contiguous(), I1wy.contiguous(), grad, rho_c


_COMPILED = {}


def compile_cache_dir() -> str:
    """Where the compiled TV-L1 kernels are kept: ``TORCHINDUCTOR_CACHE_DIR`` when set, else
    ``$XDG_CACHE_HOME/tsn-pipeline/inductor`` (``~/.cache/...``): the CPU library of
    ``flow.native`` (under ``native/``) and torch.compile's caches (CUDA). Every later process
    (a worker, the next shard, an array task on another node sharing the home folder) loads
    the kernels instead of compiling them again; torch's own default is a folder under /tmp,
    often per node and wiped."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(base, "tsn-pipeline",
                                                                     "inductor")


def _compiled(name: str, fn, compile: bool):
    """``fn`` eager, or through torch.compile (once per process; dynamic shapes so that pyramid
    levels and shrinking batches do not recompile; kernels cached in ``compile_cache_dir()``)."""
    if not compile:
        return fn
    cfn = _COMPILED.get(name)
    if cfn is None:
        import torch

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = compile_cache_dir()
        cfn = _COMPILED[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return cfn


def step_constants(params: TVL1Params) -> Tuple[float, float, float]:
    """The float arguments (l_t, theta, taut) of ``tvl1_step`` for ``params``."""
    return (float(params.lambda_ * params.theta), float(params.theta),
            float(params.tau / params.theta))


# -- the solver -------------------------------------------------------------------------------
def _solve_warp(state, I1wx, I1wy, grad, rho_c, params: TVL1Params, eps_area: float,
                step, steps_k, unroll: int, stats: Optional[Dict]):
    """Iterate one warp on all pairs of ``state`` (list of 6 tensors (N,H,W)), in place.

    Converged pairs leave the active set; their rows are written back into ``state``.
    Iterations that need no stopping test are queued and run ``unroll`` at a time through
    ``steps_k`` (one call for several iterations: on a GPU the per-call overhead, not the
    arithmetic, bounds small levels); the result is the same as one call per iteration.
    """
    import torch

    l_t, theta, taut = step_constants(params)
    n_pairs = state[0].shape[0]
    active = torch.arange(n_pairs, device=state[0].device)
    cur = list(state)
    consts = [I1wx, I1wy, grad, rho_c]
    prev_err = np.zeros(n_pairs)               # CUDA's prevError, per pair
    adaptive = params.check_every == 0
    pending = 0                                # queued iterations without a stopping test

    def count(k):
        if stats is not None:
            stats["pair_iterations"] = stats.get("pair_iterations", 0) + k * len(active)
            stats["pixel_iterations"] = stats.get("pixel_iterations", 0) + k * cur[0].numel()

    def flush():
        nonlocal cur, pending
        while pending:
            k = unroll if unroll > 1 and pending >= unroll else 1
            cur = list((steps_k if k > 1 else step)(*cur, *consts, l_t, theta, taut)[:6])
            count(k)
            pending -= k

    for n in range(params.iterations):
        if params.median > 1 and n % params.median_every == 0:
            flush()
            cur[0] = median_filter(cur[0], params.median)
            cur[1] = median_filter(cur[1], params.median)
        if params.epsilon <= 0:
            pending += 1
            continue
        if adaptive:
            # OpenCV CUDA: measure at odd n when prevError < eps; else prevError -= eps
            due = (prev_err < eps_area) if (n & 1) else np.zeros(len(active), bool)
            if not due.any():
                prev_err -= eps_area
                pending += 1
                continue
        elif (n + 1) % params.check_every:
            pending += 1
            continue
        flush()
        *cur, err = step(*cur, *consts, l_t, theta, taut)
        count(1)
        e = err.double().cpu().numpy()
        if adaptive:
            prev_err = np.where(due, e, prev_err - eps_area)
            done = due & (e <= eps_area)
        else:
            done = e <= eps_area
        if done.any():
            done_t = torch.from_numpy(np.flatnonzero(done)).to(active.device)
            keep_t = torch.from_numpy(np.flatnonzero(~done)).to(active.device)
            rows = active[done_t]
            for full, c in zip(state, cur):
                full[rows] = c[done_t]
            active = active[keep_t]
            if len(active) == 0:
                return
            cur = [c[keep_t] for c in cur]
            consts = [c[keep_t] for c in consts]
            prev_err = prev_err[~done]
    flush()
    for full, c in zip(state, cur):
        full[active] = c


def tvl1(prev, nxt, params: TVL1Params = TVL1Params(), device=None, compile: bool = False,
         stats: Optional[Dict] = None, unroll: Optional[int] = None):
    """TV-L1 flow from ``prev`` to ``nxt`` for a batch of pairs of one size.

    ``prev``, ``nxt``: (N, H, W) or (H, W) gray images, uint8 (0..255) or float in the same
    0..255 range, numpy or torch. Returns float32 flow (N, 2, H, W) (x first) in pixels such
    that prev(x) ~ nxt(x + flow(x)), as a torch tensor on ``device`` (default: the input's
    device for tensors, else CPU). ``stats`` (a dict) receives iteration counts.
    ``unroll``: iterations per call between stopping tests (default 8 on CUDA, where call
    overhead dominates the small pyramid levels; 1 on CPU); it does not change the result.
    """
    import torch

    single = False
    tensors = []
    for img in (prev, nxt):
        t = img if isinstance(img, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(img))
        if device is not None:
            t = t.to(device)
        tensors.append(t.to(torch.float32))
    I0, I1 = tensors
    if I0.shape != I1.shape:
        raise ValueError(f"prev {tuple(I0.shape)} and nxt {tuple(I1.shape)} differ in shape")
    if I0.dim() == 2:
        I0, I1, single = I0[None], I1[None], True
    if I0.dim() != 3:
        raise ValueError(f"expected (N, H, W) or (H, W) gray images, got shape {tuple(I0.shape)}")
    n, h, w = I0.shape
    if n == 0:
        return torch.zeros((0, 2, h, w), device=I0.device)
    if unroll is None:
        unroll = UNROLL if I0.device.type == "cuda" else 1
    if unroll not in (1, UNROLL):
        raise ValueError(f"unroll={unroll}: use 1 or {UNROLL}")
    kernels = None
    if compile and I0.device.type == "cpu":
        from .native import cpu_kernels

        kernels = cpu_kernels()           # None: cannot build them here (warned): eager
    if kernels is not None:               # CPU: the C kernels, built once per machine
        step, terms = kernels.step, kernels.terms
        steps_k = functools.partial(_steps_with, step)
    else:
        compile = compile and I0.device.type != "cpu"
        step = _compiled("step", tvl1_step, compile)
        steps_k = _compiled("steps", tvl1_steps, compile) if unroll > 1 else None
        terms = _compiled("warp", warp_terms, compile)
    sizes = pyramid_sizes(h, w, params)
    I0s, I1s = [I0], [I1]
    for s in range(1, len(sizes)):
        I0s.append(resize_linear(I0s[-1], sizes[s], params.scale_step))
        I1s.append(resize_linear(I1s[-1], sizes[s], params.scale_step))
    hs, ws = sizes[-1]
    u1 = torch.zeros((n, hs, ws), device=I0.device)
    u2 = torch.zeros_like(u1)
    with torch.no_grad():
        for s in range(len(sizes) - 1, -1, -1):
            i0, i1 = I0s[s], I1s[s]
            hs, ws = sizes[s]
            eps_area = params.epsilon ** 2 * hs * ws
            I1x, I1y = centered_gradient(i1)
            stack = torch.stack([i1, I1x, I1y], dim=1)          # (N, 3, H, W)
            p = [torch.zeros_like(u1) for _ in range(4)]
            state = [u1, u2, *p]
            for _ in range(params.warps):
                u1, u2 = state[0], state[1]
                I1wx, I1wy, grad, rho_c = terms(stack, i0, u1, u2, params.interp)
                _solve_warp(state, I1wx, I1wy, grad, rho_c, params, eps_area, step, steps_k,
                            unroll, stats)
            u1, u2 = state[0], state[1]
            if s > 0:
                u1 = resize_linear(u1, sizes[s - 1]) * (1.0 / params.scale_step)
                u2 = resize_linear(u2, sizes[s - 1]) * (1.0 / params.scale_step)
    flow = torch.stack([u1, u2], dim=1)
    return flow[0] if single else flow


def tvl1_numpy(prev: np.ndarray, nxt: np.ndarray, params: TVL1Params = TVL1Params(),
               device: str = "cpu", compile: bool = False, batch_size: int = 64) -> np.ndarray:
    """``tvl1`` for numpy stacks of any length, in batches; returns (N, 2, H, W) float32.

    When the device runs out of memory the batch is halved and retried (a pair's flow does
    not depend on the batch it is in), down to one pair.
    """
    import torch

    prev, nxt = np.asarray(prev), np.asarray(nxt)
    single = prev.ndim == 2
    if single:
        prev, nxt = prev[None], nxt[None]
    out = []
    i, bs = 0, max(1, int(batch_size))
    while i < len(prev):
        try:
            out.append(tvl1(prev[i:i + bs], nxt[i:i + bs], params, device=device,
                            compile=compile).cpu().numpy())
            i += bs
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise
            torch.cuda.empty_cache()
            bs //= 2
            log.warning("TV-L1: out of device memory; retrying with batches of %d pairs", bs)
    flow = np.concatenate(out) if out else np.zeros((0, 2) + prev.shape[1:], np.float32)
    return flow[0] if single else flow
