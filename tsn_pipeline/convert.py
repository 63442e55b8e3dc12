"""Weights people download -> this project's files, offline (``tsn convert``).

Reads one ``.pth`` file (``torch.load(weights_only=True)``: nothing pickled is executed) and
writes either an ImageNet backbone file for ``tsn train --pretrained`` or a checkpoint that
``tsn score`` / ``tsn features`` load like one written by ``tsn train``. The source layout is
recognised by its keys (``detect``):

* ``bninception-imagenet``: tsn-pytorch's ImageNet BN-Inception (``bn_inception-*.pth``,
  loaded by its ``tf_model_zoo.BNInception``; converted from the Caffe model), keys named
  after the Caffe layers (``conv1_7x7_s2.weight``, ``inception_3a_double_3x3_1_bn.running_var``,
  ``fc.weight``; Cadene's ``pretrainedmodels`` copy names its classifier ``last_linear``)
  -> our BN-Inception backbone names (``bninception_name``), classifier dropped.
* ``tsn-pytorch``: a training checkpoint of tsn-pytorch's ``main.py``,
  ``{'epoch', 'arch', 'state_dict', 'best_prec1'}`` with DataParallel keys
  ``module.base_model.<backbone key>`` and ``module.new_fc.{weight,bias}`` (or
  ``module.base_model.fc.*`` when it was trained with dropout 0); ``arch`` ``resnet18/34/50/
  101`` (torchvision names) or ``BNInception`` (the names above); RGB, Flow or RGBDiff.
* ``mmaction2``: an mmaction2 TSN recognizer (``state_dict`` with ``backbone.*`` in mmcv
  ``ConvModule`` names and ``cls_head.fc_cls.*``), ResNet-18/34/50/101.

BN-Inception's Caffe weights expect BGR input (tsn-pytorch's ``Stack(roll=True)``); our
inputs are RGB, so the first conv's input channels are reversed within every frame (RGB and
RGB difference; flow has no colour order). Every other number is copied as is; the result is
loaded into a built model with ``model.load_weights`` before it is written, so a file that
does not fit fails here, with the keys listed, and not at scoring time.

What a checkpoint does not record is asked for: tsn-pytorch never stored its number of
segments (``--num-segments``), and a first conv whose channels fit both flow and RGB
difference (e.g. 30 = 2 x 15 = 3 x 10) needs ``--modality``. The defaults match
tsn-pytorch's own: 3 channels is RGB, ``2 * 5`` flow, ``3 * 5`` RGB difference.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .checkpoint import load_weights_only
from .modalities import get as get_modality
from .model import ARCHS, ModelConfig, build_backbone, build_model, check_keys, load_weights

LAYOUTS = ("bninception-imagenet", "tsn-pytorch", "mmaction2")


class ConvertError(ValueError):
    """The file is not in a layout we convert, or it needs an option to be converted."""


# -- names ---------------------------------------------------------------------------------
# BN-Inception: our module path -> the Caffe layer id used by tsn-pytorch's tf_model_zoo
_STEM = {"conv1": "conv1_7x7_s2", "conv2": "conv2_3x3_reduce", "conv3": "conv2_3x3"}
_BRANCHES = {"branch1": "1x1", "branch2.0": "3x3_reduce", "branch2.1": "3x3",
             "branch3.0": "double_3x3_reduce", "branch3.1": "double_3x3_1",
             "branch3.2": "double_3x3_2", "branch4.1": "pool_proj"}


def bninception_name(key: str) -> str:
    """Our BN-Inception key -> tsn-pytorch's (Caffe layer) key.

    >>> bninception_name("conv1.conv.weight")
    'conv1_7x7_s2.weight'
    >>> bninception_name("inception3c.branch3.1.bn.running_var")
    'inception_3c_double_3x3_1_bn.running_var'
    """
    module, param = key.rsplit(".", 1)
    unit, kind = module.rsplit(".", 1)              # kind: conv | bn
    if unit in _STEM:
        layer = _STEM[unit]
    else:
        block, branch = unit.split(".", 1)          # inception3a, branch3.1
        layer = f"inception_{block[len('inception'):]}_{_BRANCHES[branch]}"
    return f"{layer}{'_bn' if kind == 'bn' else ''}.{param}"


def mmaction2_name(key: str) -> str:
    """Our (torchvision) ResNet key -> mmaction2's ``ResNet`` backbone key (mmcv ConvModule:
    ``convN`` + ``bnN`` become ``convN.conv`` + ``convN.bn``; ``downsample.0/1`` become
    ``downsample.conv/bn``; the stem ``conv1``/``bn1`` becomes ``conv1.conv``/``conv1.bn``).

    >>> mmaction2_name("layer2.0.bn3.running_mean")
    'layer2.0.conv3.bn.running_mean'
    >>> mmaction2_name("layer2.0.downsample.1.weight")
    'layer2.0.downsample.bn.weight'
    """
    key = re.sub(r"(^|\.)bn(\d)\.", r"\1conv\2.bn.", key)
    key = re.sub(r"(^|\.)conv(\d)\.(weight|bias)$", r"\1conv\2.conv.\3", key)
    return key.replace("downsample.0.", "downsample.conv.").replace("downsample.1.",
                                                                    "downsample.bn.")


def _rename(state: Mapping[str, torch.Tensor], own_keys, name_of, what: str,
            target: str) -> Dict[str, torch.Tensor]:
    """``state`` in a source layout -> our keys (``name_of(ours) = theirs``); unknown or
    missing keys are an error listing them."""
    wanted = {name_of(k): k for k in own_keys}
    renamed = {wanted.get(k, k): v for k, v in state.items()}
    unknown = sorted(k for k in state if k not in wanted)
    missing = sorted(k for k in wanted if k not in state and not k.endswith("num_batches_tracked"))
    if unknown or missing:
        raise ConvertError(f"{what} does not fit {target}: "
                           + "; ".join(p for p in (
                               f"unknown keys {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
                               if unknown else "",
                               f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}"
                               if missing else "") if p))
    return renamed


def bgr_to_rgb_first_conv(weight: torch.Tensor) -> torch.Tensor:
    """``(O, 3n, kh, kw)`` conv weight for BGR frames -> the same conv for RGB frames: input
    channels reversed within every group of 3 (``b0 g0 r0 b1 ...`` -> ``r0 g0 b0 r1 ...``)."""
    if weight.dim() != 4 or weight.shape[1] % 3:
        raise ConvertError(f"first conv of shape {tuple(weight.shape)} does not take RGB frames")
    order = [3 * i + 2 - j for i in range(weight.shape[1] // 3) for j in range(3)]
    return weight[:, order].clone()


# -- reading -------------------------------------------------------------------------------
def read_source(path) -> Dict[str, Any]:
    """The file as a dict; tensors and plain values only (``weights_only=True``)."""
    obj = load_weights_only(path)
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: holds a {type(obj).__name__}, not a state dict or checkpoint")
    return obj


def detect(obj: Mapping[str, Any]) -> str:
    """Which of ``LAYOUTS`` a loaded file is in (by its keys)."""
    sd = obj.get("state_dict") if isinstance(obj.get("state_dict"), dict) else obj
    keys = [k[len("module."):] if k.startswith("module.") else k for k in sd]
    if any(k.startswith("base_model.") for k in keys):
        return "tsn-pytorch"
    if {k.split(".")[0] for k in keys} >= {"backbone", "cls_head"}:
        return "mmaction2"
    if "conv1_7x7_s2.weight" in keys:
        return "bninception-imagenet"
    raise ConvertError(f"not a layout tsn convert knows (first keys {sorted(keys)[:5]}); "
                       f"known: {', '.join(LAYOUTS)}. torchvision ResNet state dicts need no "
                       "conversion: give them to `tsn train --pretrained` as they are")


# -- conversions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """What a source file may not say: ``num_segments`` (tsn-pytorch, mmaction2),
    ``modality``/``new_length`` (inferred from the first conv when unambiguous),
    ``num_classes`` (checked against the classifier), ``input_size``."""

    num_segments: Optional[int] = None
    modality: Optional[str] = None
    new_length: Optional[int] = None
    num_classes: Optional[int] = None
    input_size: int = 224


def convert_bninception_imagenet(state: Mapping[str, torch.Tensor], what: str
                                 ) -> Dict[str, torch.Tensor]:
    """tsn-pytorch's ImageNet BN-Inception -> our backbone state dict (RGB first conv, no
    classifier): a ``--pretrained`` file for ``tsn train --arch bninception``."""
    own = build_backbone("bninception").state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "last_linear."))}
    out = _rename(state, own, bninception_name, what, "BN-Inception (tf_model_zoo layout)")
    out["conv1.conv.weight"] = bgr_to_rgb_first_conv(out["conv1.conv.weight"])
    check_keys(own, out, what, "BN-Inception")
    return out


def _modality_of(channels: int, opts: Options, what: str) -> Tuple[str, int]:
    """(modality, new_length) of a backbone whose first conv takes ``channels``."""
    if opts.modality:
        base = get_modality(opts.modality).base_channels
        if channels % base or (opts.modality == "rgb" and channels != 3):
            raise ConvertError(f"{what}: a first conv of {channels} input channels cannot be "
                               f"--modality {opts.modality}")
        modality, new_length = opts.modality, channels // base
    else:
        guesses = {3: ("rgb", 1), 10: ("flow", 5), 15: ("rgbdiff", 5)}
        guess = guesses.get(channels)
        if guess and opts.new_length in (None, guess[1]):
            modality, new_length = guess
        elif channels % 2 and channels % 3 == 0:
            modality, new_length = "rgbdiff", channels // 3
        elif channels % 3 and channels % 2 == 0:
            modality, new_length = "flow", channels // 2
        else:
            raise ConvertError(f"{what}: a first conv of {channels} input channels may be flow "
                               f"(2 x {channels // 2}) or RGB difference (3 x {channels // 3}); "
                               "give --modality")
    if opts.new_length and opts.new_length != new_length:
        raise ConvertError(f"{what}: the first conv takes {channels} channels, which is "
                           f"new_length {new_length} for {modality}, not {opts.new_length}")
    return modality, new_length


def _model_config(arch: str, channels: int, num_classes: int, opts: Options, what: str
                  ) -> ModelConfig:
    if not opts.num_segments:
        raise ConvertError(f"{what}: the checkpoint does not record its number of segments; "
                           "give --num-segments (tsn-pytorch's and mmaction2's default is 3)")
    if opts.num_classes and opts.num_classes != num_classes:
        raise ConvertError(f"{what}: the classifier has {num_classes} classes, not "
                           f"--num-classes {opts.num_classes}")
    modality, new_length = _modality_of(channels, opts, what)
    return ModelConfig(arch=arch, modality=modality, num_classes=num_classes,
                       num_segments=opts.num_segments, new_length=new_length,
                       input_size=opts.input_size)


def convert_tsn_pytorch(ckpt: Mapping[str, Any], opts: Options, what: str
                        ) -> Tuple[ModelConfig, Dict[str, torch.Tensor]]:
    """A tsn-pytorch ``main.py`` checkpoint -> (ModelConfig, our TSN state dict)."""
    sd = ckpt.get("state_dict", ckpt)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    arch = str(ckpt.get("arch", ""))
    arch = "bninception" if arch == "BNInception" else arch
    if arch not in ARCHS:
        raise ConvertError(f"{what}: arch {ckpt.get('arch')!r} is not one we build; supported: "
                           f"resnet18, resnet34, resnet50, resnet101, BNInception")
    head = "new_fc." if "new_fc.weight" in sd else "base_model.fc."   # dropout 0: no new_fc
    if head + "weight" not in sd:
        raise ConvertError(f"{what}: no classifier (new_fc.weight or base_model.fc.weight)")
    first = "base_model." + ("conv1_7x7_s2.weight" if arch == "bninception" else "conv1.weight")
    if first not in sd:
        raise ConvertError(f"{what}: no first conv {first!r} for arch {arch}")
    cfg = _model_config(arch, sd[first].shape[1], sd[head + "weight"].shape[0], opts, what)
    base = {k[len("base_model."):]: v for k, v in sd.items()
            if k.startswith("base_model.") and not k.startswith(head)}
    extra = sorted(k for k in sd if not k.startswith(("base_model.", head)))
    if extra:
        raise ConvertError(f"{what}: unknown keys {extra[:8]}")
    model = build_model(cfg)
    if arch == "bninception":
        base = _rename(base, model.base.state_dict(), bninception_name, what,
                       "BN-Inception (tf_model_zoo layout)")
        if cfg.modality in ("rgb", "rgbdiff"):
            base["conv1.conv.weight"] = bgr_to_rgb_first_conv(base["conv1.conv.weight"])
    state = {"base." + k: v for k, v in base.items()}
    state.update({"fc.weight": sd[head + "weight"], "fc.bias": sd[head + "bias"]})
    return cfg, state


def convert_mmaction2(ckpt: Mapping[str, Any], opts: Options, what: str
                      ) -> Tuple[ModelConfig, Dict[str, torch.Tensor]]:
    """An mmaction2 TSN (ResNet backbone, TSNHead) -> (ModelConfig, our TSN state dict)."""
    sd = ckpt.get("state_dict", ckpt)
    extra = sorted(k for k in sd if not k.startswith(("backbone.", "cls_head.fc_cls.")))
    if extra:
        raise ConvertError(f"{what}: unknown keys {extra[:8]} (a TSN with a ResNet backbone "
                           "and TSNHead is expected)")
    blocks = {int(m.group(1)) for k in sd
              for m in [re.match(r"backbone\.layer3\.(\d+)\.", k)] if m}
    bottleneck = any(".conv3.conv.weight" in k for k in sd)
    depth = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50",
             (True, 23): "resnet101"}.get((bottleneck, len(blocks)))
    if depth is None or not {"backbone.conv1.conv.weight", "cls_head.fc_cls.weight"} <= set(sd):
        raise ConvertError(f"{what}: not an mmaction2 ResNet-18/34/50/101 TSN (layer3 has "
                           f"{len(blocks)} blocks)")
    cfg = _model_config(depth, sd["backbone.conv1.conv.weight"].shape[1],
                        sd["cls_head.fc_cls.weight"].shape[0], opts, what)
    model = build_model(cfg)
    base = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    base = _rename(base, model.base.state_dict(), mmaction2_name, what,
                   f"{depth} (mmaction2 layout)")
    state = {"base." + k: v for k, v in base.items()}
    state.update({"fc.weight": sd["cls_head.fc_cls.weight"], "fc.bias": sd["cls_head.fc_cls.bias"]})
    return cfg, state


def convert_file(src, out, opts: Options = Options()) -> Dict[str, Any]:
    """Convert ``src`` into ``out`` (written atomically); returns a summary (layout, config).

    ImageNet backbones are written as a plain state dict (``--pretrained``); trained models
    as a ``tsn-pipeline-checkpoint`` whose train config records the source file.
    """
    from .snippets import file_sha256
    from .train import atomic_torch_save
    from . import __version__
    from .model import CHECKPOINT_FORMAT

    obj = read_source(src)
    layout = detect(obj)
    what = f"{src} ({layout})"
    if layout == "bninception-imagenet":
        state = convert_bninception_imagenet(obj.get("state_dict", obj), what)
        atomic_torch_save(state, out)
        return {"layout": layout, "out": str(out), "tensors": len(state),
                "use": f"tsn train --arch bninception --pretrained {out}"}
    cfg, state = (convert_tsn_pytorch if layout == "tsn-pytorch" else convert_mmaction2)(
        obj, opts, what)
    model = build_model(cfg)
    load_weights(model, state, name=what)
    source = {"converted_from": str(src), "sha256": file_sha256(src), "layout": layout}
    for k in ("epoch", "best_prec1", "arch"):
        if isinstance(obj.get(k), (int, float, str)) or (isinstance(obj.get(k), torch.Tensor)
                                                         and obj[k].numel() == 1):
            v = obj[k]
            source[k] = v.item() if isinstance(v, torch.Tensor) else v
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "package_version": __version__,
                       "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                       "model_config": json.dumps(cfg.to_dict(), sort_keys=True),
                       "train_config": json.dumps(source, sort_keys=True)}, out)
    shards = "--flow" if get_modality(cfg.modality).reads_flow else "--frames"
    return {"layout": layout, "out": str(out), "model_config": cfg.to_dict(), "source": source,
            "use": f"tsn score {out} {shards} ..."}
