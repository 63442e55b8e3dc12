"""`tsn fuse`: score files of several modalities -> fused accuracy table, JSON, confusion matrix.

See tsn_pipeline.fuse for the numerics and the report writer. Writes into --out: fused.json (settings, inputs and
metrics per modality and fused), confusion.csv and confusion.png (fused predictions, true class
on rows) and predictions.csv (per video: label, fused prediction, per-modality prediction).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import click

from .options import bad_settings, fails_with

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def _parse_scores(ctx, param, values) -> List[Tuple[Optional[str], str]]:
    """``NAME=PATH`` or ``PATH`` (modality read from the file) -> [(name or None, path)]."""
    out = []
    for value in values:
        name, sep, path = value.partition("=")
        if sep and _NAME.match(name) and not Path(value).exists():
            if not path:
                raise click.BadParameter(f"{value!r}: no path after '{name}='")
            out.append((name, path))
        else:
            out.append((None, value))
    return out


def _parse_weights(ctx, param, value) -> Optional[List[Tuple[Optional[str], float]]]:
    """``rgb=1,flow=1.5`` or ``1,1.5`` (in the order of --scores)."""
    if value is None:
        return None
    out = []
    for item in value.split(","):
        name, sep, num = item.strip().rpartition("=")
        try:
            w = float(num)
        except ValueError:
            raise click.BadParameter(f"{item.strip()!r} is not a number or NAME=NUMBER "
                                     "(e.g. --weights rgb=1,flow=1.5 or --weights 1,1.5)") from None
        out.append((name or None, w))
    named = {n is not None for n, _ in out}
    if len(named) > 1:
        raise click.BadParameter(f"{value!r}: give all weights by name or none by name")
    return out


def _load(scores, crop_agg):
    """Read the --scores sets. Unnamed paths take the modality stored in their files; paths
    with the same name form one set (read together, so their settings must agree)."""
    from ..score import KIND, load_video_scores
    from ..store import open_shards

    from ..modalities import NAMES

    groups: Dict[str, List[str]] = {}
    for name, path in scores:
        shards = open_shards([path], kind=KIND, warn_missing=False)
        mods = sorted({str(r.get("modality")) for r in shards.root.values()})
        if name is None:
            if len(mods) != 1 or mods[0] in ("None", ""):
                raise click.BadParameter(f"{path}: holds modalities {mods}; name the set "
                                         "(NAME=PATH)", param_hint="--scores")
            name = mods[0]
        elif name in NAMES and mods != [name]:
            # a modality's name picks TSN's weight for it: never for another modality's scores
            raise click.BadParameter(f"{name}={path}: those files hold {', '.join(mods)} "
                                     f"scores, not {name}; name them {mods[0]}=... (or a name "
                                     "of your own with --weights)", param_hint="--scores")
        groups.setdefault(name, []).append(path)
    return {name: load_video_scores(paths, modality=name, crop_agg=crop_agg)
            for name, paths in groups.items()}


def _resolve_weights(given, modalities: Sequence[str]) -> Dict[str, float]:
    from ..fuse import default_weights

    if given is None:
        return default_weights(modalities)
    if len(given) != len(modalities):
        raise click.BadParameter(
            f"{len(given)} weights for {len(modalities)} modalities ({', '.join(modalities)}); "
            "give one weight per modality", param_hint="--weights")
    if given[0][0] is None:
        return {m: w for m, (_, w) in zip(modalities, given)}
    names = [n for n, _ in given]
    if sorted(names) != sorted(modalities):
        raise click.BadParameter(f"weights name {sorted(names)} but the score files are "
                                 f"{sorted(modalities)}", param_hint="--weights")
    return {m: dict(given)[m] for m in modalities}


@click.command()
@click.option("--scores", "scores", multiple=True, required=True, callback=_parse_scores,
              metavar="[NAME=]PATH",
              help="Score file or folder of score shards of one modality; repeat per modality. "
                   "NAME (rgb, flow, warped, ...) defaults to the modality stored in the files.")
@click.option("--weights", callback=_parse_weights, default=None, metavar="W1,W2,...",
              help="Fusion weights, by name (rgb=1,flow=1.5) or in --scores order (1,1.5). "
                   "[default: TSN's rgb 1 / flow 1.5; rgb 1 / flow 1 / warped 0.5; else 1 each]")
@click.option("--after-softmax", is_flag=True,
              help="Softmax each modality's video scores before the weighted sum "
                   "(default: sum raw scores, as TSN).")
@click.option("--intersection", is_flag=True,
              help="Fuse only the videos present in every file with the same label "
                   "(default: refuse files whose ids or labels disagree).")
@click.option("--crop-agg", type=click.Choice(["mean", "max"]), default=None,
              help="Re-aggregate the stored per-crop scores (files scored with --save-crops) "
                   "[default: use the scores as aggregated when scored].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for fused.json, confusion.csv/.png and predictions.csv.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs in --out.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the JSON report on stdout instead of the table.")
def fuse(scores, weights, after_softmax, intersection, crop_agg, out_dir, overwrite, as_json):
    """Late fusion of per-modality score files (TSN: weighted sum before softmax).

    \b
    tsn fuse --scores rgb=out/scores-rgb --scores flow=out/scores-flow --out out/fused
    tsn fuse --scores a.h5 --scores b.h5 --weights 1,1.5 --after-softmax --out out/fused

    Videos are matched by id. Prints top-1 / top-5 / mean class accuracy per modality and
    fused (percent), and writes the report and the fused confusion matrix into --out.
    """
    from ..fuse import REPORT_FILES, FuseConfig, FuseError, format_table, fuse_report, write_report
    from ..store import StoreError

    out = Path(out_dir)
    existing = [n for n in REPORT_FILES if (out / n).exists()]
    if existing and not overwrite:
        raise click.ClickException(f"{out} already holds {existing}; use --overwrite or "
                                   "another --out folder")
    with fails_with(StoreError):
        tables = _load(scores, crop_agg)
    modalities = list(tables)
    w = _resolve_weights(weights, modalities)
    with bad_settings(param_hint="--weights"):
        cfg = FuseConfig(weights=tuple(w.items()), after_softmax=after_softmax,
                         intersection=intersection)
    with fails_with(FuseError):
        result = fuse_report(tables, cfg)
    try:
        report = write_report(out, tables, result, cfg, crop_agg)
    except OSError as exc:
        raise click.ClickException(f"cannot write into {out}: {exc}") from exc
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        click.echo(format_table(result.metrics, w, cfg.topk))
        click.echo(f"{len(result.ids)} videos; report in {out / 'fused.json'}")
