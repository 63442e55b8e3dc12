"""OpenCV TV-L1 backends: CPU (``cv2.optflow.DualTVL1OpticalFlow``) and CUDA
(``cv2.cuda.OpticalFlowDual_TVL1``, only in OpenCV builds with CUDA).

Pure functions of gray frames and ``TVL1Params``; they return float32 flow (2, H, W), x first.

CPU mapping of the parameters: OpenCV CPU splits the iterations of a warp into
``outerIterations`` blocks of ``innerIterations`` and runs its median filter between blocks,
so ``innerIterations = median_every`` (30) and ``outerIterations = iterations // median_every``
(10 for 300); ``medianFiltering = median`` (5 is OpenCV CPU's default, 1 turns it off). The
CPU code always tests convergence after every iteration and always warps with cv2.remap's
cubic (a = -0.75, zero outside), whatever ``check_every`` / ``interp`` say.

CUDA: dense_flow's own call, ``OpticalFlowDual_TVL1::create()`` with OpenCV's CUDA defaults
(tau 0.25, lambda 0.15, theta 0.3, nscales 5, warps 5, epsilon 0.01, iterations 300,
scaleStep 0.8, gamma 0); the parameters of ``TVL1Params`` are passed through.
"""
from __future__ import annotations

import numpy as np

from .tvl1_torch import TVL1Params


class BackendUnavailable(RuntimeError):
    """The requested flow backend cannot run in this installation."""


def cuda_device_count() -> int:
    """CUDA devices the installed cv2 can use (0 for PyPI wheels, which have no CUDA)."""
    import cv2

    try:
        return int(cv2.cuda.getCudaEnabledDeviceCount())
    except (AttributeError, cv2.error):
        return 0


def opencv_cuda_available() -> bool:
    import cv2

    return cuda_device_count() > 0 and hasattr(cv2.cuda, "OpticalFlowDual_TVL1_create")


def require_opencv_cuda() -> None:
    """Raise ``BackendUnavailable`` with the reason and the fix when opencv-cuda cannot run."""
    import cv2

    if cuda_device_count() == 0:
        raise BackendUnavailable(
            f"--backend opencv-cuda needs an OpenCV built with CUDA and a CUDA device; the "
            f"installed cv2 {cv2.__version__} reports {cuda_device_count()} CUDA devices (PyPI "
            "wheels have no CUDA). Use --backend torch (same algorithm, runs on CUDA or CPU "
            "with the PyPI packages) or --backend auto")
    if not hasattr(cv2.cuda, "OpticalFlowDual_TVL1_create"):
        raise BackendUnavailable(
            f"the installed cv2 {cv2.__version__} has CUDA but no cudaoptflow module "
            "(cv2.cuda.OpticalFlowDual_TVL1_create); build opencv_contrib's cudaoptflow or "
            "use --backend torch")


def make_cpu_tvl1(params: TVL1Params):
    """A configured ``cv2.optflow.DualTVL1OpticalFlow`` (create once per worker, reuse)."""
    import cv2

    if params.iterations % params.median_every:
        raise ValueError(f"OpenCV CPU runs iterations in blocks of {params.median_every} "
                         f"(innerIterations); iterations={params.iterations} is not a multiple")
    return cv2.optflow.DualTVL1OpticalFlow_create(
        tau=params.tau, lambda_=params.lambda_, theta=params.theta, nscales=params.nscales,
        warps=params.warps, epsilon=params.epsilon, innnerIterations=params.median_every,
        outerIterations=params.iterations // params.median_every, scaleStep=params.scale_step,
        gamma=0.0, medianFiltering=max(1, params.median), useInitialFlow=False)


def tvl1_opencv(prev: np.ndarray, nxt: np.ndarray, params: TVL1Params = TVL1Params(),
                algo=None) -> np.ndarray:
    """OpenCV CPU TV-L1 between two gray uint8 frames (H, W) -> float32 (2, H, W)."""
    algo = algo if algo is not None else make_cpu_tvl1(params)
    flow = algo.calc(np.ascontiguousarray(prev), np.ascontiguousarray(nxt), None)
    return np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32)


def make_cuda_tvl1(params: TVL1Params):
    import cv2

    require_opencv_cuda()
    return cv2.cuda.OpticalFlowDual_TVL1_create(
        params.tau, params.lambda_, params.theta, params.nscales, params.warps, params.epsilon,
        params.iterations, params.scale_step, 0.0, False)


def tvl1_opencv_cuda(prev: np.ndarray, nxt: np.ndarray, params: TVL1Params = TVL1Params(),
                     algo=None) -> np.ndarray:
    """OpenCV CUDA TV-L1 (dense_flow's call) between two gray uint8 frames -> (2, H, W)."""
    import cv2

    algo = algo if algo is not None else make_cuda_tvl1(params)
    g0, g1 = cv2.cuda_GpuMat(), cv2.cuda_GpuMat()
    g0.upload(np.ascontiguousarray(prev))
    g1.upload(np.ascontiguousarray(nxt))
    flow = algo.calc(g0, g1, None).download()
    return np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32)
