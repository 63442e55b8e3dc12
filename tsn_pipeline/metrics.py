"""Video-level classification metrics: top-k accuracy, mean class accuracy, confusion matrix.

Pure numpy; used by ``tsn score`` (accuracy of one score file) and ``tsn fuse`` (per modality
and fused). Conventions:

* ``scores`` is ``(N, K)`` (any monotone score: raw class scores or softmax), ``labels`` is
  ``(N,)`` int in ``0..K-1``. Videos with label ``-1`` (unknown) are left out of every metric
  and counted as ``unlabelled``.
* Ties are broken towards the lower class index, like ``np.argmax``: the *rank* of the true
  class is the number of classes with a strictly higher score plus the number of classes with
  the same score and a lower index. Top-k is ``rank < k``; top-1 therefore agrees with
  ``argmax``. With ``k >= K`` every video counts as a hit.
* Mean class accuracy is the mean, over the classes that have at least one labelled video,
  of the per-class recall (diagonal of the confusion matrix over its row sum). TSN's
  ``eval_scores.py`` builds the confusion matrix with scikit-learn over the labels present in
  either truth or prediction, so a class that is only ever *predicted* gives ``0/0 = nan``
  there; here such a class is simply not averaged.
* The confusion matrix has the true class on rows and the predicted class on columns.

Worked example: scores ``[[.1, .7, .2], [.5, .5, 0]]``, labels ``[2, 1]``: ranks are ``[1, 1]``
(class 1 beats class 2; in the second row class 0 ties with class 1 and has the lower index),
so top-1 = 0, top-2 = 1, predictions ``[1, 0]``, mean class accuracy = mean(0/1, 0/1) = 0.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np


def _check(scores: np.ndarray, labels: np.ndarray):
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (num_videos, num_classes), got shape {scores.shape}")
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels must be ({scores.shape[0]},) to match scores {scores.shape}, "
                         f"got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.size and (labels.max() >= scores.shape[1] or labels.min() < -1):
        bad = labels[(labels >= scores.shape[1]) | (labels < -1)][:5].tolist()
        raise ValueError(f"labels {bad} outside -1..{scores.shape[1] - 1} "
                         f"(-1 = unknown; {scores.shape[1]} classes)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity")
    return scores, labels


def true_class_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of each video's true class, ties to the lower index. Label -1 -> -1."""
    scores, labels = _check(scores, labels)
    ranks = np.full(labels.shape, -1, dtype=np.int64)
    known = labels >= 0
    if not known.any():
        return ranks
    s = scores[known]
    y = labels[known]
    true = s[np.arange(len(y)), y][:, None]
    lower = np.arange(s.shape[1])[None, :] < y[:, None]
    ranks[known] = (s > true).sum(1) + ((s == true) & lower).sum(1)
    return ranks


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> Optional[float]:
    """Fraction of labelled videos whose true class is among the ``k`` best; None if none."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = true_class_rank(scores, labels)
    ranks = ranks[ranks >= 0]
    if ranks.size == 0:
        return None
    return float(np.mean(ranks < k))


def predictions(scores: np.ndarray) -> np.ndarray:
    """``argmax`` per video (first maximum on ties), ``(N,)`` int64."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (num_videos, num_classes), got shape {scores.shape}")
    return np.argmax(scores, axis=1).astype(np.int64)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts, true class on rows, predicted on columns; label -1 skipped."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} differ in shape")
    known = labels >= 0
    if np.any(labels[known] >= num_classes) or np.any(preds < 0) or np.any(preds >= num_classes):
        raise ValueError(f"labels or predictions outside 0..{num_classes - 1}")
    flat = labels[known] * num_classes + preds[known]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_class_accuracy(confusion: np.ndarray) -> Optional[float]:
    """Mean per-class recall over the classes with at least one video (rows with a count)."""
    confusion = np.asarray(confusion)
    counts = confusion.sum(1)
    present = counts > 0
    if not present.any():
        return None
    return float(np.mean(np.diag(confusion)[present] / counts[present]))


def evaluate(scores: np.ndarray, labels: np.ndarray, topk: Sequence[int] = (1, 5)) -> Dict:
    """Top-k accuracies, mean class accuracy and counts as a JSON-able dict.

    >>> evaluate(np.array([[.1, .7, .2], [.5, .5, 0]]), np.array([2, 1]), topk=(1, 2))
    {'top1': 0.0, 'top2': 1.0, 'mean_class_accuracy': 0.0, 'num_videos': 2, 'num_labelled': 2, 'num_classes': 3}
    """
    scores, labels = _check(scores, labels)
    out: Dict = {f"top{k}": topk_accuracy(scores, labels, k) for k in topk}
    cm = confusion_matrix(labels, predictions(scores), scores.shape[1])
    out["mean_class_accuracy"] = mean_class_accuracy(cm)
    out["num_videos"] = int(len(labels))
    out["num_labelled"] = int((labels >= 0).sum())
    out["num_classes"] = int(scores.shape[1])
    return out
