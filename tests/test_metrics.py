"""Metrics against hand-computed tables (and a brute-force reference for top-k)."""
import numpy as np
import pytest

from tsn_pipeline import metrics


def test_hand_computed_table():
    # 4 videos, 3 classes. Row by row: true-class rank and prediction (argmax, first max).
    scores = np.array([
        [0.1, 0.7, 0.2],    # label 2: class 1 beats it -> rank 1, pred 1
        [0.5, 0.5, 0.0],    # label 1: tie with class 0 (lower index wins) -> rank 1, pred 0
        [3.0, -1., 2.0],    # label 0: best -> rank 0, pred 0
        [0.0, 0.0, 0.0],    # label 2: all tie -> rank 2, pred 0
    ])
    labels = np.array([2, 1, 0, 2])
    assert metrics.true_class_rank(scores, labels).tolist() == [1, 1, 0, 2]
    assert metrics.predictions(scores).tolist() == [1, 0, 0, 0]
    assert metrics.topk_accuracy(scores, labels, 1) == 0.25
    assert metrics.topk_accuracy(scores, labels, 2) == 0.75
    assert metrics.topk_accuracy(scores, labels, 3) == 1.0
    assert metrics.topk_accuracy(scores, labels, 5) == 1.0        # k > K: every video a hit
    cm = metrics.confusion_matrix(labels, metrics.predictions(scores), 3)
    assert cm.tolist() == [[1, 0, 0],
                           [1, 0, 0],
                           [1, 1, 0]]
    # per-class recall: class 0 1/1, class 1 0/1, class 2 0/2 -> mean 1/3
    assert metrics.mean_class_accuracy(cm) == pytest.approx(1 / 3)
    out = metrics.evaluate(scores, labels, topk=(1, 2))
    assert out == {"top1": 0.25, "top2": 0.75, "mean_class_accuracy": pytest.approx(1 / 3),
                   "num_videos": 4, "num_labelled": 4, "num_classes": 3}


def test_mean_class_accuracy_differs_from_top1_and_skips_absent_classes():
    # 3 videos of class 0 (all right), 1 of class 1 (wrong, predicted class 3); class 2 and
    # 3 have no videos and are not averaged (TSN's sklearn-based code would give nan).
    scores = np.eye(4)[[0, 0, 0, 3]]
    labels = np.array([0, 0, 0, 1])
    out = metrics.evaluate(scores, labels)
    assert out["top1"] == 0.75
    assert out["mean_class_accuracy"] == 0.5          # (3/3 + 0/1) / 2
    assert out["top5"] == 1.0


def test_unknown_labels_are_left_out():
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, -1, 1])
    out = metrics.evaluate(scores, labels, topk=(1,))
    assert out["top1"] == 0.5 and out["num_labelled"] == 2 and out["num_videos"] == 3
    assert metrics.confusion_matrix(labels, metrics.predictions(scores), 2).sum() == 2
    none = metrics.evaluate(scores, np.array([-1, -1, -1]), topk=(1,))
    assert none["top1"] is None and none["mean_class_accuracy"] is None


def test_topk_matches_brute_force_stable_sort():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(200, 7)).astype(float)   # many ties on purpose
    labels = rng.integers(0, 7, size=200)
    for k in (1, 2, 5):
        order = np.argsort(-scores, axis=1, kind="stable")     # ties: lower index first
        ref = np.mean([labels[i] in order[i, :k] for i in range(200)])
        assert metrics.topk_accuracy(scores, labels, k) == ref


@pytest.mark.parametrize("scores,labels,msg", [
    (np.zeros((2, 3)), np.array([0, 3]), "outside"),
    (np.zeros((2, 3)), np.array([0]), "labels must be"),
    (np.zeros(3), np.array([0, 1, 2]), "num_videos, num_classes"),
    (np.array([[np.nan, 0.0]]), np.array([0]), "NaN"),
])
def test_bad_input_is_refused(scores, labels, msg):
    with pytest.raises(ValueError, match=msg):
        metrics.evaluate(scores, labels)
