"""Tiny score-test material shared by test_score and test_features: frame and flow shards of
three synthetic videos (36x48, PNG, so a mirrored video is stored exactly mirrored) and a
tiny random resnet10 TSN checkpoint (32x32 input) written by the training code's own writer.
"""
import numpy as np

from shards import flow_record, frame_record, write_shards

H, W, S_IN = 36, 48, 32
CLASSES = ["a", "b", "c", "d"]
# crop (left, top) of the 10-crop protocol for 36x48 frames and 32x32 crops, in order
TEN = [(0, 0), (16, 0), (0, 4), (16, 4), (8, 2)]
# crop j of a mirrored video is crop MIRROR[j] of the original mirrored
MIRROR = [1, 0, 3, 2, 4]


# -- fixtures: tiny shards and checkpoints ------------------------------------------------
def frames_of(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, H, W, 3), dtype=np.uint8)


def flow_of(n, seed):
    """(n, 2, H, W) uint8 quantised flow codes, x first."""
    return np.random.default_rng(100 + seed).integers(0, 256, size=(n, 2, H, W), dtype=np.uint8)


VIDEOS = {"vid_a": (31, 0, "train"), "vid_b": (12, 2, "test"), "vid_c": (7, 3, "test")}


def write_frame_shards(out, videos=VIDEOS, num_shards=1, mirror=False):
    """Frame shards in the layout of `tsn decode` (PNG instead of JPEG)."""
    records = {}
    for v, (n, label, split) in videos.items():
        fr = frames_of(n, sorted(videos).index(v))
        records[v] = frame_record(v, fr[:, :, ::-1] if mirror else fr, label,
                                  class_name=CLASSES[label], split=split)
    return write_shards(out, "frames", records, num_shards, classes=CLASSES)


def write_flow_shards(out, videos=VIDEOS, mirror=False):
    """Flow shards in the layout of `tsn flow` (tvl1 streams, PNG, bound 20)."""
    records = {}
    for v, (n, label, split) in videos.items():
        fl = flow_of(n - 1, sorted(videos).index(v))
        if mirror:                  # the flow of the mirrored video: mirrored, x negated
            fl = fl[..., ::-1].copy()
            fl[:, 0] = 255 - fl[:, 0]
        records[v] = flow_record(v, {"tvl1": fl}, label, class_name=CLASSES[label], split=split)
    return write_shards(out, "flow", records,
                        config={"kinds": ["tvl1"], "encoding": "png", "bound": 20.0},
                        classes=CLASSES)


def tiny_model(modality="rgb", seed=0, **kw):
    """resnet10 TSN, 32x32 input, random weights with a large classifier (distinct scores)."""
    import torch

    from tsn_pipeline.model import ModelConfig, build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(arch="resnet10", modality=modality, num_classes=len(CLASSES),
                      input_size=S_IN, new_length=kw.pop("new_length", None), **kw)
    model = build_model(cfg)
    torch.nn.init.normal_(model.fc.weight, 0.0, 1.0)
    return model.eval(), cfg


def save_checkpoint(path, model, cfg, flip=True, classes=None):
    """Save ``model`` with the training code's own checkpoint writer (as `tsn train` does)."""
    import torch

    from tsn_pipeline.train import TrainConfig, atomic_torch_save, checkpoint_state

    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10])
    tcfg = TrainConfig(modality=cfg.modality, frames="frames", num_classes=cfg.num_classes,
                       iterations=1, flip=flip, classes=classes)
    atomic_torch_save(checkpoint_state(model, cfg, tcfg, opt, sched, 0, 0, None, []), path)
    return path
