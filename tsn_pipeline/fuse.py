"""Late fusion of per-modality video scores (TSN section 3.1, "Testing").

Reads: the per-video, snippet-averaged scores of several score files (``tsn score`` output,
one set per modality, loaded by ``score.load_video_scores``). Writes, with ``write_report``
(each file atomically): ``fused.json`` (settings, inputs, metrics), ``confusion.csv`` and
``confusion.png`` (fused predictions, true class on rows) and ``predictions.csv``.

TSN fuses modalities by a weighted sum of their class scores *before* softmax
(RGB:Flow = 1:1.5; RGB:Flow:Warped = 1:1:0.5), the weights are not normalised (like
``tools/eval_scores.py`` of the original code: ``final_scores += agg_score * weight``), and
videos are matched by id, never by list order.

Worked example (before softmax, weights rgb 1, flow 1.5):

    rgb  = [[2, 0], [0, 1]]     flow = [[0, 1], [1, 0]]
    fused = 1 * rgb + 1.5 * flow = [[2, 1.5], [1.5, 1]]  -> predictions [0, 0]
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import metrics

log = logging.getLogger(__name__)

# docs/TSN.md "Fusion" (the paper): RGB:Flow = 1:1.5; RGB:Flow:Warped = 1:1:0.5.
DEFAULT_WEIGHTS: Dict[frozenset, Dict[str, float]] = {
    frozenset({"rgb", "flow"}): {"rgb": 1.0, "flow": 1.5},
    frozenset({"rgb", "flow", "warped"}): {"rgb": 1.0, "flow": 1.0, "warped": 0.5},
}
_SHOWN = 5   # ids listed in a mismatch message


class FuseError(ValueError):
    """Score sets that cannot be fused (ids, labels or class lists disagree)."""


@dataclass(frozen=True)
class VideoScores:
    """One modality's per-video scores, keyed by video id (rows follow ``ids``).

    ``scores`` is ``(N, K)``: the snippet scores of each video averaged over snippets.
    """

    modality: str
    ids: Tuple[str, ...]
    labels: np.ndarray          # (N,) int64, -1 = unknown
    scores: np.ndarray          # (N, K) float64
    classes: Optional[Tuple[str, ...]] = None
    sources: Tuple[str, ...] = ()

    def __post_init__(self):
        n = len(self.ids)
        if self.scores.ndim != 2 or self.scores.shape[0] != n or self.labels.shape != (n,):
            raise ValueError(f"{self.modality}: {n} ids but scores {self.scores.shape} and "
                             f"labels {self.labels.shape}")
        if len(set(self.ids)) != n:
            raise ValueError(f"{self.modality}: duplicate video ids")
        if self.classes is not None and len(self.classes) != self.scores.shape[1]:
            raise ValueError(f"{self.modality}: {len(self.classes)} class names for "
                             f"{self.scores.shape[1]} score columns")

    @property
    def num_classes(self) -> int:
        return int(self.scores.shape[1])


@dataclass(frozen=True)
class FuseConfig:
    """Settings of one fusion. ``weights``: (modality, weight) pairs, in table order."""

    weights: Tuple[Tuple[str, float], ...]
    after_softmax: bool = False
    intersection: bool = False
    topk: Tuple[int, ...] = (1, 5)

    def __post_init__(self):
        names = [m for m, _ in self.weights]
        if not names:
            raise ValueError("no modalities to fuse")
        if len(set(names)) != len(names):
            raise ValueError(f"modality named twice in weights {names}")
        for m, w in self.weights:
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"weight of {m!r} is {w!r}; weights must be finite and >= 0")
        if not any(w > 0 for _, w in self.weights):
            raise ValueError("all weights are 0; give at least one positive weight")
        if not self.topk or any(k < 1 for k in self.topk):
            raise ValueError(f"topk {self.topk} must be positive integers")

    @property
    def weight_map(self) -> Dict[str, float]:
        return {m: float(w) for m, w in self.weights}


def default_weights(modalities: Sequence[str]) -> Dict[str, float]:
    """TSN's weights for rgb+flow (1, 1.5) and rgb+flow+warped (1, 1, 0.5); else all 1."""
    key = frozenset(modalities)
    if key in DEFAULT_WEIGHTS and len(key) == len(modalities):
        table = DEFAULT_WEIGHTS[key]
        return {m: table[m] for m in modalities}
    return {m: 1.0 for m in modalities}


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def fuse(scores_by_modality: Mapping[str, np.ndarray], weights: Mapping[str, float],
         after_softmax: bool = False) -> np.ndarray:
    """Weighted sum of ``(N, K)`` video scores: ``sum_m weights[m] * s_m``.

    ``after_softmax``: each modality's scores go through a softmax over classes first
    (probability averaging); by default raw scores are summed, as in TSN.
    """
    if set(scores_by_modality) != set(weights):
        raise ValueError(f"scores for {sorted(scores_by_modality)} but weights for "
                         f"{sorted(weights)}; give one weight per modality")
    shapes = {m: np.shape(s) for m, s in scores_by_modality.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"score arrays must all be (N, K) of one shape, got {shapes}")
    out = None
    for m, s in scores_by_modality.items():
        s = softmax(s) if after_softmax else np.asarray(s, dtype=np.float64)
        term = float(weights[m]) * s
        out = term if out is None else out + term
    return out


@dataclass(frozen=True)
class Aligned:
    """Several modalities' scores on the same videos, rows in sorted id order."""

    ids: Tuple[str, ...]
    labels: np.ndarray                      # (N,)
    scores: Dict[str, np.ndarray]           # modality -> (N, K)
    classes: Optional[Tuple[str, ...]]
    dropped: Dict[str, List[str]] = field(default_factory=dict)   # reason -> ids


def _few(ids) -> str:
    ids = sorted(ids)
    more = f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    return ", ".join(repr(i) for i in ids[:_SHOWN]) + more


def align(tables: Mapping[str, VideoScores], intersection: bool = False) -> Aligned:
    """Join modality tables by video id. Refuses disagreeing ids/labels unless ``intersection``.

    With ``intersection`` the videos missing from some modality, or whose labels disagree,
    are dropped and listed in ``Aligned.dropped``. Different class counts or class name lists
    are always refused: such files come from different label maps.
    """
    if not tables:
        raise FuseError("no score files to fuse")
    names = list(tables)
    ks = {m: t.num_classes for m, t in tables.items()}
    if len(set(ks.values())) != 1:
        raise FuseError(f"modalities have different numbers of classes {ks}; "
                        "fuse scores of models trained on the same class list")
    classes = None
    for m, t in tables.items():
        if t.classes is None:
            continue
        if classes is not None and tuple(t.classes) != classes:
            diff = [i for i, (a, b) in enumerate(zip(classes, t.classes)) if a != b]
            raise FuseError(f"class names of {m!r} differ from {names[0]!r} at indices "
                            f"{diff[:_SHOWN]}; the files use different label maps")
        classes = classes or tuple(t.classes)
    k = next(iter(ks.values()))
    for m, t in tables.items():
        bad = t.labels[(t.labels >= k) | (t.labels < -1)]
        if bad.size:
            raise FuseError(f"{m!r} has labels {sorted(set(bad.tolist()))[:_SHOWN]} outside "
                            f"0..{k - 1} (-1 = unknown) for {k} classes; the scores and the "
                            "labels come from different class lists")
    id_sets = {m: set(t.ids) for m, t in tables.items()}
    union = set().union(*id_sets.values())
    common = set.intersection(*id_sets.values())
    dropped: Dict[str, List[str]] = {}
    if common != union:
        detail = "; ".join(f"{len(union - s)} missing from {m!r} (e.g. {_few(union - s)})"
                           for m, s in id_sets.items() if union - s)
        if not intersection:
            raise FuseError(f"video ids of the score files disagree: {detail}. Score every "
                            "modality on the same list, or pass --intersection to fuse the "
                            f"{len(common)} videos they share")
        dropped["missing_in_some_modality"] = sorted(union - common)
        log.warning("fusing the %d shared videos; %s", len(common), detail)
    ids = sorted(common)
    rows = {m: {v: i for i, v in enumerate(t.ids)} for m, t in tables.items()}
    labels = {m: t.labels[[rows[m][v] for v in ids]] for m, t in tables.items()}
    ref = labels[names[0]]
    bad = np.zeros(len(ids), dtype=bool)
    for m in names[1:]:
        bad |= labels[m] != ref
    if bad.any():
        bad_ids = [v for v, b in zip(ids, bad) if b]
        examples = "; ".join(
            f"{v!r}: " + ", ".join(f"{m}={int(labels[m][ids.index(v)])}" for m in names)
            for v in bad_ids[:_SHOWN])
        if not intersection:
            raise FuseError(f"labels of {len(bad_ids)} videos disagree between the score files "
                            f"({examples}); the files come from different lists or label maps. "
                            "Pass --intersection to drop these videos")
        dropped["label_mismatch"] = bad_ids
        log.warning("dropping %d videos whose labels disagree (%s)", len(bad_ids), examples)
    keep = ~bad
    ids = [v for v, k in zip(ids, keep) if k]
    if not ids:
        raise FuseError("no video is in every score file with the same label; nothing to fuse")
    scores = {m: tables[m].scores[[rows[m][v] for v in ids]].astype(np.float64) for m in names}
    return Aligned(ids=tuple(ids), labels=ref[keep].astype(np.int64), scores=scores,
                   classes=classes, dropped=dropped)


@dataclass(frozen=True)
class FuseResult:
    ids: Tuple[str, ...]
    labels: np.ndarray              # (N,)
    fused: np.ndarray               # (N, K)
    confusion: np.ndarray           # (K, K) of the fused predictions, true class on rows
    metrics: Dict[str, Dict]        # modality name / "fused" -> metrics.evaluate()
    dropped: Dict[str, List[str]]


def fuse_report(tables: Mapping[str, VideoScores], config: FuseConfig) -> FuseResult:
    """Align ``tables`` by id, fuse with ``config``; metrics per modality and fused.

    Per-modality metrics are computed on the same (aligned) videos as the fused ones so the
    numbers are comparable.
    """
    weights = config.weight_map
    if set(weights) != set(tables):
        raise FuseError(f"weights for {sorted(weights)} but score files for {sorted(tables)}")
    aligned = align({m: tables[m] for m in weights}, intersection=config.intersection)
    fused = fuse(aligned.scores, weights, after_softmax=config.after_softmax)
    topk = config.topk
    table = {m: metrics.evaluate(aligned.scores[m], aligned.labels, topk) for m in weights}
    table["fused"] = metrics.evaluate(fused, aligned.labels, topk)
    cm = metrics.confusion_matrix(aligned.labels, metrics.predictions(fused), fused.shape[1])
    return FuseResult(ids=aligned.ids, labels=aligned.labels, fused=fused, confusion=cm,
                      metrics=table, dropped=aligned.dropped)


def format_table(table: Mapping[str, Mapping], weights: Mapping[str, float],
                 topk: Sequence[int] = (1, 5)) -> str:
    """Plain-text table: one row per modality and one for the fused result (percent)."""
    cols = [f"top{k}" for k in topk] + ["mean_class_accuracy"]
    heads = ["modality", "weight"] + [c.replace("mean_class_accuracy", "mean class acc")
                                      for c in cols] + ["videos"]
    rows = []
    for name, m in table.items():
        w = "" if name == "fused" else f"{weights[name]:g}"
        vals = ["-" if m[c] is None else f"{100 * m[c]:.2f}" for c in cols]
        rows.append([name, w] + vals + [str(m["num_labelled"])])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)   # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(r) for r in rows])


# -- the report files ---------------------------------------------------------------------
REPORT_FILES = ("fused.json", "confusion.csv", "confusion.png", "predictions.csv")


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename onto ``path``: a report file is whole or absent."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")     # suffix: savefig's format
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_report(out, tables: Mapping[str, VideoScores], result: FuseResult,
                 config: FuseConfig, crop_agg: Optional[str] = None) -> Dict[str, Any]:
    """Write ``REPORT_FILES`` into ``out`` (each atomically); returns the ``fused.json`` dict."""
    from . import __version__

    out = Path(out)
    weights = config.weight_map
    k = result.fused.shape[1]
    classes = list(next((t.classes for t in tables.values() if t.classes), None)
                   or [str(i) for i in range(k)])
    report = {
        "package_version": __version__,
        "inputs": {m: list(t.sources) for m, t in tables.items()},
        "weights": dict(weights),
        "after_softmax": config.after_softmax,
        "intersection": config.intersection,
        "crop_agg": crop_agg,
        "num_videos": len(result.ids),
        "dropped": {r: {"count": len(v), "video_ids": v[:20]} for r, v in result.dropped.items()},
        "metrics": result.metrics,
        "classes": classes,
    }
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / "fused.json",
            lambda p: p.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8"))
    _atomic(out / "confusion.csv", lambda p: write_confusion_csv(p, result.confusion, classes))
    _atomic(out / "confusion.png", lambda p: write_confusion_png(
        p, result.confusion, classes, f"fused {'+'.join(tables)} ({len(result.ids)} videos)"))
    _atomic(out / "predictions.csv", lambda p: write_predictions(p, tables, result))
    return report


def write_predictions(path: Path, tables: Mapping[str, VideoScores], result: FuseResult) -> None:
    """One line per video: id, label, fused prediction, each modality's prediction."""
    preds = {}
    for m, t in tables.items():
        row = {v: i for i, v in enumerate(t.ids)}
        preds[m] = metrics.predictions(t.scores[[row[v] for v in result.ids]])
    fused_pred = metrics.predictions(result.fused)
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")     # quotes ids holding commas or quotes
        w.writerow(["video_id", "label", "fused"] + list(tables))
        for i, vid in enumerate(result.ids):
            w.writerow([vid, int(result.labels[i]), int(fused_pred[i])]
                       + [int(preds[m][i]) for m in preds])


def write_confusion_csv(path: Path, cm, class_names: Sequence[str]) -> None:
    """Counts of the confusion matrix, true class on rows, with the class names."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["true\\predicted"] + list(class_names))
        for name, row in zip(class_names, cm):
            w.writerow([name] + [int(v) for v in row])


def write_confusion_png(path: Path, cm, class_names: Sequence[str], title: str) -> None:
    """Row-normalised confusion matrix image (Agg canvas; no pyplot, no global backend)."""
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
