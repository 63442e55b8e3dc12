"""`tsn info` and `tsn verify`: what a shard holds, and whether its bytes are intact."""
from __future__ import annotations

import json

import click


def _shards(paths):
    from ..store import StoreError, expand_shard_paths

    try:
        return expand_shard_paths(paths)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per video (video_id, label, num_frames/num_flows, shard, ...).")
def info(shards, as_json):
    """Show what shards hold: videos, frames, bytes and the config that made them."""
    from ..store import describe_shard

    for path in _shards(shards):
        try:
            d = describe_shard(path)
        except (OSError, KeyError) as exc:
            raise click.ClickException(f"{path}: not a readable shard ({exc})") from exc
        if as_json:
            for video in d["videos"]:
                click.echo(json.dumps(video, sort_keys=True))
            continue
        a = d["attrs"]
        items = sum(v.get("num_frames", v.get("num_flows", v.get("num_snippets", 0)))
                    for v in d["videos"])
        click.echo(f"{path}: {a.get('kind')} shard {a.get('shard_index')}/{a.get('num_shards')}, "
                   f"schema {a.get('schema_version')}, tsn-pipeline {a.get('package_version')}")
        click.echo(f"  videos {len(d['videos'])}, items {items}, payload bytes {d['bytes']}, "
                   f"failed {len(a.get('failed') or [])}")
        click.echo(f"  config {json.dumps(a.get('config'), sort_keys=True)}")


@click.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True))
def verify(shards):
    """Check every video's checksum and decode every image; exit 1 on any problem."""
    from ..store import verify_shard

    bad = 0
    for path in _shards(shards):
        problems = verify_shard(path)
        for p in problems:
            click.echo(f"{path}: {p['video_id']}: {p['reason']}")
        bad += len(problems)
        if not problems:
            click.echo(f"{path}: ok")
    if bad:
        raise click.ClickException(f"{bad} corrupt entries")
