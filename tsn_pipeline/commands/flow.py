"""`tsn flow`: frame shards -> TV-L1 / warped TV-L1 flow shards (see tsn_pipeline.flow)."""
from __future__ import annotations

import os

import click

from ..modalities import FLOW_KINDS

from .options import (check_device, run_options, run_shards, select_shards, shard_options,
                      stage_errors, usable_cores)

def _device(ctx, param, value):
    """--device must exist: a CUDA device of torch or of OpenCV (the opencv-cuda backend)."""
    if value in ("auto", "cpu"):
        return value
    import torch

    from ..flow.opencv import cuda_device_count

    return check_device(value, max(torch.cuda.device_count(), cuda_device_count()))


@click.command()
@click.argument("frames", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for flow-<i>-of-<n>.h5 shards (flow shard i from frame shard i).")
@click.option("--kind", type=click.Choice([*FLOW_KINDS, "both"]), default="tvl1",
              show_default=True, help="TV-L1 flow, warped TV-L1 flow (camera motion removed), or both.")
@click.option("--step", type=click.IntRange(min=1), default=1, show_default=True,
              help="Flow between frame t and t+STEP.")
@click.option("--bound", type=click.FloatRange(min=0, min_open=True), default=20.0,
              show_default=True, help="Quantisation bound in px (TSN: 20): v>b -> 255, v<-b -> 0.")
@click.option("--encoding", type=click.Choice(["jpeg", "png", "float16"]), default="jpeg",
              show_default=True, help="8-bit quantised JPEG (TSN), 8-bit PNG (lossless codes), "
                                      "or float16 arrays (lossless flow, unquantised).")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="JPEG quality of the flow images (dense_flow: 95).")
@click.option("--backend", type=click.Choice(["auto", "opencv-cuda", "torch", "opencv"]),
              default="auto", show_default=True,
              help="auto: opencv-cuda if cv2 has CUDA, else torch on CUDA, else torch on CPU "
                   "(opencv if no C compiler for --compile).")
@click.option("--device", default="auto", show_default=True, callback=_device,
              help="torch device: auto (cuda if available), cpu, cuda, cuda:1 ...")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Frame pairs per torch batch, across videos [default: 128 on CUDA, 8 on CPU].")
@click.option("--compile/--no-compile", default=True, show_default=True,
              help="Compiled TV-L1 loop: on CPU C kernels built with the system's C compiler "
                   "(once per machine, ~2 s; kept in ~/.cache/tsn-pipeline), on "
                   "CUDA torch.compile.")
@click.option("--tau", type=float, default=None, help="TV-L1 time step [0.25].")
@click.option("--lambda", "lambda_", type=float, default=None, help="TV-L1 data weight [0.15].")
@click.option("--theta", type=float, default=None, help="TV-L1 coupling [0.3].")
@click.option("--nscales", type=click.IntRange(min=1), default=None, help="Pyramid levels [5].")
@click.option("--warps", type=click.IntRange(min=1), default=None, help="Warpings per level [5].")
@click.option("--epsilon", type=click.FloatRange(min=0), default=None, help="Stopping threshold [0.01].")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Max iterations per warp [300].")
@click.option("--scale-step", type=float, default=None, help="Pyramid scale step [0.8].")
@click.option("--interp", type=click.Choice(["cuda", "cpu"]), default=None,
              help="torch warp: OpenCV CUDA's bicubic (default) or OpenCV CPU's cv2.remap cubic.")
@click.option("--median", type=click.Choice(["0", "3", "5"]), default=None,
              help="Median filter of the flow every 30 iterations [opencv: 5 (OpenCV CPU), else 0].")
@click.option("--check-every", type=click.IntRange(min=0), default=None,
              help="torch: stopping test every k iterations [0 = OpenCV CUDA's sparse test].")
@click.option("--features", type=click.Choice(["orb", "sift"]), default="orb", show_default=True,
              help="Warped flow: keypoints matched for the homography (plus flow-tracked corners).")
@click.option("--min-matches", type=click.IntRange(min=0), default=50, show_default=True,
              help="Warped flow: identity homography unless more matches than this.")
@click.option("--min-inliers", type=click.IntRange(min=0), default=25, show_default=True,
              help="Warped flow: identity homography unless more RANSAC inliers than this.")
@shard_options
@run_options(all_cores=True)
@stage_errors
def flow(frames, out_dir, kind, step, bound, encoding, quality, backend, device, batch_size,
         compile, tau, lambda_, theta, nscales, warps, epsilon, iterations, scale_step, interp,
         median, check_every, features, min_matches, min_inliers, shard_index, num_shards,
         workers, overwrite, retry_failed, progress):
    """TV-L1 (and warped TV-L1) optical flow from frame shards into flow shards.

    FRAMES are frame shards or folders of them (from `tsn decode`); flow shard i of N holds
    the videos of frame shard i of N (one assignment rule), N-STEP flow fields per video.
    --num-shards defaults to the frame shards' count. Without --shard-index (and outside a
    SLURM array) every shard 0..N-1 is written (given frame shard files: the flow shards of
    those files). Prints one JSON summary line per shard;
    exits 1 if any video failed (reasons in <out>/flow-<i>-of-<n>.failures.json).
    On CPU --workers processes (default: every usable core) run one video each on one
    thread, whatever the backend; on a GPU the default is one process (torch batches pairs
    of many videos on the device).
    """
    import dataclasses

    from ..flow import backend_params, resolve_backend
    from ..flow.opencv import BackendUnavailable
    from ..flow.stage import FlowConfig, frame_set_count, run_flow
    from ..flow.warp import WarpParams
    from ..store import open_shards

    try:
        backend_name, dev = resolve_backend(backend, None if device == "auto" else device, compile)
    except BackendUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--backend") from exc
    given = {field: value for field, value in
             dict(tau=tau, lambda_=lambda_, theta=theta, nscales=nscales, warps=warps,
                  epsilon=epsilon, iterations=iterations, scale_step=scale_step, interp=interp,
                  median=None if median is None else int(median),
                  check_every=check_every).items() if value is not None}
    if backend_name != "torch":
        only_torch = sorted(k for k in ("interp", "check_every") if k in given)
        if only_torch:
            raise click.BadParameter(f"--{only_torch[0].replace('_', '-')} applies to the torch "
                                     f"backend only (this run uses {backend_name})")
    try:
        params = dataclasses.replace(backend_params(backend_name), **given)
        cfg = FlowConfig(kinds=("tvl1", "warped") if kind == "both" else (kind,), step=step,
                         bound=bound, encoding=encoding, quality=quality, backend=backend_name,
                         tvl1=params, warp=WarpParams(features=features, min_matches=min_matches,
                                                      min_inliers=min_inliers))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if batch_size is None:
        batch_size = 128 if dev.startswith("cuda") else 8
    if workers is None:      # CPU: a process per core; a GPU: one process feeds it
        workers = 1 if dev.startswith("cuda") else usable_cores()

    frame_set = open_shards(frames, kind="frames")
    frame_count = frame_set_count(frame_set)
    if num_shards is None:          # flow shard i from frame shard i, also in arrays
        num_shards = frame_count
    given = None                    # frame shard files given: the flow shards they make
    if num_shards == frame_count and all(os.path.isfile(p) for p in frames):
        given = [int(r.get("shard_index", 0)) for r in frame_set.root.values()]
    indices, count = select_shards(shard_index, num_shards, only=given)
    run_shards(indices, lambda index: run_flow(
        frame_set, out_dir, cfg, index, count, device=dev,
        compile=compile and backend_name == "torch", batch_size=batch_size, workers=workers,
        overwrite=overwrite, retry_failed=retry_failed, progress=progress))
