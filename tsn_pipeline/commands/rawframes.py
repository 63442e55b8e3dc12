"""`tsn import-rawframes` / `tsn export-rawframes`: dense_flow-style image folders <-> shards."""
from __future__ import annotations

import click

from ..modalities import FLOW_KINDS

from .options import (bad_settings, fails_with, run_options, run_shards, select_shards,
                      shard_options, stage_errors)


@click.command("import-rawframes")
@click.argument("src", type=click.Path(file_okay=False, exists=True))
@click.option("--frames-out", type=click.Path(file_okay=False), default=None,
              help="Write frame shards (stream rgb from the img_* files) here.")
@click.option("--flow-out", type=click.Path(file_okay=False), default=None,
              help="Write flow shards (flow_x_*/flow_y_* files) here.")
@click.option("--list", "list_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Which videos, with labels: our video list CSV (folders SRC/<id> or "
                   "SRC/<class>/<id>), or an mmaction2/TSN list '<dir> <num frames> <label>'. "
                   "Default: every folder of SRC (or SRC/<class>/) holding images; class "
                   "folders give labels.")
@click.option("--flow-kind", type=click.Choice(FLOW_KINDS), default="tvl1",
              show_default=True, help="What the flow images in SRC are.")
@click.option("--warped-src", type=click.Path(file_okay=False, exists=True), default=None,
              help="Second tree with warped flow of the same videos (dense_flow's "
                   "extract_warp_gpu output); stored as warped_x/warped_y in the same shards.")
@click.option("--start-index", type=click.Choice(["auto", "0", "1"]), default="auto",
              show_default=True, help="Number of the first file (dense_flow: 1, denseflow: 0).")
@click.option("--rgb-prefix", default="img_", show_default=True)
@click.option("--flow-x-prefix", default="flow_x_", show_default=True)
@click.option("--flow-y-prefix", default="flow_y_", show_default=True)
@click.option("--warped-x-prefix", default=None, help="[default: --flow-x-prefix]")
@click.option("--warped-y-prefix", default=None, help="[default: --flow-y-prefix]")
@click.option("--bound", type=float, default=20.0, show_default=True,
              help="Bound the flow images were quantised with (dense_flow -b, TSN: 20).")
@click.option("--encoding", type=click.Choice(["jpeg", "png"]), default="jpeg",
              show_default=True, help="Image format of the flow files.")
@click.option("--fps", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Frame rate to record (folders carry none; 0 = unknown).")
@click.option("--verify", is_flag=True,
              help="Decode every image (default: check headers and sizes only).")
@shard_options
@run_options
@stage_errors
def import_rawframes(src, frames_out, flow_out, list_file, flow_kind, warped_src, start_index,
                     rgb_prefix, flow_x_prefix, flow_y_prefix, warped_x_prefix, warped_y_prefix,
                     bound, encoding, fps, verify, shard_index, num_shards, workers, overwrite,
                     retry_failed, progress):
    """Pack rawframes folders under SRC into shards, copying the JPEG bytes (no re-encoding).

    \b
    SRC/<video_id>/img_00001.jpg, flow_x_00001.jpg, flow_y_00001.jpg, ...
    (or SRC/<class>/<video_id>/...; numbering from 0 or 1, detected per video)

    Frame shard i and flow shard i hold the same videos as `tsn decode` / `tsn flow` would
    write. Without --shard-index (outside a SLURM array) every shard 0..N-1 is written.
    Prints one JSON summary line per shard written; exits 1 if any video failed.
    """
    from ..rawframes import (FlowImportConfig, FrameImportConfig, RawframesError,
                             find_video_dirs, items_from_list, run_import)
    from ..videolist import VideoListError

    if not frames_out and not flow_out:
        raise click.UsageError("give --frames-out and/or --flow-out")
    indices, count = select_shards(shard_index, num_shards)
    start = None if start_index == "auto" else int(start_index)
    with fails_with(RawframesError, VideoListError):
        if list_file:
            items, classes = items_from_list(src, list_file)
        else:
            prefixes = ([rgb_prefix] if frames_out else []) + ([flow_x_prefix] if flow_out else [])
            items = find_video_dirs(src, prefixes)
            classes = sorted({it.class_name for it in items if it.class_name})
    jobs = []
    with bad_settings():
        if frames_out:
            jobs.append((frames_out, FrameImportConfig(rgb_prefix=rgb_prefix, start_index=start,
                                                       fps=fps, verify=verify)))
        if flow_out:
            jobs.append((flow_out, FlowImportConfig(
                flow_x_prefix=flow_x_prefix, flow_y_prefix=flow_y_prefix,
                flow_kind=flow_kind, with_warped=warped_src is not None,
                warped_x_prefix=warped_x_prefix or flow_x_prefix,
                warped_y_prefix=warped_y_prefix or flow_y_prefix, start_index=start,
                bound=bound, encoding=encoding, fps=fps, verify=verify)))
    run_shards([(out, cfg, i) for out, cfg in jobs for i in indices],
               lambda job: run_import(items, classes, job[0], job[1], job[2], count, src_root=src,
                                      warped_root=warped_src, workers=workers,
                                      overwrite=overwrite, retry_failed=retry_failed,
                                      progress=progress))


@click.command("export-rawframes")
@click.option("--frames", "frames_dir", type=click.Path(exists=True), default=None,
              help="Frame shards (folder or file) to write as img_* files.")
@click.option("--flow", "flow_dir", type=click.Path(exists=True), default=None,
              help="Flow shards (folder or file) to write as flow_x_*/flow_y_* files.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write <video_id>/ folders into.")
@click.option("--flow-kind", type=click.Choice(FLOW_KINDS), default="tvl1",
              show_default=True, help="Which flow of the shards to write.")
@click.option("--start-index", type=click.IntRange(0, 1), default=1, show_default=True,
              help="Number of the first file (dense_flow and TSN lists: 1; denseflow: 0).")
@click.option("--digits", type=click.IntRange(1, 12), default=5, show_default=True)
@click.option("--rgb-prefix", default="img_", show_default=True)
@click.option("--flow-x-prefix", default="flow_x_", show_default=True)
@click.option("--flow-y-prefix", default="flow_y_", show_default=True)
@click.option("--by-class", is_flag=True, help="Write <out>/<class>/<video_id>/ (mmaction2).")
@click.option("--list-out", type=click.Path(dir_okay=False), default=None,
              help="Also write an mmaction2/TSN list file: '<video dir> <num frames> <label>' "
                   "(num frames = img files, or flow fields without --frames).")
@click.option("--overwrite", is_flag=True, help="Rewrite video folders that are complete.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@shard_options
@stage_errors
def export_rawframes(frames_dir, flow_dir, out_dir, flow_kind, start_index, digits, rgb_prefix,
                     flow_x_prefix, flow_y_prefix, by_class, list_out, overwrite, progress,
                     shard_index, num_shards):
    """Write shards out as dense_flow / mmaction2 rawframes folders (bytes copied as stored).

    Each video folder is written as .<id>.tmp and renamed when complete, so a rerun skips
    finished videos. With --shard-index/--num-shards (or in a SLURM array) only that shard's
    videos are written, else every shard's; a video is in shard `batch.shard_of(id, N)`, as
    in every stage. With N > 1 the --list-out file is one per shard, named
    <stem>-<i>-of-<n><suffix>. Prints one JSON summary line per shard; exits 1 if any video
    could not be exported.
    """
    from ..rawframes import ExportConfig, RawframesError, export_shards

    indices, count = select_shards(shard_index, num_shards)
    with bad_settings():
        cfg = ExportConfig(start_index=start_index, digits=digits, rgb_prefix=rgb_prefix,
                           flow_x_prefix=flow_x_prefix, flow_y_prefix=flow_y_prefix,
                           flow_kind=flow_kind, by_class=by_class, overwrite=overwrite)
    with fails_with(RawframesError):
        run_shards(indices, lambda index: export_shards(frames_dir, flow_dir, out_dir, cfg, index,
                                                        count, list_out, progress))
