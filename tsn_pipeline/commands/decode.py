"""`tsn decode`: videos -> JPEG frames in HDF5 frame shards (see tsn_pipeline.decode)."""
from __future__ import annotations

import click

from .options import run_options, run_shards, select_shards, shard_options, stage_errors


def _parse_size(ctx, param, value):
    if value is None or value.lower() in ("original", "none", "keep"):
        return None
    try:
        w, h = (int(x) for x in value.lower().split("x"))
        if w < 1 or h < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT (e.g. 340x256) or 'original'")
    return (w, h)


@click.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for frames-<i>-of-<n>.h5 shards.")
@click.option("--size", default="340x256", show_default=True, callback=_parse_size,
              help="Resize to WIDTHxHEIGHT (TSN: 340x256), or 'original'.")
@click.option("--short-side", type=click.IntRange(min=1), default=None,
              help="Resize so the short side is this long, keeping aspect (overrides --size).")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Resample to this frame rate (default: keep every decoded frame).")
@click.option("--encoder", type=click.Choice(["ffmpeg", "opencv"]), default="ffmpeg",
              show_default=True, help="JPEG encoder: ffmpeg's mjpeg (fastest; the bytes "
                                      "`ffmpeg -q:v N img_%05d.jpg` writes) or OpenCV/libjpeg.")
@click.option("--qscale", type=click.IntRange(1, 31), default=2, show_default=True,
              help="JPEG quality for --encoder ffmpeg (ffmpeg -q:v; lower is better).")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="JPEG quality for --encoder opencv (libjpeg scale, as dense_flow's 95).")
@click.option("--interpolation", type=click.Choice(["bilinear", "bicubic", "area", "lanczos",
                                                     "neighbor"]),
              default="bilinear", show_default=True, help="ffmpeg scaler used to resize.")
@click.option("--strict", is_flag=True, help="Fail a video on any ffmpeg decode error "
                                              "(default: keep the frames that decode).")
@click.option("--split", default=None, help="Only videos of this split (list column 'split').")
@shard_options
@run_options(workers_help="Videos decoded at once: threads of this process, each driving one "
                          "ffmpeg process (at most the cores).")
@stage_errors
def decode(source, out_dir, size, short_side, fps, encoder, qscale, quality, interpolation, strict, split,
           shard_index, num_shards, workers, overwrite, retry_failed, progress):
    """Decode videos to JPEG frames in HDF5 shards.

    SOURCE is a folder of videos (recursive; first-level folders are classes) or a CSV list
    (video_id,path[,label][,class_name][,split]). Writes shard --shard-index of --num-shards
    (in a SLURM array: the task's shard), or every shard. Prints one JSON summary line per
    shard; exits 1 if any video failed (reasons in <out>/frames-<i>-of-<n>.failures.json),
    the others are stored.
    """
    from ..decode import DecodeConfig, run_decode
    from ..videolist import VideoListError, load_video_list

    indices, count = select_shards(shard_index, num_shards)
    try:
        cfg = DecodeConfig(size=None if short_side else size, short_side=short_side, fps=fps,
                           encoder=encoder, qscale=qscale, quality=quality, interpolation=interpolation, strict=strict)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        videos = load_video_list(source).select(split)
    except VideoListError as exc:
        raise click.ClickException(str(exc)) from exc
    if not len(videos):
        raise click.ClickException(f"{source}: no videos" + (f" of split {split!r}" if split else ""))
    run_shards(indices, lambda index: run_decode(videos, out_dir, cfg, index, count, workers,
                                                 overwrite, retry_failed, progress))
