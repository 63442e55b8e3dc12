"""`tsn features`: checkpoint + frame/flow shards -> snippet feature shards (tsn_pipeline.features)."""
from __future__ import annotations

import click

from .options import report, resolve_shard_or_fail, run_options, shard_options, stage_errors
from .score import input_options, open_inputs


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for features-<i>-of-<n>.h5 shards.")
@click.option("--stride", type=click.IntRange(min=1), default=None,
              help="One snippet every STRIDE frames (flow fields), from 0 [default: 16 unless "
                   "--num-snippets is given].")
@click.option("--num-snippets", type=click.IntRange(min=1), default=None,
              help="Instead of --stride: this many evenly spaced snippets per video.")
@click.option("--crops", type=click.Choice(["1", "3", "10"]), default="1", show_default=True,
              help="Crops per snippet (their features are averaged): 1 = centre crop.")
@click.option("--scale-size", type=click.IntRange(min=1), default=None,
              help="Resize the short side to this before cropping "
                   "[default: input_size * 256 / 224 = 256].")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Stored feature dtype (float16 halves the files).")
@input_options
@shard_options
@run_options
@stage_errors
def features(checkpoint, out_dir, stride, num_snippets, crops, scale_size, dtype,
             frames_dir, flow_dir, split, list_file, batch_size, device, amp,
             shard_index, num_shards, workers, overwrite, retry_failed, progress):
    """Extract snippet features (pooled backbone output, before dropout and classifier).

    \b
    tsn features runs/rgb/checkpoint.pt --frames out/frames --out out/features-rgb --stride 16
    tsn features runs/flow/checkpoint.pt --flow out/flow --out out/features-flow --num-snippets 100

    Per video: features (snippets, dim) and frame_indices (snippets,), the 0-based first
    frame (flow: first field) of each snippet. Prints the JSON summary; exits 1 if any video
    failed (reasons in <out>/features-<i>-of-<n>.failures.json).
    """
    from ..data import DataError
    from ..features import FeaturesConfig, run_features

    if stride is not None and num_snippets is not None:
        raise click.BadParameter("give --stride or --num-snippets, not both",
                                 param_hint="--stride/--num-snippets")
    if stride is None and num_snippets is None:
        stride = 16
    index, count = resolve_shard_or_fail(shard_index, num_shards)
    try:
        cfg = FeaturesConfig(stride=stride, num_snippets=num_snippets, crops=int(crops),
                             scale_size=scale_size, dtype=dtype, amp=amp)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    sources, videos = open_inputs(frames_dir, flow_dir, list_file)
    try:
        summary = run_features(checkpoint, sources, out_dir, cfg, index, count, split, videos,
                               batch_size, device, workers, overwrite, retry_failed, progress)
    except (DataError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    report(summary)
