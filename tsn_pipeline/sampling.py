"""Segment and snippet sampling: which frames (or flow fields) a TSN clip is made of.

Pure functions of the video length and an explicit ``numpy.random.Generator``; no I/O, no
global random state. Indices are 0-based everywhere (the original tsn-pytorch lists count
from 1 and add 1 inside the dataset; we never do).

``segment_indices(num_frames, num_segments, new_length, mode, rng)`` returns an int64 array
``(num_segments, new_length)``: row k holds the ``new_length`` consecutive items of snippet k,
clamped at the last item. ``num_frames`` is the number of *items* the snippet is drawn from:
frames for RGB, flow fields (``num_flows = num_frames - step``) for flow and warped flow.
For RGB difference pass ``new_length + 1`` (the model differences consecutive frames).

Worked example (``num_frames=10, num_segments=3, new_length=1``)::

    avail = 10 - 1 + 1 = 10 start positions, segment length 10 // 3 = 3
    train: [[0 + r0], [3 + r1], [6 + r2]] with r_k ~ U{0, 1, 2}
    val  : tick = 10 / 3 = 3.33 -> starts int(1.67), int(5.0), int(8.33) = [[1], [5], [8]]
    test (25 snippets): tick = 10 / 25 = 0.4 -> starts int(0.2 + 0.4 k) = 0,0,1,1,1,2,...,9

Videos shorter than needed are handled as TSN does (``TSNDataSet._sample_indices``):

* train: if ``avail // K == 0`` (fewer start positions than segments) and the video has more
  than ``K`` items, the K starts are drawn uniformly from all start positions and sorted;
  otherwise (``num_frames <= K``) every snippet starts at 0.
* a snippet that runs past the end repeats the last item (TSN's ``if p < num_frames: p += 1``).
* val: TSN returns all-zero starts when ``num_frames <= K + new_length - 1``; we take segment
  centres in every case (for ``avail == K`` that is ``0..K-1`` rather than ``0, 0, 0``), which
  is what TSN intends and what its test mode already does.
* ``num_frames < new_length`` (a 3-frame video with 5-field flow stacks): there is one start,
  0, and the snippet repeats the last item; tsn-pytorch raised ``ValueError`` here.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

MODES = ("train", "val", "test")


def _check(num_frames: int, num_segments: int, new_length: int, mode: str) -> None:
    if int(num_frames) < 1:
        raise ValueError(f"num_frames={num_frames}: a video needs at least 1 frame/flow field "
                         "to sample from; drop empty videos from the list")
    if int(num_segments) < 1:
        raise ValueError(f"num_segments={num_segments} must be >= 1")
    if int(new_length) < 1:
        raise ValueError(f"new_length={new_length} must be >= 1")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")


def segment_indices(num_frames: int, num_segments: int, new_length: int, mode: str,
                    rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """0-based item indices ``(num_segments, new_length)`` of one clip (see module docstring).

    ``rng`` draws the random offsets of ``mode="train"`` (required there, ignored otherwise).

    >>> segment_indices(10, 3, 1, "val", None).ravel().tolist()
    [1, 5, 8]
    >>> segment_indices(7, 2, 5, "val", None).tolist()   # avail 3, tick 1.5: starts 0, 2
    [[0, 1, 2, 3, 4], [2, 3, 4, 5, 6]]
    >>> segment_indices(3, 1, 5, "test", None).tolist()  # clamped at the last field
    [[0, 1, 2, 2, 2]]
    """
    _check(num_frames, num_segments, new_length, mode)
    n, k, length = int(num_frames), int(num_segments), int(new_length)
    avail = max(n - length + 1, 1)          # number of valid start positions
    if mode == "train":
        if rng is None:
            raise ValueError("mode='train' draws random offsets: pass rng=np.random.default_rng(seed)")
        seg = avail // k
        if seg > 0:
            starts = np.arange(k, dtype=np.int64) * seg + rng.integers(0, seg, size=k)
        elif n > k:
            starts = np.sort(rng.integers(0, avail, size=k)).astype(np.int64)
        else:
            starts = np.zeros(k, dtype=np.int64)
    else:   # val: K segment centres; test: K evenly spaced snippets (same formula)
        tick = avail / float(k)
        starts = np.array([int(tick / 2.0 + tick * i) for i in range(k)], dtype=np.int64)
    idx = starts[:, None] + np.arange(length, dtype=np.int64)[None, :]
    return np.minimum(idx, n - 1)


def snippet_length(modality: str, new_length: int) -> int:
    """Items read per snippet: ``new_length`` (+1 for ``rgbdiff``, whose model differences them)."""
    from .modalities import get

    return get(modality).snippet_length(new_length)


def stride_indices(num_items: int, stride: int, length: int) -> np.ndarray:
    """Snippets starting at items ``0, stride, 2*stride, ...`` while a whole snippet fits.

    Returns ``(S, length)`` int64. A video shorter than one snippet gives one snippet at 0
    with the last item repeated (as ``sampling.segment_indices``).

    >>> stride_indices(40, 16, 1)[:, 0].tolist()
    [0, 16, 32]
    >>> stride_indices(40, 16, 5)[:, 0].tolist()      # last start must leave 5 fields: <= 35
    [0, 16, 32]
    >>> stride_indices(36, 16, 5)[:, 0].tolist()      # 32 + 5 > 36
    [0, 16]
    >>> stride_indices(3, 16, 5).tolist()
    [[0, 1, 2, 2, 2]]
    """
    if int(num_items) < 1:
        raise ValueError(f"num_items={num_items}: a video needs at least one frame/flow field")
    if int(stride) < 1 or int(length) < 1:
        raise ValueError(f"stride={stride} and length={length} must be >= 1")
    avail = max(int(num_items) - int(length) + 1, 1)
    starts = np.arange(0, avail, int(stride), dtype=np.int64)
    idx = starts[:, None] + np.arange(int(length), dtype=np.int64)[None, :]
    return np.minimum(idx, int(num_items) - 1)
