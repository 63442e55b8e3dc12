"""`tsn fuse`: score files of several modalities -> fused accuracy table, JSON, confusion matrix.

See tsn_pipeline.fuse for the numerics. Writes into --out: fused.json (settings, inputs and
metrics per modality and fused), confusion.csv and confusion.png (fused predictions, true class
on rows) and predictions.csv (per video: label, fused prediction, per-modality prediction).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import click

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
OUTPUTS = ("fused.json", "confusion.csv", "confusion.png", "predictions.csv")


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

    groups: Dict[str, List[str]] = {}
    for name, path in scores:
        if name is None:
            shards = open_shards([path], kind=KIND)
            mods = sorted({str(r.get("modality")) for r in shards.root.values()})
            if len(mods) != 1 or mods[0] in ("None", ""):
                raise click.BadParameter(f"{path}: holds modalities {mods}; name the set "
                                         "(NAME=PATH)", param_hint="--scores")
            name = mods[0]
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


def write_confusion_csv(path: Path, cm, class_names: Sequence[str]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["true\\predicted"] + list(class_names))
        for name, row in zip(class_names, cm):
            w.writerow([name] + [int(v) for v in row])


def write_confusion_png(path: Path, cm, class_names: Sequence[str], title: str) -> None:
    """Row-normalised confusion matrix image (Agg canvas; no pyplot, no global backend)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(class_names)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = min(4 + 0.12 * k, 24)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if k <= 40:
        fs = 8 if k <= 20 else 5
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(class_names, rotation=90, fontsize=fs)
        ax.set_yticklabels(class_names, fontsize=fs)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


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
    from .. import __version__, metrics
    from ..fuse import FuseConfig, FuseError, format_table, fuse_report
    from ..store import StoreError

    out = Path(out_dir)
    existing = [n for n in OUTPUTS if (out / n).exists()]
    if existing and not overwrite:
        raise click.ClickException(f"{out} already holds {existing}; use --overwrite or "
                                   "another --out folder")
    try:
        tables = _load(scores, crop_agg)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    modalities = list(tables)
    w = _resolve_weights(weights, modalities)
    try:
        cfg = FuseConfig(weights=tuple(w.items()), after_softmax=after_softmax,
                         intersection=intersection)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--weights") from exc
    try:
        result = fuse_report(tables, cfg)
    except FuseError as exc:
        raise click.ClickException(str(exc)) from exc

    k = result.fused.shape[1]
    classes = list(next((t.classes for t in tables.values() if t.classes), None)
                   or [str(i) for i in range(k)])
    report = {
        "package_version": __version__,
        "inputs": {m: list(t.sources) for m, t in tables.items()},
        "weights": w,
        "after_softmax": after_softmax,
        "intersection": intersection,
        "crop_agg": crop_agg,
        "num_videos": len(result.ids),
        "dropped": {r: {"count": len(v), "video_ids": v[:20]} for r, v in result.dropped.items()},
        "metrics": result.metrics,
        "classes": classes,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "fused.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        write_confusion_csv(out / "confusion.csv", result.confusion, classes)
        write_confusion_png(out / "confusion.png", result.confusion, classes,
                            f"fused {'+'.join(modalities)} ({len(result.ids)} videos)")
        preds = {}
        for m, t in tables.items():
            row = {v: i for i, v in enumerate(t.ids)}
            preds[m] = metrics.predictions(t.scores[[row[v] for v in result.ids]])
        fused_pred = metrics.predictions(result.fused)
        with open(out / "predictions.csv", "w", encoding="utf-8") as fh:
            fh.write(",".join(["video_id", "label", "fused"] + modalities) + "\n")
            for i, vid in enumerate(result.ids):
                fh.write(",".join([vid, str(int(result.labels[i])), str(int(fused_pred[i]))]
                                  + [str(int(preds[m][i])) for m in preds]) + "\n")
    except OSError as exc:
        raise click.ClickException(f"cannot write into {out}: {exc}") from exc
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        click.echo(format_table(result.metrics, w, cfg.topk))
        click.echo(f"{len(result.ids)} videos; report in {out / 'fused.json'}")
