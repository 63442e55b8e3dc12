"""`tsn features`: snippet features read back with plain h5py, indices against the stride."""
import json

import h5py
import numpy as np
from click.testing import CliRunner

from tsn_pipeline.cli import main
from scoring import (S_IN, VIDEOS, frames_of, save_checkpoint, tiny_model,
                        write_flow_shards, write_frame_shards)

REAL_CLIP = "TrumanShow_wave_f_nm_np1_fr_med_26.avi"     # 48 frames


def invoke(args):
    return CliRunner().invoke(main, args)


def test_features_of_a_decoded_real_clip_at_stride_16(tmp_path):
    import torch

    from conftest import CLIPS as videos

    lst = tmp_path / "list.csv"
    lst.write_text(f"video_id,path,label,class_name,split\ntruman,{videos / REAL_CLIP},1,wave,test\n")
    res = invoke(["decode", str(lst), "--out", str(tmp_path / "frames"), "--size", "48x36",
                  "--no-progress"])
    assert res.exit_code == 0, res.output
    model, cfg = tiny_model("rgb")
    ckpt = save_checkpoint(tmp_path / "rgb.pt", model, cfg)
    res = invoke(["features", str(ckpt), "--frames", str(tmp_path / "frames"), "--out",
                  str(tmp_path / "feat"), "--stride", "16", "--no-progress"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "feat" / "features-0-of-1.h5", "r") as f:
        assert f.attrs["kind"] == "features" and json.loads(f.attrs["config"])["stride"] == 16
        g = f["videos"]["truman"]
        feats, idx = g["features"][()], g["frame_indices"][()]
        assert g.attrs["label"] == 1 and g.attrs["fps"] > 0
        n = int(g.attrs["source_length"])
    assert n == 48
    assert idx.tolist() == [0, 16, 32]
    assert feats.shape == (3, model.base.num_features) and feats.dtype == np.float32
    # reference: centre 32x32 crop (offset 2, 8) of the stored frames, normalised by hand
    from tsn_pipeline import store

    fr = store.open_shards(tmp_path / "frames").read_frames("truman", [0, 16, 32])
    assert fr.shape == (3, 36, 48, 3)
    x = fr[:, 2:2 + S_IN, 8:8 + S_IN].astype(np.float32) / 255
    x = (x - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)
    with torch.inference_mode():
        ref = model.forward_features(torch.from_numpy(np.ascontiguousarray(
            x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)


def test_flow_features_float16_evenly_spaced(tmp_path):
    model, cfg = tiny_model("flow", new_length=2)
    ckpt = save_checkpoint(tmp_path / "flow.pt", model, cfg)
    flow = write_flow_shards(tmp_path / "flow")
    res = invoke(["features", str(ckpt), "--flow", str(flow), "--out", str(tmp_path / "ff"),
                  "--num-snippets", "4", "--dtype", "float16", "--crops", "10", "--no-progress"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "ff" / "features-0-of-1.h5", "r") as f:
        assert sorted(f["videos"]) == sorted(VIDEOS)
        for vid, (n, label, _) in VIDEOS.items():
            g = f["videos"][vid]
            avail = (n - 1) - 2 + 1          # start positions of 2-field stacks
            assert g["frame_indices"][()].tolist() == [int(avail / 8 + avail / 4 * i)
                                                       for i in range(4)]
            assert g["features"].dtype == np.float16 and g["features"].shape == (4, 512)
            assert g.attrs["snippet_length"] == 2 and g.attrs["label"] == label


def test_stride_indices_follow_the_stride_for_flow_stacks(tmp_path):
    """vid_a: 30 flow fields, 2-field stacks, stride 8: starts 0, 8, 16, 24 (24 + 2 <= 30)."""
    model, cfg = tiny_model("flow", new_length=2)
    ckpt = save_checkpoint(tmp_path / "flow.pt", model, cfg)
    flow = write_flow_shards(tmp_path / "flow", {"vid_a": VIDEOS["vid_a"]})
    res = invoke(["features", str(ckpt), "--flow", str(flow), "--out", str(tmp_path / "f"),
                  "--stride", "8", "--no-progress"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "f" / "features-0-of-1.h5", "r") as f:
        assert f["videos"]["vid_a"]["frame_indices"][()].tolist() == [0, 8, 16, 24]


def test_features_times_classifier_equal_one_crop_scores(tmp_path):
    """The stored features are exactly what TSN's classifier sees: fc(features) reproduces the
    scores `tsn score --crops 1` writes for the same snippets (dropout is off in eval)."""
    model, cfg = tiny_model("rgb")
    ckpt = save_checkpoint(tmp_path / "rgb.pt", model, cfg)
    frames = write_frame_shards(tmp_path / "frames")
    common = ["--frames", str(frames), "--num-snippets", "6", "--no-progress"]
    assert invoke(["features", str(ckpt), "--out", str(tmp_path / "f")] + common).exit_code == 0
    assert invoke(["score", str(ckpt), "--out", str(tmp_path / "s"), "--crops", "1"]
                  + common).exit_code == 0
    w = model.fc.weight.detach().numpy()
    b = model.fc.bias.detach().numpy()
    with h5py.File(tmp_path / "f" / "features-0-of-1.h5", "r") as f, \
            h5py.File(tmp_path / "s" / "scores-0-of-1.h5", "r") as s:
        for vid in VIDEOS:
            feats = f["videos"][vid]["features"][()]
            np.testing.assert_allclose(feats @ w.T + b, s["videos"][vid]["scores"][()],
                                       rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(f["videos"][vid]["frame_indices"][()],
                                          s["videos"][vid]["snippet_indices"][()][:, 0])


def test_features_option_errors(tmp_path):
    model, cfg = tiny_model("rgb")
    ckpt = save_checkpoint(tmp_path / "rgb.pt", model, cfg)
    frames = write_frame_shards(tmp_path / "frames", {"vid_c": VIDEOS["vid_c"]})
    res = invoke(["features", str(ckpt), "--frames", str(frames), "--out", str(tmp_path / "f"),
                  "--stride", "4", "--num-snippets", "3"])
    assert res.exit_code == 2 and "not both" in res.output
    res = invoke(["features", str(ckpt), "--out", str(tmp_path / "f")])
    assert res.exit_code == 2 and "--frames" in res.output
    assert frames_of(1, 0).shape == (1, 36, 48, 3)


def test_features_of_an_imagenet_backbone_without_checkpoint(tmp_path):
    """--arch/--pretrained: a torchvision-format state dict (here resnet10 with random
    weights) loaded into the backbone; features equal the backbone's own output."""
    import torch

    from tsn_pipeline.model import ModelConfig, build_backbone, build_model, load_weights

    torch.manual_seed(3)
    torch.save(build_backbone("resnet10").state_dict(), tmp_path / "r10.pth")
    frames = write_frame_shards(tmp_path / "frames", {"vid_b": VIDEOS["vid_b"]})
    res = invoke(["features", "--arch", "resnet10", "--pretrained", str(tmp_path / "r10.pth"),
                  "--input-size", str(S_IN), "--frames", str(frames), "--out",
                  str(tmp_path / "f"), "--num-snippets", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "f" / "features-0-of-1.h5", "r") as f:
        cfg = json.loads(f.attrs["config"])
        assert cfg["arch"] == "resnet10" and cfg["pretrained"].endswith("r10.pth")
        assert len(cfg["pretrained_sha256"]) == 64 and "checkpoint" not in cfg
        feats = f["videos"]["vid_b"]["features"][()]
        idx = f["videos"]["vid_b"]["frame_indices"][()]
    mcfg = ModelConfig(arch="resnet10", num_classes=1, input_size=S_IN,
                       pretrained=str(tmp_path / "r10.pth"))
    model = build_model(mcfg)
    load_weights(model, mcfg.pretrained)
    model.eval()
    fr = frames_of(12, 0)[idx][:, 2:2 + S_IN, 8:8 + S_IN]      # seed 0: first video written
    x = (fr.astype(np.float32) / 255 - np.array(mcfg.mean, np.float32)) / np.array(mcfg.std,
                                                                                 np.float32)
    with torch.inference_mode():
        ref = model.forward_features(torch.from_numpy(np.ascontiguousarray(
            x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)
    # a checkpoint and --arch together, or neither: usage errors
    ckpt = save_checkpoint(tmp_path / "rgb.pt", *tiny_model("rgb"))
    res = invoke(["features", str(ckpt), "--arch", "resnet10", "--frames", str(frames),
                  "--out", str(tmp_path / "g")])
    assert res.exit_code == 2 and "--arch" in res.output
    res = invoke(["features", "--frames", str(frames), "--out", str(tmp_path / "g")])
    assert res.exit_code == 2 and "--pretrained" in res.output


def test_features_without_shard_index_writes_every_shard(tmp_path):
    """--num-shards 2 outside an array: both feature shards, shard i from frame shard i."""
    model, cfg = tiny_model("rgb")
    ckpt = save_checkpoint(tmp_path / "rgb.pt", model, cfg)
    frames = write_frame_shards(tmp_path / "frames", num_shards=2)
    res = invoke(["features", str(ckpt), "--frames", str(frames), "--out", str(tmp_path / "f"),
                  "--num-snippets", "1", "--num-shards", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert [(d["shard_index"], d["num_shards"], d["status"]) for d in lines] == [
        (0, 2, "written"), (1, 2, "written")]
    from tsn_pipeline import store

    for i in range(2):
        assert (store.open_shards(tmp_path / "f" / f"features-{i}-of-2.h5").ids
                == store.open_shards(frames / f"frames-{i}-of-2.h5").ids)
