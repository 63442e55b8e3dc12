"""TSN model: weight surgery, partial BN, consensus, parameter groups, backbones, checkpoints."""
import json

import pytest
import torch

from tsn_pipeline.model import (ARCHS, ModelConfig, build_model, cross_modality_init,
                                load_checkpoint, load_weights)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(modality="rgb", **kw):
    kw.setdefault("arch", "resnet10")
    kw.setdefault("num_classes", 5)
    kw.setdefault("input_size", 32)
    return ModelConfig(modality=modality, **kw)


def test_cross_modality_init_values():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    before = w.clone()
    out = cross_modality_init(w, 10)
    assert out.shape == (2, 10, 2, 2)
    # output 0, position (0,0): mean of 0, 4, 8 = 4; output 1, position (1,1): mean(15,19,23)=19
    assert torch.all(out[0, :, 0, 0] == 4.0) and torch.all(out[1, :, 1, 1] == 19.0)
    torch.testing.assert_close(out[:, 7], w.mean(dim=1))
    assert torch.equal(w, before)           # pure
    with pytest.raises(ValueError, match="conv weight"):
        cross_modality_init(torch.zeros(3, 3), 10)


def test_config_defaults_and_validation():
    rgb, flow, diff = tiny("rgb"), tiny("flow"), tiny("rgbdiff")
    assert (rgb.new_length, rgb.dropout, rgb.input_channels) == (1, 0.8, 3)
    assert (flow.new_length, flow.dropout, flow.input_channels) == (5, 0.7, 10)
    assert (diff.input_channels, diff.backbone_channels) == (18, 15)
    assert flow.mean == (0.5, 0.5) and len(rgb.std) == 3
    # tsn-pytorch trains RGB difference on raw values (main.py: IdentityTransform instead of
    # GroupNormalize): 0..1 for ResNets, 0..255 for BN-Inception
    assert (diff.mean, diff.std) == ((0.0,) * 3, (1.0,) * 3)
    bn_diff = ModelConfig(arch="bninception", modality="rgbdiff")
    assert (bn_diff.mean, bn_diff.std) == ((0.0,) * 3, (1 / 255,) * 3)
    assert ModelConfig.from_dict(json.loads(json.dumps(flow.to_dict()))) == flow
    with pytest.raises(ValueError, match="avg, max"):
        tiny(consensus="identity")
    with pytest.raises(ValueError, match="supported: resnet10, resnet18"):
        tiny(arch="vgg16")
    with pytest.raises(ValueError, match="modality"):
        tiny("depth")


@pytest.mark.parametrize("consensus", ["avg", "max"])
def test_consensus_shapes_and_values(consensus):
    torch.manual_seed(0)
    m = build_model(tiny("flow", consensus=consensus, num_segments=3, dropout=0.0)).eval()
    x = torch.randn(2, 3, 10, 32, 32)
    out = m(x)
    assert out.shape == (2, 5)
    snippets = m.forward_snippets(x.flatten(0, 1)).view(2, 3, 5)
    want = snippets.mean(1) if consensus == "avg" else snippets.amax(1)
    torch.testing.assert_close(out, want)
    assert m.forward_features(x[0]).shape == (3, 512)
    with pytest.raises(ValueError, match="10 channels"):
        m(torch.randn(1, 3, 3, 32, 32))


def test_rgbdiff_model_differences_consecutive_frames():
    torch.manual_seed(0)
    m = build_model(tiny("rgbdiff", new_length=2, dropout=0.0)).eval()
    frames = torch.randn(4, 3, 3, 32, 32)           # (N, L+1, 3, H, W)
    feats = m.forward_features(frames.reshape(4, 9, 32, 32))
    diffs = (frames[:, 1:] - frames[:, :-1]).reshape(4, 6, 32, 32)
    torch.testing.assert_close(feats, m.base.features(diffs))
    # adding a constant to every frame changes nothing: only differences reach the backbone
    torch.testing.assert_close(m.forward_features((frames + 3).reshape(4, 9, 32, 32)), feats)


def test_partial_bn_freezes_all_but_the_first_bn_after_a_step():
    torch.manual_seed(0)
    m = build_model(tiny("rgb", dropout=0.0))
    bns = m.batchnorms()
    first, rest = bns[0], bns[1:]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    m.train()
    assert first.training and not any(b.training for b in rest)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(m(torch.randn(4, 3, 3, 32, 32) * 3 + 1),
                                                 torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.state_dict()
    names = {id(mod): n for n, mod in m.named_modules()}
    first_name = names[id(first)]
    for key in ("running_mean", "running_var", "weight", "bias"):
        assert not torch.equal(before[f"{first_name}.{key}"], after[f"{first_name}.{key}"]), key
    for bn in rest:
        n = names[id(bn)]
        for key in ("running_mean", "running_var", "weight", "bias", "num_batches_tracked"):
            assert torch.equal(before[f"{n}.{key}"], after[f"{n}.{key}"]), f"{n}.{key}"
    # without partial BN every BN updates
    full = build_model(tiny("rgb", partial_bn=False)).train()
    assert all(b.training and b.weight.requires_grad for b in full.batchnorms())


def _group_ids(m):
    return {g["name"]: ([id(p) for p in g["params"]], g["lr_mult"], g["decay_mult"])
            for g in m.param_groups()}


@pytest.mark.parametrize("arch", ["resnet10", "bninception"])
@pytest.mark.parametrize("modality,partial", [("rgb", True), ("flow", True), ("flow", False)])
def test_param_groups_count_every_parameter_once(arch, modality, partial):
    m = build_model(ModelConfig(arch=arch, modality=modality, num_classes=4, partial_bn=partial))
    groups = _group_ids(m)
    ids = [i for ps, _, _ in groups.values() for i in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters() if p.requires_grad}
    flow = modality == "flow"
    assert groups["first_conv_weight"][1:] == ((5.0, 1.0) if flow else (1.0, 1.0))
    first = m.base.get_submodule(m.base.first_conv)
    assert groups["first_conv_weight"][0] == [id(first.weight)]
    assert groups["normal_bias"][1:] == (2.0, 0.0) and groups["bn"][1:] == (1.0, 0.0)
    assert id(m.fc.weight) in groups["normal_weight"][0] and id(m.fc.bias) in groups["normal_bias"][0]
    n_bn = len(m.batchnorms())
    assert len(groups["bn"][0]) == (2 if partial else 2 * n_bn)
    if arch == "bninception":
        # tsn-pytorch's get_optim_policies on BN-Inception: 69 conv weights, 69 conv biases
        # (the first in first_conv_bias, lr x2 or x10 for flow, no decay), the first BN's 2
        # tensors under partial BN and the classifier's 2: 142 tensors
        assert groups["first_conv_bias"] == ([id(first.bias)], 10.0 if flow else 2.0, 0.0)
        assert len(groups["normal_bias"][0]) == 68 + 1 and len(groups["normal_weight"][0]) == 68 + 1
        assert len(ids) == (142 if partial else 142 - 2 + 2 * n_bn)


def test_bninception_forward_shapes_and_torchvision_style_names():
    m = build_model(ModelConfig(arch="bninception", modality="flow", num_classes=7,
                                num_segments=2, input_size=64)).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 2, 10, 64, 64))
        feats = m.forward_features(torch.randn(3, 10, 64, 64))
    assert out.shape == (1, 7) and feats.shape == (3, 1024)
    keys = m.base.state_dict().keys()
    assert "conv1.conv.weight" in keys and "conv1.bn.running_mean" in keys
    assert "inception3a.branch1.conv.weight" in keys and "inception5b.branch4.1.bn.bias" in keys
    assert "inception3c.branch2.1.conv.weight" in keys and "inception3c.branch1.conv.weight" not in keys
    assert m.base.conv1.conv.weight.shape == (64, 10, 7, 7)
    n = sum(p.numel() for p in m.base.parameters())
    assert 10.0e6 < n < 10.5e6          # BN-Inception's ~10.2M backbone parameters


def test_pretrained_torchvision_state_dict_lands_in_the_model(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    sd = ref.state_dict()
    # files saved before PyTorch 0.4.1 (torchvision's first ResNets) have no num_batches_tracked
    torch.save({k: v for k, v in sd.items() if "num_batches_tracked" not in k}, path)
    def built(**kw):
        cfg = ModelConfig(arch=kw.pop("arch", "resnet18"), num_classes=3, pretrained=str(path), **kw)
        model = build_model(cfg)             # reads nothing ...
        return model, load_weights(model, cfg.pretrained)    # ... the one loader does

    rgb, report = built(modality="rgb")
    assert report["cross_modality_init"] is False
    assert torch.equal(rgb.base.conv1.weight, sd["conv1.weight"])
    assert torch.equal(rgb.base.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    assert torch.equal(rgb.base.layer4[0].bn1.running_var, sd["layer4.0.bn1.running_var"])
    flow, report = built(modality="flow")
    assert report["cross_modality_init"] is True
    torch.testing.assert_close(flow.base.conv1.weight, cross_modality_init(sd["conv1.weight"], 10))
    assert torch.equal(flow.base.layer2[0].conv1.weight, sd["layer2.0.conv1.weight"])
    # constructing never touches the file: a missing one fails only when loaded
    model = build_model(ModelConfig(arch="resnet18", modality="rgb", num_classes=3,
                                    pretrained=str(tmp_path / "missing.pth")))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_weights(model, model.cfg.pretrained)
    with pytest.raises(ValueError, match=r"does not fit .*\(resnet34\): missing 80 \['layer1.2.bn1.bias'"):
        built(arch="resnet34", modality="rgb")
    with pytest.raises(ValueError, match="cross-modality"):
        built(modality="flow", cross_modality_init=False)


def test_load_checkpoint_roundtrip(tmp_path):
    from tsn_pipeline.train import TrainConfig, atomic_torch_save, checkpoint_state

    torch.manual_seed(0)
    cfg = tiny("warped", num_segments=2)
    m = build_model(cfg)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [1])
    tcfg = TrainConfig(modality="warped", flow="somewhere").resolve()
    atomic_torch_save(checkpoint_state(m, cfg, tcfg, opt, sched, 1, 10, None, []),
                      tmp_path / "c.pt")
    model, mcfg, train_cfg = load_checkpoint(tmp_path / "c.pt")
    assert mcfg == cfg and not model.training
    assert train_cfg["modality"] == "warped" and train_cfg["lr"] == 0.005
    for k, v in m.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])
    x = torch.randn(1, 2, 10, 32, 32)
    torch.testing.assert_close(model(x), m.eval()(x))
    cl = build_model(tiny("warped", num_segments=2, channels_last=True))
    assert cl.base.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    load_weights(cl, m.state_dict())
    torch.testing.assert_close(cl.eval()(x), m(x))
    atomic_torch_save(checkpoint_state(cl, cl.cfg, tcfg, opt, sched, 1, 10, None, []),
                      tmp_path / "cl.pt")
    cl2 = load_checkpoint(tmp_path / "cl.pt")[0]      # built on the meta device, then filled
    assert cl2.base.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(t.is_meta for t in cl2.state_dict().values())
    torch.testing.assert_close(cl2(x), m(x))
    # weights stored in float16 load into the float32 model, as into a built one
    half = torch.load(tmp_path / "c.pt", weights_only=True)
    half["model"] = {k: v.half() if v.is_floating_point() else v for k, v in half["model"].items()}
    torch.save(half, tmp_path / "half.pt")
    h = load_checkpoint(tmp_path / "half.pt")[0]
    assert all(t.dtype == torch.float32 for t in h.parameters())
    torch.testing.assert_close(h(x), m(x), atol=2e-2, rtol=2e-2)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a tsn-pipeline checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_all_archs_build():
    for arch in ARCHS:
        if arch in ("resnet34", "resnet101", "bninception"):
            continue          # heavy (resnet34 is resnet18 deeper); bninception has its own test
        m = build_model(ModelConfig(arch=arch, modality="rgb", num_classes=2, input_size=32))
        with torch.no_grad():
            assert m.eval()(torch.randn(1, 1, 3, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_is_torchvisions(arch):
    """Our ResNet against torchvision's own: the same names, the same random initialisation
    for the same seed, and (with torchvision's weights) the same features."""
    import torchvision

    from tsn_pipeline.model import ResNetBackbone

    torch.manual_seed(0)
    ref = getattr(torchvision.models, arch)(weights=None)
    torch.manual_seed(0)
    ours = ResNetBackbone(arch)
    want = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    got = ours.state_dict()
    assert list(got) == list(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    # every tensor random (BN statistics moved by a step), then torchvision's forward
    ref.train()(torch.randn(4, 3, 64, 64))
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    ref.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 72, 56, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.double().eval()(x), ref.double().eval()(x),
                                   rtol=0, atol=1e-10)
    assert ours.num_features == (2048 if arch == "resnet50" else 512)


def test_deep_resnets_have_torchvisions_names_and_shapes():
    import torchvision

    from tsn_pipeline.model import ResNetBackbone

    with torch.device("meta"):
        for arch in ("resnet34", "resnet101", "resnet152"):
            want = {k: v.shape for k, v in getattr(torchvision.models, arch)().state_dict().items()
                    if not k.startswith("fc.")}
            got = {k: v.shape for k, v in ResNetBackbone(arch).state_dict().items()}
            assert list(got.items()) == list(want.items()), arch
