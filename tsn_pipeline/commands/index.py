"""``tsn index``: the dataset-wide index of a stage folder after array jobs; what to resubmit."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..modalities import SHARD_KINDS

from .options import fails_with


@click.command("index")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("--kind", type=click.Choice(SHARD_KINDS), default=None,
              help="Shard kind to index [default: the only kind in FOLDER].")
@click.option("--num-shards", type=click.IntRange(min=1), default=None,
              help="Array size that was submitted [default: read from the shard names]. Give it "
                   "when some tasks never ran, so that their shards count as missing.")
@click.option("--list", "video_list", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Video list CSV the stage ran on: also report ids that are in no shard and "
                   "not recorded as failed.")
@click.option("--split", default=None,
              help="With --list: only the list's videos of this split (the split the stage "
                   "ran with, e.g. `tsn decode --split test`).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Write the index JSON here [default: FOLDER/index.json].")
@click.option("--strict/--no-strict", default=True, show_default=True,
              help="Exit 1 when a shard is missing, incomplete, unreadable or has failed videos.")
def index(folder, kind, num_shards, video_list, split, out_file, strict):
    """Index the shards of FOLDER (a decode/flow/score output folder).

    Reads each shard's root attributes, the failures files and the traces of unfinished runs,
    writes the index JSON (every video id -> shard, length, label) and prints a summary with
    the shard indices to resubmit, as an `sbatch --array=` value:

    \b
        tsn index out/ucf101/flow --num-shards 64
        sbatch --array=$(jq -r .resubmit out/ucf101/flow/index.json) pipelines/slurm/flow.sh
    """
    from ..index import StageIndexError, build_index

    expected = None
    if split is not None and not video_list:
        raise click.UsageError("--split selects videos of --list: give the list too")
    if video_list:
        from ..datasets import read_list_ids
        from ..videolist import VideoListError

        with fails_with(VideoListError):
            expected = read_list_ids(video_list, split)
    with fails_with(StageIndexError):
        idx = build_index(folder, kind=kind, num_shards=num_shards, expected_ids=expected)
    data = idx.to_json()
    out = Path(out_file) if out_file else Path(folder) / "index.json"
    try:
        out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror or exc}") from exc
    summary = {k: data[k] for k in ("folder", "kind", "num_shards", "ok", "counts", "num_videos",
                                    "num_items", "missing", "incomplete", "failed",
                                    "unreadable", "resubmit", "problems")}
    summary["failed_videos"] = len(data["failed_videos"])
    summary["expected_missing"] = len(data["expected_missing"])
    summary["index"] = str(out)
    click.echo(json.dumps(summary, sort_keys=True))
    if strict and not idx.ok:
        parts = []
        for status in ("missing", "incomplete", "unreadable", "failed"):
            if data[status]:
                parts.append(f"{status} shards {data[status]}")
        if data["expected_missing"]:
            parts.append(f"{len(data['expected_missing'])} listed videos in no shard")
        parts.extend(data["problems"])
        hint = (f"; resubmit with --array={data['resubmit']} (failed shards: add --retry-failed)"
                if data["resubmit"] else "")
        raise click.ClickException(f"{folder}: {'; '.join(parts)}{hint}")
