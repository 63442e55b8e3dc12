"""Segment sampling against tables computed by hand (see the worked examples in sampling.py)."""
import numpy as np
import pytest

from tsn_pipeline.sampling import segment_indices, snippet_length

# (num_frames, num_segments, new_length) -> rows, computed by hand:
# val/test start k = int(tick / 2 + tick * k), tick = (num_frames - new_length + 1) / K
VAL = [
    ((10, 3, 1), [[1], [5], [8]]),                       # tick 3.33: 1.67, 5.0, 8.33
    ((7, 2, 5), [[0, 1, 2, 3, 4], [2, 3, 4, 5, 6]]),     # avail 3, tick 1.5: 0.75, 2.25
    ((3, 3, 1), [[0], [1], [2]]),                        # tick 1 (TSN's code: 0, 0, 0)
    ((2, 3, 1), [[0], [1], [1]]),                        # tick .67: .33, 1.0, 1.67
    ((3, 1, 5), [[0, 1, 2, 2, 2]]),                      # shorter than a snippet: clamped
    ((1, 2, 5), [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]),
    ((10, 3, 6), [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7], [4, 5, 6, 7, 8, 9]]),  # rgbdiff 5+1
]
TEST = [
    ((10, 25, 1), [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 5, 6, 6, 7, 7, 7, 8, 8, 9, 9, 9]),
    # 100 flow fields, 25 stacks of 5: tick 96/25 = 3.84, starts 1.92 + 3.84 k
    ((100, 25, 5), [1, 5, 9, 13, 17, 21, 24, 28, 32, 36, 40, 44, 48, 51, 55, 59, 63, 67, 71,
                    74, 78, 82, 86, 90, 94]),
]
# train: allowed start ranges per segment (avail // K consecutive starts each)
TRAIN_RANGES = [
    ((10, 3, 1), [(0, 2), (3, 5), (6, 8)]),
    ((30, 3, 5), [(0, 7), (8, 15), (16, 23)]),           # avail 26, segment 8
    ((9, 2, 1), [(0, 3), (4, 7)]),                        # avail 9, segment 4: frame 8 unused
]
# train, exact because every segment has a single start (or TSN's short-video rules)
TRAIN_EXACT = [
    ((5, 3, 1), [[0], [1], [2]]),                        # avail 5, segment 1
    ((4, 3, 2), [[0, 1], [1, 2], [2, 3]]),               # avail 3, segment 1
    ((4, 3, 5), [[0, 1, 2, 3, 3]] * 3),                  # n > K but one start: all 0, clamped
    ((2, 3, 1), [[0], [0], [0]]),                        # n <= K: every snippet starts at 0
]


@pytest.mark.parametrize("args,rows", VAL)
def test_val_table(args, rows):
    assert segment_indices(*args, mode="val").tolist() == rows


@pytest.mark.parametrize("args,starts", TEST)
def test_test_table(args, starts):
    idx = segment_indices(*args, mode="test")
    assert idx[:, 0].tolist() == starts
    assert idx.shape == (args[1], args[2])
    np.testing.assert_array_equal(idx[:, 1:] - idx[:, :-1], 1)   # consecutive inside a snippet


@pytest.mark.parametrize("args,ranges", TRAIN_RANGES)
def test_train_offsets_cover_each_segment(args, ranges):
    rng = np.random.default_rng(0)
    seen = [set() for _ in ranges]
    for _ in range(300):
        idx = segment_indices(*args, mode="train", rng=rng)
        assert idx.dtype == np.int64 and idx.shape == (args[1], args[2])
        for k, (lo, hi) in enumerate(ranges):
            assert lo <= idx[k, 0] <= hi
            seen[k].add(int(idx[k, 0]))
            assert idx[k].tolist() == list(range(idx[k, 0], idx[k, 0] + args[2]))
    assert [sorted(s) for s in seen] == [list(range(lo, hi + 1)) for lo, hi in ranges]


@pytest.mark.parametrize("args,rows", TRAIN_EXACT)
def test_train_short_videos(args, rows):
    assert segment_indices(*args, mode="train", rng=np.random.default_rng(1)).tolist() == rows


def test_train_fewer_starts_than_segments_draws_sorted_starts():
    # 6 frames, 5 segments, 3 per snippet: 4 starts < 5 segments, n > K -> sorted random starts
    rng = np.random.default_rng(2)
    draws = set()
    for _ in range(200):
        idx = segment_indices(6, 5, 3, "train", rng)
        starts = idx[:, 0]
        assert np.all(np.diff(starts) >= 0) and starts.min() >= 0 and starts.max() <= 3
        assert idx.max() <= 5
        draws.add(tuple(starts))
    assert len(draws) > 10


def test_same_rng_state_same_indices_and_explicit_rng_required():
    a = segment_indices(50, 3, 5, "train", np.random.default_rng(7))
    b = segment_indices(50, 3, 5, "train", np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="rng"):
        segment_indices(50, 3, 5, "train", None)


@pytest.mark.parametrize("bad,match", [((0, 3, 1, "val"), "at least 1"), ((5, 0, 1, "val"), "num_segments"),
                                       ((5, 3, 0, "val"), "new_length"), ((5, 3, 1, "eval"), "mode")])
def test_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        segment_indices(*bad, rng=np.random.default_rng(0))


def test_snippet_length():
    assert snippet_length("rgb", 1) == 1 and snippet_length("flow", 5) == 5
    assert snippet_length("rgbdiff", 5) == 6


def _tsn_pytorch_indices(n, k, length, mode):
    """tsn-pytorch's TSNDataSet (_get_val_indices / _get_test_indices, then get()'s loop with
    ``if p < num_frames: p += 1``), 1-based, returned 0-based."""
    tick = (n - length + 1) / float(k)
    if mode == "test" or n > k + length - 1:
        offsets = [int(tick / 2.0 + tick * x) + 1 for x in range(k)]
    else:
        offsets = [1] * k                                  # val of a short video: zeros + 1
    rows = []
    for p in offsets:
        row = []
        for _ in range(length):
            row.append(p - 1)
            if p < n:
                p += 1
        rows.append(row)
    return rows


def test_same_as_tsn_pytorch_except_where_it_is_broken():
    """Every val/test index equals tsn-pytorch's for videos of at least K + new_length items.
    Kept differences (docs/TRAINING.md): val of shorter videos takes segment centres where the
    reference puts every snippet at frame 0, and test of videos a few frames shorter than a
    snippet gives the reference negative frame indices, where ours repeat the last item."""
    for mode in ("val", "test"):
        for k, length in [(3, 1), (3, 5), (25, 1), (25, 5), (3, 6)]:
            for n in range(k + length, k + length + 60):
                assert segment_indices(n, k, length, mode).tolist() == \
                    _tsn_pytorch_indices(n, k, length, mode), (mode, n, k, length)
    assert _tsn_pytorch_indices(3, 3, 1, "val") == [[0], [0], [0]]
    assert segment_indices(3, 3, 1, "val").tolist() == [[0], [1], [2]]
    ref = _tsn_pytorch_indices(1, 25, 5, "test")   # tick -0.12: int(-0.06 - 2.88) + 1 = -1
    assert ref[-1] == [-2, -1, 0, 0, 0]                  # img_-0001.jpg, img_00000.jpg, ...
    assert segment_indices(1, 25, 5, "test").tolist() == [[0] * 5] * 25
