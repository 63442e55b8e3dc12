"""Optical flow stage: TV-L1 and warped TV-L1 between grayscale frames (see docs/FLOW.md).

Modules: ``quantize`` (TSN's 8-bit codec, flip helpers), ``reader`` (read flow shards),
``tvl1_torch`` (batched TV-L1 in PyTorch), ``opencv`` (OpenCV CPU / CUDA wrappers), ``warp``
(camera-motion compensation), ``stage`` (frame shards -> flow shards). Heavy libraries are
imported inside functions.
"""
from .quantize import (DEFAULT_BOUND, dequantize_flow, flip_flow, flip_flow_quantized,
                       hflip_flow, quantize_flow)
from .reader import read_flow

__all__ = ["DEFAULT_BOUND", "dequantize_flow", "flip_flow", "flip_flow_quantized", "hflip_flow",
           "quantize_flow", "read_flow"]
