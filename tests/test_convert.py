"""`tsn convert`: tsn-pytorch and mmaction2 weights give the reference's logits and scores.

The reference is written down here, not downloaded: a port of tsn-pytorch's model
(``models.py``: ``TSN`` with ``base_model``, ``new_fc``, ``_get_diff``,
``_construct_flow_model``), of its BN-Inception (``tf_model_zoo/bninception``: the layers of
``bn_inception.yaml``, every conv with a bias, Caffe layer ids as names), of its input
pipeline (``transforms.py``: ``Stack(roll=True)`` for BN-Inception, ``ToTorchFormatTensor``,
``GroupNormalize``; ``GroupScale`` / ``GroupCenterCrop`` / ``GroupOverSample`` on PIL images)
and of its ``test_models.py`` procedure (``TSNDataSet._get_test_indices``, 1-based frames).
Random weights are saved in the source layout, converted through the CLI, and the converted
model must reproduce the port's outputs.
"""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from tsn_pipeline.cli import main
from tsn_pipeline import batch, store, transforms
from tsn_pipeline.model import load_checkpoint, load_weights, build_model, ModelConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- the reference, written down ---------------------------------------------------------
# bn_inception.yaml: block, 1x1, 3x3 reduce, 3x3, double 3x3 reduce, double 3x3, pool, proj.
# 3c and 4e have no 1x1 and no proj, a max pool of stride 2 and stride 2 in the last convs.
REF_BLOCKS = [("3a", 64, 64, 64, 64, 96, "ave", 32), ("3b", 64, 64, 96, 64, 96, "ave", 64),
              ("3c", 0, 128, 160, 64, 96, "max", 0), ("4a", 224, 64, 96, 96, 128, "ave", 128),
              ("4b", 192, 96, 128, 96, 128, "ave", 128), ("4c", 160, 128, 160, 128, 160, "ave", 128),
              ("4d", 96, 128, 192, 160, 192, "ave", 128), ("4e", 0, 128, 192, 192, 256, "max", 0),
              ("5a", 352, 192, 320, 160, 224, "ave", 128), ("5b", 352, 192, 320, 192, 224, "max", 128)]


class RefBNInception(nn.Module):
    """tf_model_zoo's BNInception: ``<id>`` conv (bias) -> ``<id>_bn`` -> ReLU, Caffe pooling
    (ceil mode), 7x7 average ``global_pool`` and an ImageNet ``fc``."""

    def __init__(self, in_channels=3):
        super().__init__()
        self.graph = []                         # (kind, id, inputs)
        self.channels = {"data": in_channels}
        self._conv("conv1_7x7_s2", "data", 64, 7, 2, 3)
        self._pool("pool1_3x3_s2", "conv1_7x7_s2", "max", 2, 0)
        self._conv("conv2_3x3_reduce", "pool1_3x3_s2", 64, 1)
        self._conv("conv2_3x3", "conv2_3x3_reduce", 192, 3, 1, 1)
        x = self._pool("pool2_3x3_s2", "conv2_3x3", "max", 2, 0)
        for b, c1, c3r, c3, d3r, d3, pool, proj in REF_BLOCKS:
            p, s = f"inception_{b}_", 1 if proj else 2
            outs = [self._conv(p + "1x1", x, c1, 1)] if c1 else []
            self._conv(p + "3x3_reduce", x, c3r, 1)
            outs.append(self._conv(p + "3x3", p + "3x3_reduce", c3, 3, s, 1))
            self._conv(p + "double_3x3_reduce", x, d3r, 1)
            self._conv(p + "double_3x3_1", p + "double_3x3_reduce", d3, 3, 1, 1)
            outs.append(self._conv(p + "double_3x3_2", p + "double_3x3_1", d3, 3, s, 1))
            self._pool(p + "pool", x, pool, s, 1 if proj else 0)
            outs.append(self._conv(p + "pool_proj", p + "pool", proj, 1) if proj else p + "pool")
            self.graph.append(("concat", p + "output", outs))
            self.channels[p + "output"] = sum(self.channels[o] for o in outs)
            x = p + "output"
        self.global_pool = nn.AvgPool2d(7, 1, ceil_mode=True)
        self.fc = nn.Linear(1024, 1000)

    def _conv(self, name, src, cout, k, stride=1, pad=0):
        setattr(self, name, nn.Conv2d(self.channels[src], cout, k, stride, pad, bias=True))
        setattr(self, name + "_bn", nn.BatchNorm2d(cout))
        self.graph.append(("conv", name, [src]))
        self.channels[name] = cout
        return name

    def _pool(self, name, src, mode, stride, pad):
        pool = (nn.MaxPool2d(3, stride, pad, ceil_mode=True) if mode == "max"
                else nn.AvgPool2d(3, stride, pad, ceil_mode=True))
        self.graph.append(("pool", name, [src], pool))
        self.channels[name] = self.channels[src]
        return name

    def features(self, x):
        vals = {"data": x}
        for kind, name, srcs, *pool in self.graph:
            if kind == "conv":
                vals[name] = torch.relu(getattr(self, name + "_bn")(getattr(self, name)(vals[srcs[0]])))
            elif kind == "pool":
                vals[name] = pool[0](vals[srcs[0]])
            else:
                vals[name] = torch.cat([vals[s] for s in srcs], 1)
        return self.global_pool(vals["inception_5b_output"]).flatten(1)


class RefTSN(nn.Module):
    """tsn-pytorch's TSN (dropout > 0, avg consensus, before softmax) in eval mode."""

    def __init__(self, arch, modality, num_class, num_segments, new_length=None):
        super().__init__()
        self.modality, self.num_segments = modality, num_segments
        self.new_length = new_length or (1 if modality == "RGB" else 5)
        if arch == "BNInception":
            self.base_model = RefBNInception()
            self.base_model.fc = nn.Dropout(0.8)         # _prepare_tsn: last layer -> Dropout
        else:
            import torchvision

            self.base_model = getattr(torchvision.models, arch)(weights=None)
            self.base_model.fc = nn.Dropout(0.8)
        self.new_fc = nn.Linear(1024 if arch == "BNInception" else 512, num_class)
        self.arch = arch
        if modality != "RGB":                            # _construct_flow/diff_model
            conv = self.first_conv()
            c = (2 if modality == "Flow" else 3) * self.new_length
            new = nn.Conv2d(c, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            bias=conv.bias is not None)
            new.weight.data = conv.weight.data.mean(dim=1, keepdim=True).expand(
                -1, c, -1, -1).contiguous()
            if conv.bias is not None:
                new.bias.data = conv.bias.data
            setattr(self.base_model, "conv1_7x7_s2" if arch == "BNInception" else "conv1", new)

    def first_conv(self):
        return self.base_model.conv1_7x7_s2 if self.arch == "BNInception" else self.base_model.conv1

    def base_forward(self, x):
        if self.arch == "BNInception":
            return self.base_model.features(x)
        return self.base_model(x)                        # fc is Dropout: pooled features

    def forward(self, x):
        if self.modality == "RGBDiff":                   # _get_diff
            v = x.view((-1, self.num_segments, self.new_length + 1, 3) + x.shape[2:])
            x = v[:, :, 1:] - v[:, :, :-1]
        c = (3 if self.modality in ("RGB", "RGBDiff") else 2) * self.new_length
        out = self.new_fc(self.base_forward(x.reshape((-1, c) + x.shape[-2:])))
        return out.view(-1, self.num_segments, out.shape[-1]).mean(1)


def calibrated(net, x):
    """Random weights with BN statistics of ``x`` (momentum 1): activations stay O(1) through
    every layer, so the comparison is meaningful. Returns the net in eval mode."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    if isinstance(net, RefTSN):
        nn.init.normal_(net.new_fc.weight, 0, 0.05)
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()


def ref_input(images, arch, normalise, mean, std):
    """tsn-pytorch: Stack(roll=BNInception) -> ToTorchFormatTensor(div=not BNInception) ->
    GroupNormalize(mean, std) (or IdentityTransform for RGBDiff in main.py)."""
    if images[0].mode == "L":
        arr = np.concatenate([np.expand_dims(np.asarray(i), 2) for i in images], axis=2)
    elif arch == "BNInception":
        arr = np.concatenate([np.asarray(i)[:, :, ::-1] for i in images], axis=2)
    else:
        arr = np.concatenate([np.asarray(i) for i in images], axis=2)
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous().float()
    t = t if arch == "BNInception" else t.div(255)
    if normalise:
        rep_mean = mean * (t.shape[0] // len(mean))
        rep_std = std * (t.shape[0] // len(std))
        for c, m, s in zip(t, rep_mean, rep_std):
            c.sub_(m).div_(s)
    return t


def ref_stats(arch, modality, new_length=5):
    """``TSN._prepare_base_model``'s input_mean / input_std."""
    if arch == "BNInception":
        return {"RGB": ([104, 117, 128], [1]), "Flow": ([128], [1]),
                "RGBDiff": ([104, 117, 128] * (1 + new_length), [1])}[modality]
    std = [0.229, 0.224, 0.225]
    return {"RGB": ([0.485, 0.456, 0.406], std), "Flow": ([0.5], [float(np.mean(std))]),
            "RGBDiff": ([0.485, 0.456, 0.406] + [0] * 3 * new_length,
                        std + [float(np.mean(std)) * 2] * 3 * new_length)}[modality]


def images_of(clip, modality):
    """Our uint8 clip (S, L, H, W, 3) / (S, L, 2, H, W) -> tsn-pytorch's image list (x, y
    alternating for flow), segment by segment."""
    if modality == "Flow":
        return [Image.fromarray(np.ascontiguousarray(f[c])) for s in clip for f in s for c in (0, 1)]
    return [Image.fromarray(np.ascontiguousarray(f)) for s in clip for f in s]


def assert_same(ours, ours_fn, x, ref, ref_fn, x_ref):
    """``ours_fn(x) == ref_fn(x_ref)`` to 1e-5 in float64: the converted numbers are the
    reference's. In float32 they differ by summation order only (the reversed BGR -> RGB
    first conv adds in another order): up to ~5e-5 at BN-Inception's 0..255 input scale."""
    with torch.no_grad():
        want = ref_fn(x_ref)
        assert want.abs().max() > 0.1                 # outputs that say something
        torch.testing.assert_close(ours_fn(x), want, rtol=2e-4, atol=2e-4)
        ours.double(), ref.double()
        try:
            torch.testing.assert_close(ours_fn(x.double()), ref_fn(x_ref.double()),
                                       rtol=1e-5, atol=1e-5)
        finally:
            ours.float(), ref.float()


def save_tsn_pytorch(path, net, arch, epoch=80):
    """main.py's save_checkpoint of a DataParallel model."""
    sd = {"module." + k: v.clone() for k, v in net.state_dict().items()
          if not k.endswith("num_batches_tracked")}       # saved by PyTorch 0.2: no counters
    torch.save({"epoch": epoch, "arch": arch, "state_dict": sd, "best_prec1": 81.5}, path)


MODALITY = {"RGB": "rgb", "Flow": "flow", "RGBDiff": "rgbdiff"}


# -- logits ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,modality", [("resnet18", "RGB"), ("resnet18", "Flow"),
                                           ("resnet18", "RGBDiff"), ("BNInception", "RGB"),
                                           ("BNInception", "Flow"), ("BNInception", "RGBDiff")])
def test_tsn_pytorch_checkpoint_gives_the_reference_logits(arch, modality, tmp_path):
    bn = arch == "BNInception"
    size = 224 if bn else 64              # the reference BN-Inception's 7x7 global pool needs 224
    k, classes = (1 if bn else 2), 7      # consensus over segments: checked on the ResNets
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ours_modality = MODALITY[modality]
    length = {"RGB": 1, "Flow": 5, "RGBDiff": 6}[modality]
    shape = (k, length, 2, size, size) if modality == "Flow" else (k, length, size, size, 3)
    clip = rng.integers(0, 256, shape, dtype=np.uint8)
    ref = RefTSN(arch, modality, classes, k)
    mean, std = ref_stats(arch, modality)
    # main.py: GroupNormalize for RGB and Flow, IdentityTransform for RGBDiff
    x_ref = ref_input(images_of(clip, modality), arch, modality != "RGBDiff", mean, std)[None]
    calibrated(ref, x_ref)
    save_tsn_pytorch(tmp_path / "ckpt.pth.tar", ref, arch)

    res = run("convert", tmp_path / "ckpt.pth.tar", tmp_path / "ours.pt", "--num-segments", k,
              "--input-size", size)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["layout"] == "tsn-pytorch" and summary["source"]["epoch"] == 80
    model, cfg, _ = load_checkpoint(tmp_path / "ours.pt")
    assert (cfg.modality, cfg.num_segments, cfg.num_classes) == (ours_modality, k, classes)
    assert cfg.new_length == (1 if modality == "RGB" else 5)
    assert cfg.arch == ("bninception" if arch == "BNInception" else arch)
    x = transforms.normalize(clip, ours_modality, cfg.mean, cfg.std)[None]
    assert_same(model, model.forward, x, ref, ref.forward, x_ref)


def test_bninception_imagenet_weights_become_a_pretrained_file(tmp_path):
    """bn_inception-*.pth -> --pretrained: the RGB backbone's features equal the reference's
    on BGR 0..255 input minus 104/117/128; a flow TSN initialised from it equals tsn-pytorch's
    _construct_flow_model (kernels averaged over RGB, bias kept)."""
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (1, 1, 224, 224, 3), dtype=np.uint8)
    ref = RefBNInception()
    x_ref = ref_input(images_of(rgb, "RGB"), "BNInception", True, [104, 117, 128], [1])[None]

    class Wrap(nn.Module):           # calibrate the backbone on its own
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.features(x)
    calibrated(Wrap(ref), x_ref)
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "bn_inception-9f5701afb96c8044.pth")
    res = run("convert", tmp_path / "bn_inception-9f5701afb96c8044.pth", tmp_path / "bn.pth")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["layout"] == "bninception-imagenet"

    cfg = ModelConfig(arch="bninception", modality="rgb", num_classes=3,
                      pretrained=str(tmp_path / "bn.pth"))
    ours = build_model(cfg)
    load_weights(ours, cfg.pretrained)
    ours.eval()
    assert_same(ours, ours.forward_features, transforms.normalize(rgb, "rgb", cfg.mean, cfg.std),
                ref, ref.features, x_ref)

    flow = rng.integers(0, 256, (1, 5, 2, 224, 224), dtype=np.uint8)
    ref_tsn = RefTSN("BNInception", "Flow", 3, 1)      # from the same ImageNet weights
    ref_tsn.base_model.load_state_dict({**sd, "conv1_7x7_s2.weight": sd["conv1_7x7_s2.weight"]
                                        .mean(1, keepdim=True).expand(-1, 10, -1, -1)},
                                       strict=False)
    fcfg = ModelConfig(arch="bninception", modality="flow", num_classes=3,
                       pretrained=str(tmp_path / "bn.pth"))
    ours = build_model(fcfg)
    assert load_weights(ours, fcfg.pretrained)["cross_modality_init"] is True
    ours.fc.load_state_dict(ref_tsn.new_fc.state_dict())
    x_ref = ref_input(images_of(flow, "Flow"), "BNInception", True, [128], [1])[None]
    ours.eval(), ref_tsn.eval()
    assert_same(ours, ours.forward, transforms.normalize(flow, "flow", fcfg.mean, fcfg.std)[None],
                ref_tsn, ref_tsn.forward, x_ref)


def test_mmaction2_tsn_r50_gives_the_reference_logits(tmp_path):
    """mmaction2's Recognizer2D + ResNet (mmcv ConvModule names) + TSNHead (pool, mean over
    segments, fc_cls), normalised with mean 123.675/116.28/103.53, std 58.395/57.12/57.375."""
    import torchvision

    torch.manual_seed(2)
    tv = torchvision.models.resnet50(weights=None)
    tv.fc = nn.Identity()
    fc_cls = nn.Linear(2048, 5)
    nn.init.normal_(fc_cls.weight, 0, 0.05)
    rng = np.random.default_rng(2)
    clip = rng.integers(0, 256, (3, 1, 64, 64, 3), dtype=np.uint8)
    x = (torch.from_numpy(clip[:, 0]).permute(0, 3, 1, 2).float()
         - torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)) / torch.tensor(
        [58.395, 57.12, 57.375]).view(3, 1, 1)
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
            nn.init.uniform_(m.weight, 0.5, 1.5)
    tv.train()
    with torch.no_grad():
        tv(x)
    tv.eval()
    # the mmaction2 key layout, written down: stem conv1.{conv,bn}; blocks convN.{conv,bn};
    # downsample.{conv,bn}; head cls_head.fc_cls
    sd = {}
    for k, v in tv.state_dict().items():
        parts = k.split(".")
        if parts[0] in ("conv1", "bn1"):
            new = ["conv1", "conv" if parts[0] == "conv1" else "bn"] + parts[1:]
        elif parts[2].startswith("conv"):
            new = parts[:3] + ["conv"] + parts[3:]
        elif parts[2].startswith("bn"):
            new = parts[:2] + ["conv" + parts[2][2:], "bn"] + parts[3:]
        else:                                            # downsample.0 / downsample.1
            new = parts[:3] + ["conv" if parts[3] == "0" else "bn"] + parts[4:]
        sd["backbone." + ".".join(new)] = v
    sd["cls_head.fc_cls.weight"], sd["cls_head.fc_cls.bias"] = fc_cls.weight, fc_cls.bias
    assert {"backbone.layer1.0.conv2.bn.running_var",
            "backbone.layer2.0.downsample.conv.weight"} <= set(sd)
    torch.save({"meta": {"epoch": 100}, "state_dict": sd}, tmp_path / "tsn_r50.pth")
    res = run("convert", tmp_path / "tsn_r50.pth", tmp_path / "ours.pt", "--num-segments", 3,
              "--input-size", 64)
    assert res.exit_code == 0, res.output
    model, cfg, _ = load_checkpoint(tmp_path / "ours.pt")
    assert (cfg.arch, cfg.modality, cfg.num_classes) == ("resnet50", "rgb", 5)
    ref = nn.ModuleDict({"backbone": tv, "fc_cls": fc_cls})
    assert_same(model, model.forward, transforms.normalize(clip, "rgb", cfg.mean, cfg.std)[None],
                ref, lambda v: fc_cls(tv(v).mean(0, keepdim=True)), x)


def test_convert_errors_name_the_keys_and_the_option(tmp_path):
    torch.manual_seed(0)
    ref = RefTSN("resnet18", "Flow", 4, 3, new_length=3)       # 6 channels: flow 3 or diff 2
    save_tsn_pytorch(tmp_path / "flow.pth", ref, "resnet18")
    res = run("convert", tmp_path / "flow.pth", tmp_path / "a.pt")
    assert res.exit_code == 1 and "give --num-segments" in res.output
    res = run("convert", tmp_path / "flow.pth", tmp_path / "a.pt", "--num-segments", 3)
    assert res.exit_code == 1
    assert "6 input channels may be flow (2 x 3) or RGB difference (3 x 2); give --modality" \
        in res.output
    res = run("convert", tmp_path / "flow.pth", tmp_path / "a.pt", "--num-segments", 3,
              "--modality", "warped")
    assert res.exit_code == 0, res.output
    assert load_checkpoint(tmp_path / "a.pt")[1].new_length == 3
    # an output folder that does not exist yet is made; an empty source is one clear line
    res = run("convert", tmp_path / "flow.pth", tmp_path / "new" / "sub" / "a.pt",
              "--num-segments", 3, "--modality", "warped")
    assert res.exit_code == 0 and (tmp_path / "new" / "sub" / "a.pt").is_file(), res.output
    (tmp_path / "empty.pth").write_bytes(b"")
    res = run("convert", tmp_path / "empty.pth", tmp_path / "e.pt")
    assert res.exit_code == 1 and "empty.pth: cannot be read as weights only" in res.output
    assert "Traceback" not in res.output
    res = run("convert", tmp_path / "flow.pth", tmp_path / "a.pt", "--num-segments", 3,
              "--modality", "warped")
    assert res.exit_code == 1 and "exists; pass --overwrite" in res.output
    # unknown, missing and mis-shaped keys are listed
    ckpt = torch.load(tmp_path / "flow.pth", weights_only=True)
    sd = ckpt["state_dict"]
    sd["module.base_model.layer5.weight"] = torch.zeros(1)
    del sd["module.base_model.layer4.1.bn2.running_var"]
    torch.save(ckpt, tmp_path / "bad.pth")
    res = run("convert", tmp_path / "bad.pth", tmp_path / "b.pt", "--num-segments", 3,
              "--modality", "flow")
    assert res.exit_code == 1
    assert "missing 1 ['base.layer4.1.bn2.running_var']" in res.output
    assert "unexpected 1 ['base.layer5.weight']" in res.output
    assert not (tmp_path / "b.pt").exists()
    torch.save({"conv9.weight": torch.zeros(1)}, tmp_path / "other.pth")
    res = run("convert", tmp_path / "other.pth", tmp_path / "c.pt")
    assert res.exit_code == 1 and "not a layout tsn convert knows" in res.output
    bn = {k: v for k, v in RefBNInception().state_dict().items() if "inception_5b_pool_proj" not in k}
    bn["extra_layer.weight"] = torch.zeros(1)
    torch.save(bn, tmp_path / "bn.pth")
    res = run("convert", tmp_path / "bn.pth", tmp_path / "d.pth")
    assert res.exit_code == 1
    assert "unknown keys ['extra_layer.weight']" in res.output
    assert ("missing keys ['inception_5b_pool_proj.bias', 'inception_5b_pool_proj.weight', "
            "'inception_5b_pool_proj_bn.bias'") in res.output


# -- scores: test_models.py's procedure on a tiny synthetic video ------------------------
H, W, N_FRAMES, CLASSES = 256, 263, 9, 5      # (263 - 224) / 2 = 19.5: the centre crop rounds to 20


def _frames():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (H // 8, W // 8 + 1, 3)).astype(np.float32)
    out = []
    for t in range(N_FRAMES):       # a smooth moving texture: differences that are not noise
        img = np.kron(np.roll(base, t, axis=1), np.ones((8, 8, 1)))[:H, :W]
        out.append(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def _flow():
    rng = np.random.default_rng(8)
    return rng.integers(96, 160, (N_FRAMES - 1, 2, H, W), dtype=np.uint8)


def _write_shards(out, kind):
    """One video in the layout of `tsn decode` / `tsn flow` (PNG: stored exactly)."""
    attrs = {"label": 2, "class_name": "c", "split": "test", "height": H, "width": W}
    if kind == "frames":
        fr = _frames()
        rec = store.VideoRecord("vid", attrs={**attrs, "num_frames": N_FRAMES, "fps": 25.0},
                                streams={"rgb": [store.encode_image(f, "png") for f in fr]})
        config = {"test": True}
    else:
        fl = _flow()
        png = {f"tvl1_{c}": [store.encode_image(np.ascontiguousarray(f[i]), "png") for f in fl]
               for i, c in enumerate("xy")}
        rec = store.VideoRecord("vid", attrs={**attrs, "num_frames": N_FRAMES, "num_flows": len(fl),
                                              "step": 1, "encoding": "png", "bound": 20.0,
                                              "kinds": ["tvl1"]}, streams=png)
        config = {"kinds": ["tvl1"], "encoding": "png", "bound": 20.0}
    s = batch.run_batched_stage(kind=kind, out_dir=out, shard_index=0, num_shards=1, config=config,
                        tasks=[batch.Task("vid", "synthetic", 2)],
                        batch_process=lambda todo: ((t, rec) for t in todo), progress=False,
                        root_extra={"classes": json.dumps(list("abcde"))})
    assert s.failed == 0
    return out


def ref_test_script(net, modality, num_items, test_segments, test_crops, load):
    """test_models.py: TSNDataSet(test_mode) + GroupScale/GroupCenterCrop or GroupOverSample
    + Stack(roll) + ToTorchFormatTensor(div=False) + GroupNormalize(net.input_mean/std), the
    net (num_segments 1) on every crop, then the mean over crops: (test_segments, classes)."""
    new_length = net.new_length + (1 if modality == "RGBDiff" else 0)
    tick = (num_items - new_length + 1) / float(test_segments)        # _get_test_indices
    offsets = [int(tick / 2.0 + tick * x) + 1 for x in range(test_segments)]
    images = []
    for p in offsets:                                                 # TSNDataSet.get
        for _ in range(new_length):
            images.extend(load(p - 1))
            if p < num_items:
                p += 1
    w, h = images[0].size                                             # GroupScale(256)
    size = (256, int(256 * h / w)) if w < h else (int(256 * w / h), 256)
    images = [i.resize(size, Image.BILINEAR) if i.size != size else i for i in images]
    w, h = images[0].size
    if test_crops == 1:                                               # GroupCenterCrop(224)
        x1, y1 = int(round((w - 224) / 2.)), int(round((h - 224) / 2.))
        crops = [[i.crop((x1, y1, x1 + 224, y1 + 224)) for i in images]]
    else:                                                             # GroupOverSample
        ws, hs = (w - 224) // 4, (h - 224) // 4
        crops = []
        for ow, oh in [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]:
            normal = [i.crop((ow, oh, ow + 224, oh + 224)) for i in images]
            flip = [c.transpose(Image.FLIP_LEFT_RIGHT) for c in normal]
            flip = [Image.eval(f, lambda v: 255 - v) if f.mode == "L" and j % 2 == 0 else f
                    for j, f in enumerate(flip)]
            crops += [normal, flip]
    mean, std = ref_stats("BNInception", modality)
    data = torch.cat([ref_input(c, "BNInception", True, mean, std) for c in crops])
    length = {"Flow": 10, "RGBDiff": 18}[modality]
    with torch.no_grad():
        rst = net(data.view(-1, length, 224, 224)).numpy()
    return rst.reshape(len(crops), test_segments, -1).mean(axis=0)


@pytest.mark.slow
@pytest.mark.parametrize("modality,snippets,crops", [("Flow", 1, 10), ("RGBDiff", 2, 1)])
def test_converted_bninception_scores_as_the_reference_test_script(modality, snippets, crops,
                                                                   tmp_path):
    torch.manual_seed(3)
    net = RefTSN("BNInception", modality, CLASSES, 1)
    if modality == "Flow":
        src = _write_shards(tmp_path / "flow", "flow")
        items = _flow()

        def load(i):
            return [Image.fromarray(np.ascontiguousarray(items[i, c])) for c in (0, 1)]
    else:
        src = _write_shards(tmp_path / "frames", "frames")
        items = _frames()

        def load(i):
            return [Image.fromarray(items[i])]
    mean, std = ref_stats("BNInception", modality)
    first = [im.crop((0, 0, 224, 224)) for i in range(6 if modality == "RGBDiff" else 5)
             for im in load(i)]                          # one snippet, top-left crop
    calibrated(net, ref_input(first, "BNInception", True, mean, std)[None])
    save_tsn_pytorch(tmp_path / "ref.pth.tar", net, "BNInception")
    res = run("convert", tmp_path / "ref.pth.tar", tmp_path / "ours.pt", "--num-segments", 3)
    assert res.exit_code == 0, res.output
    opt = "--flow" if modality == "Flow" else "--frames"
    res = run("score", tmp_path / "ours.pt", opt, src, "--out", tmp_path / "scores",
              "--num-snippets", snippets, "--crops", crops, "--no-progress")
    assert res.exit_code == 0, res.output
    ours = store.open_shards(tmp_path / "scores", kind="scores").read_array("vid", "scores")
    want = ref_test_script(net.eval(), modality, len(items), snippets, crops, load)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)


def test_converted_bninception_file_trains(tmp_path):
    """The user's path: `tsn convert` the ImageNet file, then `tsn train --pretrained` with it.
    Under partial BN the later BNs are frozen, so they still hold the converted numbers."""
    torch.manual_seed(4)
    sd = {k: v for k, v in RefBNInception().state_dict().items()
          if not k.endswith("num_batches_tracked")}
    sd["inception_5b_1x1_bn.running_mean"] = torch.randn(352)
    # Cadene's pretrainedmodels copy of the same file names the classifier last_linear
    sd["last_linear.weight"], sd["last_linear.bias"] = sd.pop("fc.weight"), sd.pop("fc.bias")
    torch.save(sd, tmp_path / "bn_inception.pth")
    assert run("convert", tmp_path / "bn_inception.pth", tmp_path / "bn.pth").exit_code == 0
    frames = _write_shards(tmp_path / "frames", "frames")
    res = run("train", "--frames", frames, "--split", "test", "--modality", "rgb", "--arch",
              "bninception", "--pretrained", tmp_path / "bn.pth", "--input-size", 64,
              "--iterations", 1, "--batch-size", 1, "--workers", 0, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert json.loads(ckpt["model_config"])["pretrained"] == str(tmp_path / "bn.pth")
    assert torch.equal(ckpt["model"]["base.inception5b.branch1.bn.running_mean"],
                       sd["inception_5b_1x1_bn.running_mean"])
    assert ckpt["model"]["base.inception5b.branch1.conv.bias"].shape == (352,)
