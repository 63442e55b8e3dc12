"""TSN: a shared 2D backbone over K snippets, segmental consensus, TSN's good practices.

Builds models without reading anything (construct, then load: ``build_model(cfg)`` then
``load_weights(model, path_or_state)``, as timm's ``build_model_with_cfg``/``load_pretrained``).
``load_weights`` is the one place weights are read and adapted: ImageNet backbone files
(``ModelConfig.pretrained``; torchvision ResNet state dicts, or BN-Inception as ``tsn convert``
writes it), checkpoints written by ``tsn train`` and models converted by ``tsn convert``.
Writes nothing itself.

* Backbones behind one small interface (``Backbone``): ResNet-18/34/50/101 (torchvision's,
  written here with its names and init), ``resnet10`` (a [1,1,1,1] ResNet for smoke tests)
  and BN-Inception (Ioffe & Szegedy 2015, the network of the TSN paper) written for current
  PyTorch with torchvision-style names (``conv1.conv.weight``,
  ``inception3a.branch2.1.bn.running_mean``, ... like googlenet);
  its convs keep the biases of the released Caffe model, trained (lr x2, no decay) in front
  of the frozen BatchNorms as in tsn-pytorch.
* Cross-modality initialisation (``cross_modality_init``) is a pure function on the first
  conv weight; partial BN freezes every BatchNorm after the first (statistics and affine
  parameters); an extra dropout sits before the new classifier.
* Input normalisation (mean/std per base channel, 0..1 scale) is part of ``ModelConfig``, so a
  checkpoint says how its input must be prepared (like timm's pretrained config). Inputs are
  RGB for every backbone: BN-Inception's Caffe weights, which expect BGR, have their first
  conv's input channels reversed by ``tsn convert`` (the same logits as BGR input).
* ``param_groups`` gives TSN's lr / weight-decay multipliers (tsn-pytorch's
  ``get_optim_policies``).

Shapes: ``TSN.forward(x)`` takes ``(B, K, C, H, W)`` and returns ``(B, num_classes)``, the
consensus of the K snippet scores before softmax. ``C`` is ``3`` for RGB, ``2 * new_length``
for flow/warped (x0 y0 x1 y1 ...), ``3 * (new_length + 1)`` for RGB difference (the model
differences consecutive frames itself, giving ``3 * new_length`` channels to the backbone).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .modalities import NAMES
from .modalities import get as get_modality

MODALITIES = NAMES
CONSENSUS = ("avg", "max")
ARCHS = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "bninception")
CHECKPOINT_FORMAT = "tsn-pipeline-checkpoint-1"

# Normalisation on the 0..1 scale, per base channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# BN-Inception (Caffe) expects 0..255 input minus a per-channel mean, BGR [104, 117, 128];
# our frames are RGB (converted weights take RGB), so the mean is given in RGB order and
# std 1/255 rescales to 0..255: the model sees exactly tsn-pytorch's ``v - mean``.
BNINCEPTION_MEAN = (128 / 255, 117 / 255, 104 / 255)
BNINCEPTION_STD = (1 / 255, 1 / 255, 1 / 255)


def default_new_length(modality: str) -> int:
    return get_modality(modality).new_length


def default_dropout(modality: str) -> float:
    """TSN: 0.8 before the classifier for RGB (and RGB difference), 0.7 for flow."""
    return get_modality(modality).dropout


def default_normalisation(arch: str, modality: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) per base channel for ``arch`` and ``modality`` (tsn-pytorch's choices).

    Flow is quantised around 128, so its mean is 0.5 (128/255); for ResNets its std is the
    mean of ImageNet's stds. RGB difference is not normalised (tsn-pytorch's ``main.py``
    trains it on raw values: 0..1 for ResNets, 0..255 for BN-Inception), so mean 0 and std 1
    (ResNet) or 1/255 (BN-Inception).
    """
    if modality == "rgbdiff":
        return (0.0,) * 3, (1 / 255,) * 3 if arch == "bninception" else (1.0,) * 3
    if arch == "bninception":
        if get_modality(modality).reads_flow:
            return (128 / 255,) * 2, (1 / 255,) * 2
        return BNINCEPTION_MEAN, BNINCEPTION_STD
    if get_modality(modality).reads_flow:
        s = sum(IMAGENET_STD) / 3
        return (0.5, 0.5), (s, s)
    return IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a TSN model; stored (as JSON) in every checkpoint.

    ``None`` fields are resolved from the modality/arch in ``__post_init__``: ``new_length``
    (1 RGB, 5 otherwise), ``dropout`` (0.8 RGB/RGB-diff, 0.7 flow), ``mean``/``std``.
    ``pretrained`` records the local ImageNet state dict the run started from (never
    downloaded; ``load_weights`` reads it, the constructor does not); ``cross_modality_init``
    adapts its first conv to non-RGB input. ``channels_last`` runs the backbone in NHWC.
    ``partial_bn`` freezes every BatchNorm after the first; ``freeze_bn`` freezes all of them
    (statistics and affine parameters), so that a sample's output does not depend on the rest
    of its batch (used to check DDP against one process on CPU, where PyTorch has no
    SyncBatchNorm).
    """

    arch: str = "resnet50"
    modality: str = "rgb"
    num_classes: int = 101
    num_segments: int = 3
    new_length: Optional[int] = None
    consensus: str = "avg"
    dropout: Optional[float] = None
    partial_bn: bool = True
    freeze_bn: bool = False
    pretrained: Optional[str] = None
    cross_modality_init: bool = True
    input_size: int = 224
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    channels_last: bool = False

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is not supported; supported: {', '.join(ARCHS)}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality {self.modality!r} is not supported; supported: "
                             f"{', '.join(MODALITIES)}")
        if self.consensus not in CONSENSUS:
            raise ValueError(f"consensus {self.consensus!r} is not supported; supported: "
                             f"{', '.join(CONSENSUS)} (taken before softmax)")
        if int(self.num_classes) < 1:
            raise ValueError(f"num_classes={self.num_classes} must be >= 1")
        if int(self.num_segments) < 1:
            raise ValueError(f"num_segments={self.num_segments} must be >= 1")
        if self.new_length is None:
            set_("new_length", default_new_length(self.modality))
        if int(self.new_length) < 1:
            raise ValueError(f"new_length={self.new_length} must be >= 1")
        if self.modality == "rgb" and self.new_length != 1:
            raise ValueError(f"modality rgb takes one frame per snippet (new_length=1), got "
                             f"{self.new_length}; use rgbdiff for stacks of frames")
        if self.dropout is None:
            set_("dropout", default_dropout(self.modality))
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if int(self.input_size) < 32:
            raise ValueError(f"input_size={self.input_size} must be >= 32")
        mean, std = default_normalisation(self.arch, self.modality)
        set_("mean", tuple(float(v) for v in (self.mean if self.mean is not None else mean)))
        set_("std", tuple(float(v) for v in (self.std if self.std is not None else std)))
        if len(self.mean) != self.base_channels or len(self.std) != self.base_channels:
            raise ValueError(f"{self.modality}: mean and std need {self.base_channels} values, "
                             f"got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std {self.std} must be positive")
        for k in ("num_classes", "num_segments", "new_length", "input_size"):
            set_(k, int(getattr(self, k)))
        set_("dropout", float(self.dropout))

    @property
    def base_channels(self) -> int:
        """Channels of one frame/field: 3 (RGB) or 2 (flow x, y)."""
        return get_modality(self.modality).base_channels

    @property
    def snippet_length(self) -> int:
        """Frames/fields read per snippet (``new_length``, +1 for RGB difference)."""
        from .sampling import snippet_length

        return snippet_length(self.modality, self.new_length)

    @property
    def input_channels(self) -> int:
        """Channels of one snippet as given to ``TSN.forward``."""
        return self.base_channels * self.snippet_length

    @property
    def backbone_channels(self) -> int:
        """Channels of the backbone's first conv (``3 * new_length`` for RGB difference)."""
        return self.base_channels * self.new_length

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        d = dict(d)
        for k in ("mean", "std"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def cross_modality_init(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """TSN's cross-modality initialisation of a first conv ``(O, 3, kh, kw)`` weight.

    Averages the kernels over the RGB input channels and replicates the mean to
    ``in_channels`` (``2 * new_length`` for flow, ``3 * new_length`` for RGB difference):
    returns ``(O, in_channels, kh, kw)``. Pure: the input is not modified.
    """
    if weight.dim() != 4:
        raise ValueError(f"expected a conv weight (O, I, kh, kw), got shape {tuple(weight.shape)}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels={in_channels} must be >= 1")
    mean = weight.mean(dim=1, keepdim=True)
    return mean.expand(-1, int(in_channels), -1, -1).contiguous().clone()


# -- backbones ----------------------------------------------------------------------------
class Backbone(nn.Module):
    """The small interface TSN needs from a 2D network.

    ``features(x)``: ``(N, C, H, W) -> (N, num_features)`` globally pooled features.
    ``first_conv``: name of the first conv module (e.g. ``"conv1"``), whose input channels
    ``set_in_channels`` changes. ``classifier_prefix``: state-dict prefix of the ImageNet
    classifier, dropped when loading pretrained weights.
    """

    num_features: int
    first_conv: str
    classifier_prefix: str = "fc."

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Abstract: every backbone class defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define features()")

    def forward(self, x):
        return self.features(x)

    def set_in_channels(self, in_channels: int) -> None:
        conv = self.get_submodule(self.first_conv)
        if conv.in_channels == in_channels:
            return
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                        conv.padding, conv.dilation, conv.groups, conv.bias is not None)
        parent_name, _, child = self.first_conv.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        setattr(parent, child, new)


class ResBlock(nn.Module):
    """torchvision's ResNet blocks (v1.5), with its names: ``BasicBlock`` (two 3x3 convs) or,
    with ``bottleneck``, ``Bottleneck`` (1x1, 3x3 carrying the stride, 1x1 to ``4 * planes``);
    ``downsample`` (1x1 conv + BN) on the shortcut when the shape changes."""

    def __init__(self, cin: int, planes: int, stride: int, bottleneck: bool):
        super().__init__()
        conv = lambda i, o, k, s=1: nn.Conv2d(i, o, k, s, k // 2, bias=False)  # noqa: E731
        self.out_channels = cout = 4 * planes if bottleneck else planes
        # torchvision draws the shortcut's conv first and registers it last: the same
        # random stream and module order (its init loop walks the modules)
        down = (nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout else None)
        self.bottleneck = bottleneck
        if bottleneck:
            self.conv1, self.bn1 = conv(cin, planes, 1), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
            self.conv3, self.bn3 = conv(planes, cout, 1), nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
        else:
            self.conv1, self.bn1 = conv(cin, planes, 3, stride), nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2, self.bn2 = conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.downsample = down

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.bottleneck:
            out = self.bn3(self.conv3(self.relu(out)))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNetBackbone(Backbone):
    """torchvision's ResNet (v1.5) without its ``fc``: the same modules and state-dict names,
    forward and random initialisation (kaiming-normal fan-out convs, BN weight 1 and bias 0,
    no zero-init of a block's last BN), so torchvision state dicts load as they are. Written
    here: importing ``torchvision.models`` costs seconds (it imports ``torch._dynamo``)."""

    first_conv = "conv1"
    # arch -> (bottleneck blocks, blocks per stage)
    LAYOUTS = {"resnet10": (False, (1, 1, 1, 1)), "resnet18": (False, (2, 2, 2, 2)),
               "resnet34": (False, (3, 4, 6, 3)), "resnet50": (True, (3, 4, 6, 3)),
               "resnet101": (True, (3, 4, 23, 3)), "resnet152": (True, (3, 8, 36, 3))}

    def __init__(self, arch: str):
        super().__init__()
        bottleneck, layers = self.LAYOUTS[arch]
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = []
            for b in range(blocks):
                stage.append(ResBlock(cin, planes, 2 if i and not b else 1, bottleneck))
                cin = stage[-1].out_channels
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.num_features = cin
        nn.Linear(cin, 1000)    # torchvision's classifier draws its init here: the same stream
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:   # see load_checkpoint
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class BasicConv2d(nn.Module):
    """conv (with bias, as the Caffe model) + BatchNorm + ReLU, named like torchvision's
    googlenet/inception."""

    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=True, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class InceptionBN(nn.Module):
    """One BN-Inception block: 1x1 | 1x1->3x3 | 1x1->3x3->3x3 | pool(->1x1), concatenated.

    Stride-2 blocks (3c, 4e) have no 1x1 branch and a bare max-pool branch.
    """

    def __init__(self, cin, c1, c3r, c3, cd3r, cd3, pool, proj, stride=1):
        super().__init__()
        self.stride = stride
        self.branch1 = BasicConv2d(cin, c1, kernel_size=1) if c1 else None
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, kernel_size=1),
                                     BasicConv2d(c3r, c3, kernel_size=3, stride=stride, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, cd3r, kernel_size=1),
                                     BasicConv2d(cd3r, cd3, kernel_size=3, padding=1),
                                     BasicConv2d(cd3, cd3, kernel_size=3, stride=stride, padding=1))
        if stride == 1:
            p = (nn.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=True) if pool == "avg"
                 else nn.MaxPool2d(3, 1, 1, ceil_mode=True))
            self.branch4 = nn.Sequential(p, BasicConv2d(cin, proj, kernel_size=1))
        else:
            self.branch4 = nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True))
        self.out_channels = (c1 or 0) + c3 + cd3 + (proj if stride == 1 else cin)

    def forward(self, x):
        outs = [] if self.branch1 is None else [self.branch1(x)]
        outs += [self.branch2(x), self.branch3(x), self.branch4(x)]
        if self.stride != 1:   # ceil-mode pooling may be one pixel larger than the convs
            h = min(o.shape[-2] for o in outs)
            w = min(o.shape[-1] for o in outs)
            outs = [o[..., :h, :w] for o in outs]
        return torch.cat(outs, 1)


class BNInceptionBackbone(Backbone):
    """BN-Inception (the TSN paper's backbone), 1024-d features, for current PyTorch.

    Layer widths follow the Caffe model TSN released (bn_inception); names are
    torchvision-style: ``conv1``, ``conv2`` (1x1 reduce), ``conv3`` (3x3), ``inception3a`` ..
    ``inception5b``, each with ``branch1..4``. Every conv keeps its bias as in the Caffe
    model and tsn-pytorch: in front of a frozen BatchNorm (partial BN) a bias is a trained
    shift (69 conv weights + 69 biases + the first BN + the classifier: 142 trainable tensors).
    ``tsn convert`` documents the mapping from tsn-pytorch's names (``conv1_7x7_s2``,
    ``inception_3a_double_3x3_1_bn``, ...).
    """

    first_conv = "conv1.conv"
    # cin, 1x1, 3x3 reduce, 3x3, double 3x3 reduce, double 3x3, pool, proj, stride
    _BLOCKS = [
        ("inception3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),
        ("inception3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),
        ("inception3c", 320, 0, 128, 160, 64, 96, "max", 0, 2),
        ("inception4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),
        ("inception4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),
        ("inception4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),
        ("inception4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),
        ("inception4e", 608, 0, 128, 192, 192, 256, "max", 0, 2),
        ("inception5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),
        ("inception5b", 1024, 352, 192, 320, 192, 224, "max", 128, 1),
    ]

    def __init__(self, arch: str = "bninception"):
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        names = []
        for name, *spec in self._BLOCKS:
            block = InceptionBN(*spec)
            setattr(self, name, block)
            names.append(name)
        self._names = names
        self.num_features = 1024

    def features(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        for name in self._names:
            x = getattr(self, name)(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def build_backbone(arch: str) -> Backbone:
    """``arch`` -> randomly initialised ``Backbone`` (see ``ARCHS``)."""
    if arch in ResNetBackbone.LAYOUTS:
        return ResNetBackbone(arch)
    if arch == "bninception":
        return BNInceptionBackbone()
    raise ValueError(f"arch {arch!r} is not supported; supported: {', '.join(ARCHS)}")


def read_weights(path) -> Dict[str, torch.Tensor]:
    """The state dict of tensors in a local file (``{"state_dict": ...}`` and DataParallel's
    ``module.`` prefixes unwrapped). Read with ``torch.load(weights_only=True)``."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"weights file {path!r} does not exist; tsn-pipeline never downloads weights: "
            "save a torchvision state dict first, e.g. torch.save(torchvision.models."
            "resnet50(weights='DEFAULT').state_dict(), 'r50.pth'), or `tsn convert` "
            "downloaded tsn-pytorch / mmaction2 weights")
    from .checkpoint import load_weights_only

    state = load_weights_only(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors (torchvision format expected)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def check_keys(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor], what: str,
               target: str) -> None:
    """ValueError listing missing / unexpected / mis-shaped keys of ``state`` against ``own``.

    BatchNorm's ``num_batches_tracked`` (absent from files saved before PyTorch 0.4.1, such
    as torchvision's first ResNet files and tsn-pytorch's) is filled in as 0, as PyTorch does.
    """
    for k in set(own) - set(state):
        if k.endswith(".num_batches_tracked"):
            state[k] = torch.zeros_like(own[k], device="cpu" if own[k].is_meta else None)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if not (missing or unexpected or bad):
        return

    def some(keys):
        return f"{keys[:8]}{' ...' if len(keys) > 8 else ''}"

    parts = [f"missing {len(missing)} {some(missing)}" if missing else "",
             f"unexpected {len(unexpected)} {some(unexpected)}" if unexpected else "",
             "shapes differ for " + ", ".join(f"{k} (file {tuple(state[k].shape)}, model "
                                              f"{tuple(own[k].shape)})" for k in bad[:5])
             if bad else ""]
    raise ValueError(f"{what} does not fit {target}: " + "; ".join(p for p in parts if p))


def load_weights(model: "TSN", weights, name: Optional[str] = None) -> Dict[str, Any]:
    """Read (when ``weights`` is a path), adapt and load weights into ``model``: the one way
    every stage (train, score, features, convert) gives a built model its weights.

    Two layouts are told apart by their keys:

    * a whole TSN (``base.*`` and ``fc.*``: ``tsn train`` checkpoints, ``tsn convert``
      output): loaded as is;
    * an ImageNet backbone (torchvision ResNet names, or BN-Inception in this project's names
      as ``tsn convert`` writes it): the ImageNet classifier (``fc.*``) is dropped,
      the new classifier keeps its initialisation, and a 3-channel first conv is adapted to
      flow / RGB difference input with ``cross_modality_init`` (if the config allows it).

    Missing, unexpected or mis-shaped keys are a ``ValueError`` listing them. Returns a small
    report (what was loaded, whether the first conv was adapted).
    """
    cfg = model.cfg
    what = str(name or (weights if isinstance(weights, (str, os.PathLike)) else "weights"))
    state = read_weights(weights) if isinstance(weights, (str, os.PathLike)) else dict(weights)
    if any(k.startswith("base.") for k in state):
        check_keys(model.state_dict(), state, what, f"a {cfg.arch} {cfg.modality} TSN")
        # a model built on the meta device (no random init) takes the tensors themselves, in
        # its own dtypes (as copying into built parameters would give: a float16 file too)
        meta = model.fc.weight.is_meta
        if meta:
            own = model.state_dict()
            state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=meta)
        return {"weights": what, "tensors": len(state), "cross_modality_init": False}
    backbone = model.base
    state = {k: v for k, v in state.items() if not k.startswith(backbone.classifier_prefix)}
    key = backbone.first_conv + ".weight"
    adapted = False
    in_channels = cfg.backbone_channels
    if key in state and state[key].dim() == 4 and state[key].shape[1] != in_channels:
        if state[key].shape[1] == 3 and cfg.cross_modality_init:
            state[key] = cross_modality_init(state[key], in_channels)
            adapted = True
        else:
            raise ValueError(f"{what}: first conv {key} has {state[key].shape[1]} input channels, "
                             f"the model takes {in_channels}; enable cross-modality init "
                             "(3-channel ImageNet weights) or give matching weights")
    check_keys(backbone.state_dict(), state, what, f"{type(backbone).__name__} ({cfg.arch})")
    backbone.load_state_dict(state, strict=True)
    return {"weights": what, "tensors": len(state), "cross_modality_init": adapted}


# -- TSN ----------------------------------------------------------------------------------
class TSN(nn.Module):
    """Temporal Segment Network over a shared ``Backbone``; see the module docstring."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.base = build_backbone(cfg.arch)
        self.base.set_in_channels(cfg.backbone_channels)
        self.dropout = nn.Dropout(p=cfg.dropout)
        self.fc = nn.Linear(self.base.num_features, cfg.num_classes)
        if not self.fc.weight.is_meta:                  # see load_checkpoint
            nn.init.normal_(self.fc.weight, 0.0, 0.001)  # tsn-pytorch's new classifier init
            nn.init.zeros_(self.fc.bias)
        if cfg.partial_bn or cfg.freeze_bn:
            for bn in self.frozen_bns():
                for p in bn.parameters():
                    p.requires_grad_(False)
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)

    # -- partial BN -----------------------------------------------------------------------
    def batchnorms(self) -> List[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.base.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def frozen_bns(self) -> List[nn.modules.batchnorm._BatchNorm]:
        """All BatchNorms with ``freeze_bn``; every one after the first with ``partial_bn``."""
        if self.cfg.freeze_bn:
            return self.batchnorms()
        return self.batchnorms()[1:] if self.cfg.partial_bn else []

    def train(self, mode: bool = True):
        """Like ``nn.Module.train``; with partial BN the frozen BNs always stay in eval mode."""
        super().train(mode)
        if mode:
            for bn in self.frozen_bns():
                bn.eval()
        return self

    # -- forward --------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, input_channels, H, W)`` -> backbone input (RGB differences computed here)."""
        if x.shape[1] != self.cfg.input_channels:
            raise ValueError(f"{self.cfg.modality} snippets need {self.cfg.input_channels} "
                             f"channels, got input of shape {tuple(x.shape)}")
        if self.cfg.modality == "rgbdiff":
            n, _, h, w = x.shape
            v = x.reshape(n, self.cfg.new_length + 1, 3, h, w)
            x = (v[:, 1:] - v[:, :-1]).reshape(n, 3 * self.cfg.new_length, h, w)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` snippets -> ``(N, D)`` pooled backbone features (before dropout)."""
        return self.base.features(self._prepare(x))

    def forward_snippets(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` snippets -> ``(N, num_classes)`` per-snippet scores (no consensus)."""
        return self.fc(self.dropout(self.forward_features(x)))

    def consensus(self, scores: torch.Tensor) -> torch.Tensor:
        """``(B, K, num_classes)`` -> ``(B, num_classes)``: mean or max over the K snippets."""
        if self.cfg.consensus == "avg":
            return scores.mean(dim=1)
        return scores.amax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, K, C, H, W)`` -> ``(B, num_classes)`` consensus scores before softmax."""
        if x.dim() != 5:
            raise ValueError(f"TSN.forward takes (B, K, C, H, W), got shape {tuple(x.shape)}")
        b, k = x.shape[:2]
        scores = self.forward_snippets(x.flatten(0, 1))
        return self.consensus(scores.view(b, k, -1))

    # -- optimisation ---------------------------------------------------------------------
    def param_groups(self) -> List[Dict[str, Any]]:
        """TSN's parameter groups with ``lr_mult`` / ``decay_mult`` (tsn-pytorch's
        ``get_optim_policies``).

        first conv weight 5/1 for flow and warped (1/1 otherwise), first conv bias 10/0 for
        flow (2/0 otherwise), other conv/linear weights 1/1, other biases 2/0, BN parameters
        1/0. Every trainable parameter is in exactly one group; frozen (partial BN) ones in
        none. Groups without parameters are left out.
        """
        flow = get_modality(self.cfg.modality).reads_flow
        first = self.base.first_conv
        groups = {"first_conv_weight": ([], 5.0 if flow else 1.0, 1.0),
                  "first_conv_bias": ([], 10.0 if flow else 2.0, 0.0),
                  "normal_weight": ([], 1.0, 1.0),
                  "normal_bias": ([], 2.0, 0.0),
                  "bn": ([], 1.0, 0.0)}
        for mname, module in self.named_modules():
            own = list(module.named_parameters(recurse=False))
            if not own:
                continue
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                kind = "bn"
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                kind = None
            else:
                raise TypeError(f"param_groups: no rule for parameters of {mname} "
                                f"({type(module).__name__})")
            for pname, p in own:
                if not p.requires_grad:
                    continue
                if kind == "bn":
                    groups["bn"][0].append(p)
                elif mname == "base." + first:
                    groups["first_conv_" + ("weight" if pname == "weight" else "bias")][0].append(p)
                else:
                    groups["normal_" + ("weight" if pname == "weight" else "bias")][0].append(p)
        return [{"name": n, "params": ps, "lr_mult": lr, "decay_mult": dm}
                for n, (ps, lr, dm) in groups.items() if ps]


def build_model(cfg: ModelConfig) -> TSN:
    """A randomly initialised TSN for ``cfg``, in train mode; reads nothing (``load_weights``
    gives it ImageNet or trained weights)."""
    return TSN(cfg)


def load_checkpoint(path, map_location="cpu") -> Tuple[TSN, ModelConfig, Dict[str, Any]]:
    """Checkpoint of ``tsn train`` / ``tsn convert`` -> ``(model in eval mode, ModelConfig,
    train config dict)``.

    Read by ``checkpoint.read_checkpoint`` (``torch.load(weights_only=True)``; configs are
    JSON strings; a bad file is a ``CheckpointError``, a ValueError). Every weight comes from
    the checkpoint (the ImageNet file it started from is not read).
    """
    from .checkpoint import load_checkpoint_weights, model_config, read_checkpoint

    ckpt = read_checkpoint(path, map_location)
    cfg = model_config(ckpt, path)
    # no random init (1 s for a ResNet-50 on a busy CPU); normal_ on the meta device would
    # import torch's compiler, so the backbones skip it there
    with torch.device("meta"):
        model = build_model(cfg)
    load_checkpoint_weights(model, ckpt, path)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    model.eval()
    if map_location not in (None, "cpu") and not callable(map_location):
        model.to(map_location)
    return model, cfg, json.loads(ckpt.get("train_config") or "{}")
