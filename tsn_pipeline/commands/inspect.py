"""`tsn info` and `tsn verify`: what a shard holds, and whether its bytes are intact."""
from __future__ import annotations

import json

import click

from .options import fails_with


def _shards(paths):
    from ..store import StoreError, expand_shard_paths

    with fails_with(StoreError):
        return expand_shard_paths(paths)


@click.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per video (video_id, label, num_frames/num_flows, shard, ...).")
def info(shards, as_json):
    """Show what shards hold: videos, frames (flow fields, snippets), bytes and the config
    that made them. A damaged shard is an error (exit 1); `tsn verify` says what is damaged."""
    from ..store import StoreError, describe_shard, isolated

    for path in _shards(shards):
        try:   # in a child process: a damaged file can crash the HDF5 library
            d = isolated(describe_shard, path)
        except (StoreError, OSError) as exc:
            raise click.ClickException(f"{path}: not a readable shard ({exc}); `tsn verify` "
                                       "says what is damaged") from exc
        if as_json:
            for video in d["videos"]:
                click.echo(json.dumps(video, sort_keys=True))
            continue
        a = d["attrs"]
        click.echo(f"{path}: {a.get('kind')} shard {a.get('shard_index')}/{a.get('num_shards')}, "
                   f"schema {a.get('schema_version')}, tsn-pipeline {a.get('package_version')}")
        click.echo(f"  videos {len(d['videos'])}, {d['unit']} {d['items']}, payload bytes "
                   f"{d['bytes']}, failed {d['failed']}")
        click.echo(f"  config {json.dumps(a.get('config'), sort_keys=True)}")


@click.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True))
def verify(shards):
    """Check each shard's root checksum (attributes, config, assigned ids, video list), its
    counts, every video's checksum (id, attributes, data) and that every image decodes;
    exit 1 on any problem."""
    from ..store import StoreError, isolated, verify_shard

    bad = 0
    for path in _shards(shards):
        try:   # in a child process: a damaged file can crash the HDF5 library
            problems = isolated(verify_shard, path)
        except (StoreError, OSError) as exc:
            problems = [{"video_id": "*", "reason": str(exc)}]
        for p in problems:
            click.echo(f"{path}: {p['video_id']}: {p['reason']}")
        bad += len(problems)
        if not problems:
            click.echo(f"{path}: ok")
    if bad:
        raise click.ClickException(f"{bad} corrupt entries")
