"""Group transforms for TSN clips: one set of random parameters per clip, applied to all of it.

Reads/writes nothing on disk: uint8 clips in, uint8 clips (or normalised float tensors) out.

Clip layouts (what ``tsn_pipeline.data.load_clip`` returns), with any leading axes:

* ``"hwc"`` (RGB, RGB difference): ``(..., H, W, 3)`` uint8 RGB.
* ``"flow"`` (flow, warped flow): ``(..., 2, H, W)`` uint8, channel ``FLOW_X`` = 0 is the x
  component, ``FLOW_Y`` = 1 is y, quantised 0..255 around 128 (float flow also accepted).

Every transform follows torchvision v2's pattern: ``make_params(shape, rng)`` draws the random
parameters once, ``apply(clip, params)`` is deterministic; ``__call__(clip, rng)`` does both.
A horizontal flip of flow mirrors the images AND inverts the x component (``255 - x``), by
name, not by position in a list (mmaction2's ``Flip`` inverted every other image instead).

Resizing flow resizes the quantised images as TSN does: flow values are not rescaled with the
image (a flow field resized from 340 to 224 px keeps its pixel displacements). This matches
the released models; rescaling would change their input distribution.

Geometry follows tsn-pytorch (``transforms.py`` there, on PIL images): bilinear resizing that
is antialiased when shrinking (PIL's ``BILINEAR``; here torch's ``antialias=True`` kernel,
within 1 grey level of PIL), short side scaled by truncation (``int(w * size / h)``) and the
centre crop placed at ``round((W - size) / 2)`` (Python's round: half to even).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import modalities

LAYOUTS = ("hwc", "flow")
FLOW_X, FLOW_Y = 0, 1
# TSN's scale sets (ratios of the short side) for multi-scale cropping: RGB frames use four,
# flow and RGB difference three (tsn-pytorch's ``TSN.get_augmentation``).
RGB_SCALES = (1.0, 0.875, 0.75, 0.66)
FLOW_SCALES = (1.0, 0.875, 0.75)


def train_scales(modality: str) -> Tuple[float, ...]:
    """Multi-scale crop ratios for ``modality``: ``RGB_SCALES`` for rgb, else ``FLOW_SCALES``
    (tsn-pytorch: stacks of frames or fields, RGB difference included, use the smaller set)."""
    m = modalities.get(modality)
    return RGB_SCALES if m.snippet_length() == 1 else FLOW_SCALES


def layout_of(modality: str) -> str:
    """``"flow"`` for flow/warped, ``"hwc"`` for rgb/rgbdiff (``modalities``)."""
    return modalities.get(modality).layout


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    return layout


def spatial_size(clip: np.ndarray, layout: str) -> Tuple[int, int]:
    """``(H, W)`` of a clip."""
    if layout == "hwc":
        return int(clip.shape[-3]), int(clip.shape[-2])
    return int(clip.shape[-2]), int(clip.shape[-1])


def crop(clip: np.ndarray, layout: str, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The window ``[top:top+height, left:left+width]`` of every image of the clip."""
    h, w = spatial_size(clip, layout)
    if top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(f"crop {height}x{width} at (top={top}, left={left}) does not fit a "
                         f"{h}x{w} image")
    if layout == "hwc":
        return clip[..., top:top + height, left:left + width, :]
    return clip[..., top:top + height, left:left + width]


def resize(clip: np.ndarray, layout: str, height: int, width: int) -> np.ndarray:
    """Bilinear resize of every image to ``height x width``, antialiased when shrinking.

    PIL's ``BILINEAR`` (what tsn-pytorch resizes with) widens its filter by the shrink factor;
    torch's uint8 ``antialias=True`` kernel does the same and is within 1 grey level of PIL
    (plain bilinear, e.g. ``cv2.INTER_LINEAR``, was up to 33 levels off when shrinking).
    """
    import torch
    from torch.nn import functional as F

    h, w = spatial_size(clip, layout)
    if (h, w) == (height, width):
        return clip
    x = torch.from_numpy(np.ascontiguousarray(clip))
    if layout == "hwc":
        lead = clip.shape[:-3]
        x = x.reshape((-1, h, w, clip.shape[-1])).permute(0, 3, 1, 2)     # NCHW view of NHWC
    else:
        lead = clip.shape[:-2]
        x = x.reshape((-1, 1, h, w))                                       # one plane each
    out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                        antialias=True)
    if layout == "hwc":
        return np.ascontiguousarray(out.permute(0, 2, 3, 1).numpy()).reshape(
            lead + (height, width, clip.shape[-1]))
    return out.numpy().reshape(lead + (height, width))


def hflip(clip: np.ndarray, layout: str) -> np.ndarray:
    """Mirror left-right; for flow also invert x (``255 - x`` on uint8, ``-x`` on float)."""
    out = np.ascontiguousarray(clip[..., ::-1, :] if layout == "hwc" else clip[..., ::-1])
    if layout == "flow":
        x = out[..., FLOW_X, :, :]
        out[..., FLOW_X, :, :] = 255 - x if out.dtype == np.uint8 else -x
    return out


def fix_offsets(image_w: int, image_h: int, crop_w: int, crop_h: int,
                more_fix_crop: bool = True) -> List[Tuple[int, int]]:
    """TSN's fixed crop positions ``(left, top)``: 4 corners + centre (+ 8 more if asked).

    With ``w = (image_w - crop_w) // 4`` and ``h = (image_h - crop_h) // 4``:
    ``(0,0) (4w,0) (0,4h) (4w,4h) (2w,2h)``, then ``(0,2h) (4w,2h) (2w,4h) (2w,0)
    (w,h) (3w,h) (w,3h) (3w,3h)``.
    """
    w = (image_w - crop_w) // 4
    h = (image_h - crop_h) // 4
    out = [(0, 0), (4 * w, 0), (0, 4 * h), (4 * w, 4 * h), (2 * w, 2 * h)]
    if more_fix_crop:
        out += [(0, 2 * h), (4 * w, 2 * h), (2 * w, 4 * h), (2 * w, 0),
                (w, h), (3 * w, h), (w, 3 * h), (3 * w, 3 * h)]
    return out


def crop_size_pairs(image_w: int, image_h: int, output_size: int, scales: Sequence[float],
                    max_distort: int = 1) -> List[Tuple[int, int]]:
    """Candidate ``(crop_w, crop_h)`` of TSN's multi-scale crop.

    Sizes are ``int(short_side * s)``, snapped to ``output_size`` when within 3 px; width and
    height indices may differ by at most ``max_distort``. For a 340x256 frame and 224 output:
    sizes 256, 224, 192, 168.
    """
    base = min(image_w, image_h)
    sizes = [int(base * s) for s in scales]
    sizes = [output_size if abs(s - output_size) < 3 else s for s in sizes]
    return [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes)
            if abs(i - j) <= max_distort]


class GroupTransform:
    """Base: ``make_params`` once per clip, ``apply`` to the whole clip."""

    layout: str = "hwc"

    def make_params(self, shape: Tuple[int, ...], rng: Optional[np.random.Generator]):
        return None

    def apply(self, clip: np.ndarray, params) -> np.ndarray:
        """Abstract: every transform defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define apply()")

    def __call__(self, clip: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        return self.apply(clip, self.make_params(clip.shape, rng))

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _need_rng(rng, who: str) -> np.random.Generator:
    if rng is None:
        raise ValueError(f"{who} is random: pass rng=np.random.default_rng(seed)")
    return rng


class MultiScaleCrop(GroupTransform):
    """TSN's corner cropping + scale jittering, then resize to ``size x size``.

    Crop width and height from ``crop_size_pairs`` (``scales``: see ``train_scales``),
    placed at one of ``fix_offsets`` (13 with ``more_fix_crop``), or anywhere when
    ``fix_crop=False``. Params: ``(left, top, crop_w, crop_h)``.
    """

    def __init__(self, size: int, layout: str = "hwc", scales: Sequence[float] = RGB_SCALES,
                 max_distort: int = 1, fix_crop: bool = True, more_fix_crop: bool = True):
        self.size = int(size)
        self.layout = _check_layout(layout)
        self.scales = tuple(float(s) for s in scales)
        self.max_distort = int(max_distort)
        self.fix_crop = bool(fix_crop)
        self.more_fix_crop = bool(more_fix_crop)

    def make_params(self, shape, rng):
        rng = _need_rng(rng, "MultiScaleCrop")
        h, w = (shape[-3], shape[-2]) if self.layout == "hwc" else (shape[-2], shape[-1])
        pairs = crop_size_pairs(w, h, self.size, self.scales, self.max_distort)
        cw, ch = pairs[int(rng.integers(len(pairs)))]
        cw, ch = min(cw, w), min(ch, h)
        if self.fix_crop:
            offsets = fix_offsets(w, h, cw, ch, self.more_fix_crop)
            left, top = offsets[int(rng.integers(len(offsets)))]
        else:
            left = int(rng.integers(0, w - cw + 1))
            top = int(rng.integers(0, h - ch + 1))
        return int(left), int(top), int(cw), int(ch)

    def apply(self, clip, params):
        left, top, cw, ch = params
        return resize(crop(clip, self.layout, top, left, ch, cw), self.layout, self.size, self.size)


class RandomHorizontalFlip(GroupTransform):
    """Flip the whole clip with probability ``p`` (flow x inverted). Params: bool."""

    def __init__(self, layout: str = "hwc", p: float = 0.5):
        self.layout = _check_layout(layout)
        self.p = float(p)

    def make_params(self, shape, rng):
        return bool(_need_rng(rng, "RandomHorizontalFlip").random() < self.p)

    def apply(self, clip, params):
        return hflip(clip, self.layout) if params else clip


def short_side_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """``(new_h, new_w)`` with the short side ``size``, the long side truncated as
    tsn-pytorch's ``GroupScale`` (torchvision's old ``Scale``): 340x256 -> 256 gives 340,
    but 341x256 -> 224 gives ``int(341 * 224 / 256) = int(298.375) = 298``."""
    if height <= width:
        return int(size), int(width * size / height)
    return int(height * size / width), int(size)


def centre_offset(length: int, size: int) -> int:
    """Start of a centred window: ``round((length - size) / 2)``, Python's round (half to
    even) as torchvision's old ``CenterCrop`` in tsn-pytorch: 7 -> 4 (3.5), 5 -> 2 (2.5)."""
    return int(round((length - size) / 2.0))


class Resize(GroupTransform):
    """Resize so the short side is ``size`` (keeps aspect; TSN's ``GroupScale(256)``)."""

    def __init__(self, size: int, layout: str = "hwc"):
        self.size = int(size)
        self.layout = _check_layout(layout)

    def apply(self, clip, params):
        h, w = spatial_size(clip, self.layout)
        return resize(clip, self.layout, *short_side_size(h, w, self.size))


class _SquareCrop(GroupTransform):
    """Shared by the test-time crops: a ``size x size`` window in a given layout."""

    def __init__(self, size: int, layout: str = "hwc"):
        self.size = int(size)
        self.layout = _check_layout(layout)


class CenterCrop(_SquareCrop):
    """Centre ``size x size`` window (offsets ``centre_offset``); no crop axis added."""

    def apply(self, clip, params):
        h, w = spatial_size(clip, self.layout)
        s = self.size
        return crop(clip, self.layout, centre_offset(h, s), centre_offset(w, s), s, s)


class TenCrop(_SquareCrop):
    """Test-time 10 crops: 4 corners + centre (TSN's fixed offsets), then their mirror images.

    Returns a new leading crop axis: ``(10, ...)``; crops 5..9 are the flips of 0..4, with
    flow x inverted.
    """

    def __init__(self, size: int, layout: str = "hwc", flip: bool = True):
        super().__init__(size, layout)
        self.flip = bool(flip)

    def apply(self, clip, params):
        h, w = spatial_size(clip, self.layout)
        s = self.size
        crops = [crop(clip, self.layout, top, left, s, s)
                 for left, top in fix_offsets(w, h, s, s, more_fix_crop=False)]
        if self.flip:
            crops += [hflip(c, self.layout) for c in crops]
        return np.stack(crops)


class ThreeCrop(_SquareCrop):
    """Three ``size x size`` crops along the long side (start, centre, end), crop axis first."""

    def apply(self, clip, params):
        h, w = spatial_size(clip, self.layout)
        s = self.size
        if w >= h:
            boxes = [(centre_offset(h, s), x) for x in (0, centre_offset(w, s), w - s)]
        else:
            boxes = [(y, centre_offset(w, s)) for y in (0, centre_offset(h, s), h - s)]
        return np.stack([crop(clip, self.layout, top, left, s, s) for top, left in boxes])


class Compose(GroupTransform):
    """Apply transforms in order, each drawing its own parameters from the same ``rng``."""

    def __init__(self, transforms: Sequence[GroupTransform]):
        self.transforms = list(transforms)

    def __call__(self, clip, rng=None):
        for t in self.transforms:
            clip = t(clip, rng)
        return clip


def train_transform(modality: str, input_size: int = 224, flip: bool = True) -> Compose:
    """TSN training augmentation: multi-scale corner crop -> ``input_size`` (scales
    ``train_scales(modality)``), then a random horizontal flip unless ``flip=False`` (for
    classes that a mirror image turns into each other: moving left / moving right)."""
    layout = layout_of(modality)
    steps = [MultiScaleCrop(input_size, layout, train_scales(modality))]
    if flip:
        steps.append(RandomHorizontalFlip(layout))
    return Compose(steps)


def eval_transform(modality: str, input_size: int = 224, crops: str = "center",
                   scale_size: Optional[int] = None) -> Compose:
    """Test/validation: short side -> ``scale_size`` (``input_size * 256 // 224``), then crops.

    ``crops``: ``"center"`` (no crop axis), ``"three"``, ``"five"`` (4 corners + centre, no
    flips) or ``"ten"`` (those 5 and their mirror images), with a leading crop axis.
    """
    layout = layout_of(modality)
    scale_size = int(scale_size or input_size * 256 // 224)
    kinds = {"center": CenterCrop, "three": ThreeCrop, "five": TenCrop, "ten": TenCrop}
    if crops not in kinds:
        raise ValueError(f"crops={crops!r}; expected one of {sorted(kinds)}")
    cropper = (TenCrop(input_size, layout, flip=crops == "ten") if kinds[crops] is TenCrop
               else kinds[crops](input_size, layout))
    return Compose([Resize(scale_size, layout), cropper])


def normalize(clip, modality: str, mean: Sequence[float], std: Sequence[float]):
    """uint8 clip (numpy, or a torch tensor on any device) -> normalised float32 torch tensor
    in the model's layout, computed where the clip is.

    ``clip``: RGB ``(..., S, L, H, W, 3)``, flow ``(..., S, L, 2, H, W)``, RGB difference
    ``(..., S, L+1, H, W, 3)`` (any leading axes, e.g. crops). Returns ``(..., S, C, H, W)``
    with ``C = 3L`` (frame-major: r0 g0 b0 r1 ...), ``2L`` (x0 y0 x1 y1 ..., TSN's interleaving)
    or ``3(L+1)``. Values are ``(v / 255 - mean[c]) / std[c]`` with ``mean``/``std`` given per
    base channel (3 for RGB, 2 for flow) on the 0..1 scale, computed as
    ``(v - 255 mean) / (255 std)`` so that Caffe-style statistics (BN-Inception: std 1/255,
    values ``v - 128``) and RGB difference's identity (mean 0, std 1/255: ``v``) are exact.
    """
    import torch

    layout = layout_of(modality)
    x = clip if isinstance(clip, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(clip))
    if layout == "hwc":
        # (..., S, L, 3, H, W), made contiguous while still uint8: the float arithmetic
        # then runs over contiguous memory (1.5x faster; the same values)
        x = x.movedim(-1, -3).contiguous()
    base = x.shape[-3]
    if len(mean) != base or len(std) != base:
        raise ValueError(f"{modality}: mean/std need {base} values (one per channel), got "
                         f"{len(mean)} and {len(std)}")
    m = torch.tensor([255.0 * v for v in mean], dtype=torch.float32, device=x.device)
    s = torch.tensor([255.0 * v for v in std], dtype=torch.float32, device=x.device)
    x = (x.to(torch.float32) - m.view(base, 1, 1)) / s.view(base, 1, 1)
    return x.reshape(x.shape[:-4] + (x.shape[-4] * base,) + x.shape[-2:])
