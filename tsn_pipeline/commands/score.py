"""`tsn score`: checkpoint + frame/flow shards -> score shards (see tsn_pipeline.score)."""
from __future__ import annotations

import json

import click

from .options import (amp_option, bad_settings, device_option, fails_with, run_options,
                      run_shards, select_shards, shard_options, stage_errors)


def input_options(f):
    """--frames/--flow/--split/--list/--batch-size/--device/--amp/--scale-size, shared with
    `tsn features`."""
    f = click.option("--scale-size", type=click.IntRange(min=1), default=None,
                     help="Resize the short side to this before cropping "
                          "[default: input_size * 256 / 224 = 256].")(f)
    f = device_option(amp_option(f))
    f = click.option("--batch-size", type=click.IntRange(min=1), default=250, show_default=True,
                     help="Snippet crops per forward pass (several videos are batched).")(f)
    f = click.option("--list", "list_file", type=click.Path(exists=True), default=None,
                     help="Video list (folder or CSV) choosing the videos and their labels "
                          "[default: every video of the input shards, labels from them].")(f)
    f = click.option("--split", default=None,
                     help="Only videos of this split (list column or shard attribute 'split').")(f)
    f = click.option("--flow", "flow_dir", type=click.Path(exists=True), default=None,
                     help="Flow shards (file or folder): input of flow / warped models.")(f)
    f = click.option("--frames", "frames_dir", type=click.Path(exists=True), default=None,
                     help="Frame shards (file or folder): input of rgb / rgbdiff models.")(f)
    return f


def open_inputs(frames_dir, flow_dir, list_file):
    """(Sources, VideoList or None); input problems become click errors."""
    from ..data import Sources

    if not frames_dir and not flow_dir:
        raise click.UsageError("give the input shards: --frames (rgb, rgbdiff) or --flow "
                               "(flow, warped)")
    sources = Sources.open(frames_dir, flow_dir)
    if not list_file:
        return sources, None
    from ..videolist import VideoListError, load_video_list

    with fails_with(VideoListError):
        return sources, load_video_list(list_file)


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for scores-<i>-of-<n>.h5 shards.")
@click.option("--num-snippets", type=click.IntRange(min=1), default=25, show_default=True,
              help="Snippets per video, evenly spaced (TSN: 25).")
@click.option("--crops", type=click.Choice(["1", "3", "5", "10"]), default=None,
              help="Crops per snippet: 1 centre, 3 along the long side, 5 = 4 corners + "
                   "centre, 10 = those and their mirror images (TSN) [default: 10; 5 for a "
                   "model trained with --no-flip, which refuses 10].")
@click.option("--crop-agg", type=click.Choice(["mean", "max"]), default="mean",
              show_default=True, help="How crop scores are combined (before softmax).")
@click.option("--save-crops", is_flag=True,
              help="Also store the per-crop scores (snippets, crops, classes).")
@input_options
@shard_options
@run_options
@stage_errors
def score(checkpoint, out_dir, num_snippets, crops, crop_agg, scale_size, save_crops,
          frames_dir, flow_dir, split, list_file, batch_size, device, amp,
          shard_index, num_shards, workers, overwrite, retry_failed, progress):
    """Score videos with a trained TSN (TSN test protocol by default).

    \b
    tsn score runs/rgb/checkpoint.pt --frames out/frames --out out/scores-rgb --split test
    tsn score runs/flow/checkpoint.pt --flow out/flow --out out/scores-flow --crops 1

    Writes per-snippet class scores (before softmax) per video. Prints the video-level
    top-1 / top-5 / mean class accuracy of each shard as JSON, then its batch summary; exits
    1 if any video failed (reasons in <out>/scores-<i>-of-<n>.failures.json). --workers
    processes read and crop the snippets while the model runs.
    """
    from ..data import DataError
    from ..score import ScoreConfig, run_score, shard_accuracy

    indices, count = select_shards(shard_index, num_shards)
    with bad_settings():
        cfg = ScoreConfig(num_snippets=num_snippets, crops=int(crops) if crops else None,
                          crop_agg=crop_agg, scale_size=scale_size, save_crops=save_crops, amp=amp)
    sources, videos = open_inputs(frames_dir, flow_dir, list_file)

    def run_one(index):
        summary = run_score(checkpoint, sources, out_dir, cfg, index, count, split, videos,
                            batch_size, device, workers, overwrite, retry_failed, progress)
        if summary.ok:
            try:
                acc = shard_accuracy(summary.shard)
            except ValueError as exc:     # labels outside the model's classes: say so, go on
                acc = {"error": str(exc)}
            click.echo(json.dumps({"accuracy": acc, "shard": summary.shard}, sort_keys=True))
        return summary

    with fails_with(DataError, ValueError, FileNotFoundError):
        run_shards(indices, run_one)
