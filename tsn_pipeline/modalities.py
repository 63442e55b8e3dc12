"""The streams TSN trains and the shard kinds that feed them: one table, no torch.

Reads and writes nothing. Every modality fact (which shards a stream reads, its memory
layout, channels per item, snippet length, TSN's dropout and training recipe) is a field of
one ``Modality`` row below; model, data, transforms, train and the CLI's choices derive from
it, so a new stream is one row, not ten edits. Background: docs/TSN.md ("Sampling", "Good
practices", "Training recipe").

>>> MODALITIES["warped"].shard_kind, MODALITIES["warped"].flow_kind
('flow', 'warped')
>>> [m for m in MODALITIES if MODALITIES[m].reads_flow]
['flow', 'warped']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

FLOW_KINDS = ("tvl1", "warped")          # the flow streams `tsn flow` writes, in shard order
SHARD_KINDS = ("frames", "flow", "scores", "features")


@dataclass(frozen=True)
class Modality:
    """One TSN stream.

    ``layout``: ``"hwc"`` (images, ``(H, W, 3)`` per item) or ``"flow"`` (``(2, H, W)``, x
    then y). ``extra_items``: items read beyond ``new_length`` per snippet (RGB difference
    reads ``new_length + 1`` frames and differences them in the model).
    """

    name: str
    shard_kind: str                  # "frames" or "flow": the shard set the stream reads
    flow_kind: Optional[str]         # the flow stream of a flow modality ("tvl1", "warped")
    layout: str
    base_channels: int               # channels of one item: 3 (RGB) or 2 (flow x, y)
    new_length: int                  # default items per snippet (TSN: 1 RGB, 5 otherwise)
    extra_items: int                 # 1 for RGB difference
    dropout: float                   # TSN's extra dropout before the classifier
    lr: float                        # TSN's released recipe (UCF101, BN-Inception)
    lr_steps: Tuple[int, ...]
    iterations: int
    clip_grad: float

    @property
    def reads_flow(self) -> bool:
        return self.shard_kind == "flow"

    def snippet_length(self, new_length: Optional[int] = None) -> int:
        """Items read per snippet for ``new_length`` (default: the modality's)."""
        return int(self.new_length if new_length is None else new_length) + self.extra_items


_RGB_RECIPE = dict(lr=0.001, lr_steps=(1500,), iterations=3500, clip_grad=40.0)
_FLOW_RECIPE = dict(lr=0.005, lr_steps=(10000, 16000), iterations=18000, clip_grad=20.0)

MODALITIES: Dict[str, Modality] = {m.name: m for m in (
    Modality("rgb", "frames", None, "hwc", 3, 1, 0, 0.8, **_RGB_RECIPE),
    Modality("flow", "flow", "tvl1", "flow", 2, 5, 0, 0.7, **_FLOW_RECIPE),
    Modality("warped", "flow", "warped", "flow", 2, 5, 0, 0.7, **_FLOW_RECIPE),
    Modality("rgbdiff", "frames", None, "hwc", 3, 5, 1, 0.8, **_RGB_RECIPE),
)}
NAMES = tuple(MODALITIES)


def get(name: str) -> Modality:
    """The row of ``name``; a ValueError listing the modalities otherwise."""
    try:
        return MODALITIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown modality {name!r}; expected one of {', '.join(NAMES)}") from None
