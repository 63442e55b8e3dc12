"""`tsn score` on real (tiny) frame and flow shards with a tiny random TSN checkpoint.

Frames are 36x48 and the model's input 32x32, so the default scale size (32 * 256 // 224 =
36) keeps frames as they are and the 10 crops sit at left 0 / 8 / 16, top 0 / 2 / 4. The
shards are PNG so that a mirrored video is stored exactly mirrored (JPEG blocks are not).
"""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from scoring import (CLASSES, MIRROR, S_IN, TEN, VIDEOS, frames_of, save_checkpoint,
                     tiny_model, write_flow_shards, write_frame_shards)
from tsn_pipeline import batch, store
from tsn_pipeline.cli import main

@pytest.fixture(scope="module")
def rgb_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("rgb")
    model, cfg = tiny_model("rgb")
    ckpt = save_checkpoint(d / "rgb.pt", model, cfg)
    return {"dir": d, "frames": write_frame_shards(d / "frames", num_shards=2),
            "mirrored": write_frame_shards(d / "frames-mirrored", mirror=True),
            "ckpt": ckpt, "model": model, "cfg": cfg}


def run_cli(args):
    res = CliRunner().invoke(main, args)
    return res


def read_scores(folder):
    shards = store.open_shards(folder, kind="scores")
    out = {v: {n: shards.read_array(v, n) for n in ("scores", "crop_scores", "snippet_indices")
               if n in shards._group(v)} for v in shards.ids}
    attrs = {v: shards[v].attrs for v in shards.ids}
    root = next(iter(shards.root.values()))
    shards.close()
    return out, attrs, root


def hand_starts(n, k=25):
    """TSN test sampling by hand: tick = n / k, start_i = int(tick / 2 + tick * i)."""
    tick = n / k
    return [int(tick / 2 + tick * i) for i in range(k)]


# -- tests --------------------------------------------------------------------------------
def test_score_shapes_ids_and_values_equal_a_hand_ten_crop(rgb_setup, tmp_path):
    import torch

    out = tmp_path / "scores"
    for i in range(2):
        res = run_cli(["score", str(rgb_setup["ckpt"]), "--frames", str(rgb_setup["frames"]),
                       "--out", str(out), "--save-crops", "--num-shards", "2", "--shard-index",
                       str(i), "--no-progress"])
        assert res.exit_code == 0, res.output
        lines = [json.loads(x) for x in res.stdout.strip().splitlines()]
        assert set(lines[0]["accuracy"]) >= {"top1", "top5", "mean_class_accuracy"}
        assert lines[1]["ok"] == len(batch.assign_shard(list(VIDEOS), i, 2))
    # score shard i holds the videos of frame shard i
    for i in range(2):
        s = store.open_shards(out / f"scores-{i}-of-2.h5")
        f = store.open_shards(rgb_setup["frames"] / f"frames-{i}-of-2.h5")
        assert s.ids == f.ids
    scores, attrs, root = read_scores(out)
    assert sorted(scores) == sorted(VIDEOS)
    assert root["modality"] == "rgb" and root["classes"] == CLASSES
    assert root["config"]["num_snippets"] == 25 and root["config"]["crops"] == 10
    assert root["config"]["checkpoint"] == str(rgb_setup["ckpt"])
    assert root["model_config"]["arch"] == "resnet10"
    model, cfg = rgb_setup["model"], rgb_setup["cfg"]
    mean = np.array(cfg.mean, dtype=np.float32)
    std = np.array(cfg.std, dtype=np.float32)
    for vid, (n, label, _) in VIDEOS.items():
        sc = scores[vid]
        assert sc["scores"].shape == (25, 4) and sc["scores"].dtype == np.float32
        assert sc["crop_scores"].shape == (25, 10, 4)
        assert sc["snippet_indices"][:, 0].tolist() == hand_starts(n)
        assert attrs[vid]["label"] == label and attrs[vid]["num_snippets"] == 25
        np.testing.assert_allclose(sc["scores"], sc["crop_scores"].mean(1), rtol=1e-6)
        if vid != "vid_b":
            continue
        # reference (one video, to save time): crop by hand from the original frames,
        # normalise, run the model
        fr = frames_of(n, sorted(VIDEOS).index(vid))[hand_starts(n)]          # (25, H, W, 3)
        crops = [fr[:, t:t + S_IN, l:l + S_IN] for l, t in TEN]
        crops += [c[:, :, ::-1] for c in crops]
        x = (np.stack(crops).astype(np.float32) / 255 - mean) / std           # (10, 25, h, w, 3)
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(-1, 3, S_IN, S_IN)))
        with torch.inference_mode():
            ref = model.forward_snippets(x).numpy().reshape(10, 25, 4).transpose(1, 0, 2)
        np.testing.assert_allclose(sc["crop_scores"], ref, rtol=1e-4, atol=1e-4)
        assert not np.allclose(ref[:, 0], ref[:, 1], atol=1e-3)   # crops do differ


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_ten_crop_of_mirrored_video_equals_original(modality, rgb_setup, tmp_path):
    """Any model: the 10 crops of a mirrored video are the 10 crops of the original (corners
    swapped, flips swapped; flow x inverted), so scores agree crop for crop after permuting.
    A flip that forgot to invert flow x would break this for flow."""
    if modality == "rgb":
        ckpt, opt = rgb_setup["ckpt"], "--frames"
        srcs = (rgb_setup["frames"], rgb_setup["mirrored"])
    else:
        model, cfg = tiny_model("flow", seed=2, new_length=2)
        ckpt, opt = save_checkpoint(tmp_path / "flow.pt", model, cfg), "--flow"
        srcs = (write_flow_shards(tmp_path / "fa"), write_flow_shards(tmp_path / "fb", mirror=True))
    a, b = tmp_path / "a", tmp_path / "b"
    for src, out in zip(srcs, (a, b)):
        res = run_cli(["score", str(ckpt), opt, str(src), "--out", str(out), "--save-crops",
                       "--no-progress", "--batch-size", "64", "--num-snippets", "3"])
        assert res.exit_code == 0, res.output
    sa, _, _ = read_scores(a)
    sb, _, _ = read_scores(b)
    perm = MIRROR + [5 + j for j in MIRROR]
    flipped = [5 + j for j in MIRROR] + MIRROR      # crop j of b is the flip of crop perm[j] of a
    for vid in VIDEOS:
        np.testing.assert_allclose(sb[vid]["scores"], sa[vid]["scores"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sb[vid]["crop_scores"], sa[vid]["crop_scores"][:, flipped],
                                   rtol=1e-5, atol=1e-5)
        assert not np.allclose(sb[vid]["crop_scores"], sa[vid]["crop_scores"][:, perm], atol=1e-3)


class FlipSymmetric:
    """f_sym(x) = (f(x) + f(P x)) / 2 with P the horizontal flip of the model input (flow x
    channels negated: normalised 255 - x is exactly -x as the flow mean is 0.5). Invariant to
    flips by construction, so all 10 crops pair up: crop j and crop j + 5 score the same."""

    def __init__(self, model):
        self.model = model

    def forward_snippets(self, x):
        import torch

        p = torch.flip(x, dims=[-1])
        if self.model.cfg.modality in ("flow", "warped"):
            p = p.clone()
            p[:, 0::2] = -p[:, 0::2]
        return (self.model.forward_snippets(x) + self.model.forward_snippets(p)) / 2


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_flip_symmetric_model_gives_equal_ten_crop_scores(modality, tmp_path):
    from tsn_pipeline import data
    from tsn_pipeline.snippets import SnippetDataset, SnippetPlan, iter_video_outputs

    model, cfg = tiny_model(modality, seed=1, new_length=2 if modality == "flow" else None)
    sym = FlipSymmetric(model)
    videos = {"vid_a": VIDEOS["vid_a"], "vid_b": VIDEOS["vid_b"]}
    outs = {}
    for mirror in (False, True):
        if modality == "rgb":
            src = data.Sources.open(frames=write_frame_shards(tmp_path / f"f{mirror}", videos,
                                                              mirror=mirror))
        else:
            src = data.Sources.open(flow=write_flow_shards(tmp_path / f"f{mirror}", videos,
                                                           mirror=mirror))
        plan = SnippetPlan(modality, cfg.snippet_length, num_snippets=5, input_size=S_IN,
                           crops=10)
        tasks = [batch.Task(v, "", 0) for v in sorted(videos)]
        for task, idx, y in iter_video_outputs(sym, "forward_snippets",
                                               SnippetDataset(src, tasks, plan), 1, cfg.mean,
                                               cfg.std, 100, "cpu"):
            assert not isinstance(y, BaseException), y
            outs[(mirror, task.video_id)] = y                  # (10 crops, 5 snippets, K)
    for vid in videos:
        a, b = outs[(False, vid)], outs[(True, vid)]
        np.testing.assert_allclose(a[:5], a[5:], rtol=1e-5, atol=1e-5)      # invariance
        np.testing.assert_allclose(b.mean(0), a.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b[:5], a[MIRROR], rtol=1e-5, atol=1e-5)
        assert not np.allclose(a[0], a[1], atol=1e-3)


def test_score_flow_checkpoint_and_crop_options(tmp_path):
    model, cfg = tiny_model("flow", new_length=2)
    ckpt = save_checkpoint(tmp_path / "flow.pt", model, cfg)
    flow = write_flow_shards(tmp_path / "flow")
    res = run_cli(["score", str(ckpt), "--flow", str(flow), "--out", str(tmp_path / "s3"),
                   "--crops", "3", "--crop-agg", "max", "--num-snippets", "4", "--save-crops",
                   "--split", "test", "--no-progress"])
    assert res.exit_code == 0, res.output
    scores, attrs, root = read_scores(tmp_path / "s3")
    assert sorted(scores) == ["vid_b", "vid_c"]            # the test split only
    for vid in scores:
        n_flows = VIDEOS[vid][0] - 1
        assert scores[vid]["crop_scores"].shape == (4, 3, 4)
        np.testing.assert_array_equal(scores[vid]["scores"], scores[vid]["crop_scores"].max(1))
        avail = n_flows - 2 + 1                      # start positions of 2-field stacks
        starts = [int(avail / 8 + avail / 4 * i) for i in range(4)]
        assert scores[vid]["snippet_indices"][:, 0].tolist() == starts
        assert scores[vid]["snippet_indices"].shape == (4, 2)
        assert attrs[vid]["modality"] == "flow" and attrs[vid]["source_length"] == n_flows
    # a flow checkpoint given frames only: a clear error
    frames = write_frame_shards(tmp_path / "frames")
    res = run_cli(["score", str(ckpt), "--frames", str(frames), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "reads flow shards; give them with --flow" in res.output


def test_score_resume_and_failures(rgb_setup, tmp_path):
    out = tmp_path / "s"
    lst = tmp_path / "list.csv"
    lst.write_text("video_id,path,label,class_name,split\n"
                   "vid_a,x.avi,0,a,test\nvid_b,y.avi,2,c,test\nvid_zz,z.avi,1,b,test\n")
    args = ["score", str(rgb_setup["ckpt"]), "--frames", str(rgb_setup["frames"]),
            "--out", str(out), "--list", str(lst), "--crops", "1", "--num-snippets", "3",
            "--no-progress"]
    res = run_cli(args)
    assert res.exit_code == 1 and "1 of 3 videos failed" in res.output
    fails = json.loads((out / "scores-0-of-1.failures.json").read_text())
    assert [f["video_id"] for f in fails] == ["vid_zz"]
    scores, attrs, _ = read_scores(out)
    assert sorted(scores) == ["vid_a", "vid_b"] and attrs["vid_b"]["label"] == 2  # list label
    # rerun: shard complete, nothing recomputed; other settings are refused
    res = run_cli(args)
    assert '"status": "complete"' in res.stdout
    res = run_cli(args[:-3] + ["--num-snippets", "5", "--no-progress"])
    assert res.exit_code == 1 and "other settings" in res.output
    # nothing selected: an error, not an empty shard
    res = run_cli(["score", str(rgb_setup["ckpt"]), "--frames", str(rgb_setup["frames"]),
                   "--out", str(tmp_path / "none"), "--split", "nosuch"])
    assert res.exit_code == 1 and "no videos to process" in res.output
    assert not (tmp_path / "none").exists()


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_reader_workers_give_the_same_scores(rgb_setup, tmp_path):
    """--workers 2 reads/crops in DataLoader processes (the shard sets are pickled into
    them); the file must not change, byte for byte in its arrays."""
    outs = []
    for w in ("1", "2"):
        out = tmp_path / f"w{w}"
        res = run_cli(["score", str(rgb_setup["ckpt"]), "--frames", str(rgb_setup["mirrored"]),
                       "--out", str(out), "--workers", w, "--num-snippets", "3", "--crops", "1",
                       "--batch-size", "4", "--no-progress"])
        assert res.exit_code == 0, res.output
        outs.append(read_scores(out)[0])
    for vid in VIDEOS:
        np.testing.assert_array_equal(outs[0][vid]["scores"], outs[1][vid]["scores"])


def test_score_rgb_and_flow_then_fuse(rgb_setup, tmp_path):
    """Score files written by `tsn score` feed `tsn fuse`: modality names and class names come
    from the files, TSN's default weights apply, and the fused scores are 1 * rgb + 1.5 *
    flow of the snippet-averaged scores."""
    model, cfg = tiny_model("flow", new_length=2)
    ckpt = save_checkpoint(tmp_path / "flow.pt", model, cfg)
    flow = write_flow_shards(tmp_path / "flow")
    common = ["--num-snippets", "2", "--crops", "1", "--no-progress"]
    assert run_cli(["score", str(rgb_setup["ckpt"]), "--frames", str(rgb_setup["frames"]),
                    "--out", str(tmp_path / "s-rgb")] + common).exit_code == 0
    assert run_cli(["score", str(ckpt), "--flow", str(flow), "--out", str(tmp_path / "s-flow")]
                   + common).exit_code == 0
    res = run_cli(["fuse", "--scores", str(tmp_path / "s-rgb"), "--scores",
                   str(tmp_path / "s-flow"), "--out", str(tmp_path / "fused"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["weights"] == {"rgb": 1.0, "flow": 1.5} and report["classes"] == CLASSES
    rgb, _, _ = read_scores(tmp_path / "s-rgb")
    fl, _, _ = read_scores(tmp_path / "s-flow")
    import csv
    with open(tmp_path / "fused" / "predictions.csv") as fh:
        rows = {r["video_id"]: int(r["fused"]) for r in csv.DictReader(fh)}
    for vid in VIDEOS:
        fused = rgb[vid]["scores"].mean(0) + 1.5 * fl[vid]["scores"].mean(0)
        assert rows[vid] == int(np.argmax(fused))


def test_bf16_autocast_is_close_and_recorded(rgb_setup, tmp_path):
    outs = {}
    for amp in ("none", "bf16"):
        res = run_cli(["score", str(rgb_setup["ckpt"]), "--frames", str(rgb_setup["frames"]),
                       "--out", str(tmp_path / amp), "--amp", amp, "--num-snippets", "2",
                       "--crops", "1", "--no-progress"])
        assert res.exit_code == 0, res.output
        outs[amp] = read_scores(tmp_path / amp)
    assert outs["bf16"][2]["config"]["amp"] == "bf16"
    for vid in VIDEOS:
        a, b = outs["none"][0][vid]["scores"], outs["bf16"][0][vid]["scores"]
        assert b.dtype == np.float32 and not np.array_equal(a, b)
        np.testing.assert_allclose(b, a, rtol=0.1, atol=0.1 * np.abs(a).max())


def test_real_clip_decode_flow_score_fuse_three_streams(tmp_path):
    """The whole chain on a real clip: `tsn decode` -> `tsn flow --kind both` (JPEG, as TSN)
    -> `tsn score` with rgb, flow and warped checkpoints -> `tsn fuse` with TSN's default
    weights rgb 1 / flow 1 / warped 0.5."""
    from conftest import CLIPS

    clip = CLIPS / "TrumanShow_wave_f_nm_np1_fr_med_26.avi"
    lst = tmp_path / "list.csv"
    lst.write_text(f"video_id,path,label,class_name,split\ntruman,{clip},1,b,test\n")
    res = run_cli(["decode", str(lst), "--out", str(tmp_path / "frames"), "--size", "48x36",
                   "--no-progress"])
    assert res.exit_code == 0, res.output
    res = run_cli(["flow", str(tmp_path / "frames"), "--out", str(tmp_path / "flow"),
                   "--kind", "both", "--backend", "opencv", "--nscales", "1", "--warps", "1",
                   "--iterations", "30", "--no-progress"])
    assert res.exit_code == 0, res.output
    for modality in ("rgb", "flow", "warped"):
        model, cfg = tiny_model(modality, new_length=None if modality == "rgb" else 2)
        ckpt = save_checkpoint(tmp_path / f"{modality}.pt", model, cfg)
        src = ["--frames", str(tmp_path / "frames")] if modality == "rgb" else \
            ["--flow", str(tmp_path / "flow")]
        res = run_cli(["score", str(ckpt), *src, "--out", str(tmp_path / f"s-{modality}"),
                       "--num-snippets", "3", "--crops", "3", "--no-progress"])
        assert res.exit_code == 0, res.output
        scores, attrs, root = read_scores(tmp_path / f"s-{modality}")
        assert list(scores) == ["truman"] and scores["truman"]["scores"].shape == (3, 4)
        n = 48 if modality == "rgb" else 47                # 48 frames -> 47 flow fields
        assert attrs["truman"]["source_length"] == n and root["modality"] == modality
        length = 1 if modality == "rgb" else 2
        avail = n - length + 1
        assert scores["truman"]["snippet_indices"][:, 0].tolist() == \
            [int(avail / 6 + avail / 3 * i) for i in range(3)]
    res = run_cli(["fuse", "--scores", str(tmp_path / "s-rgb"), "--scores",
                   str(tmp_path / "s-flow"), "--scores", str(tmp_path / "s-warped"),
                   "--out", str(tmp_path / "fused"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["weights"] == {"rgb": 1.0, "flow": 1.0, "warped": 0.5}
    assert report["num_videos"] == 1 and set(report["metrics"]) == {"rgb", "flow", "warped",
                                                                    "fused"}


def test_a_broken_video_fails_alone(rgb_setup, tmp_path):
    """An undecodable frame fails its video (reason recorded, exit 1); the others are stored."""
    tasks = [batch.Task(v, "synthetic", 0) for v in ("good", "broken")]

    def bp(todo):
        for t in todo:
            imgs = [store.encode_image(f, "png") for f in frames_of(4, 0)]
            if t.video_id == "broken":
                imgs[2] = b"not an image"
            yield t, store.VideoRecord(t.video_id, attrs={"num_frames": 4, "label": 0},
                                       streams={"rgb": imgs})

    batch.run_batched_stage(kind="frames", out_dir=tmp_path / "frames", shard_index=0, num_shards=1,
                    config={}, tasks=tasks, batch_process=bp, progress=False)
    res = run_cli(["score", str(rgb_setup["ckpt"]), "--frames", str(tmp_path / "frames"),
                   "--out", str(tmp_path / "s"), "--num-snippets", "4", "--crops", "1",
                   "--no-progress"])
    assert res.exit_code == 1 and "1 of 2 videos failed" in res.output
    fails = json.loads((tmp_path / "s" / "scores-0-of-1.failures.json").read_text())
    assert [f["video_id"] for f in fails] == ["broken"] and "undecodable" in fails[0]["reason"]
    assert list(read_scores(tmp_path / "s")[0]) == ["good"]


def test_score_shard_i_reads_only_frame_shard_i_even_after_filtering(rgb_setup, tmp_path):
    """One assignment rule (``batch.shard_of``): score shard i of 2 takes the selected videos
    (test split: vid_b, vid_c) of frame shard i of 2, so an array task reads one input file;
    without --shard-index every score shard is written."""
    frames = store.open_shards(rgb_setup["frames"])
    in_frames = {i: set(store.open_shards(rgb_setup["frames"] / f"frames-{i}-of-2.h5").ids)
                 for i in range(2)}
    res = run_cli(["score", str(rgb_setup["ckpt"]), "--frames", str(rgb_setup["frames"]),
                   "--out", str(tmp_path / "s"), "--split", "test", "--num-shards", "2",
                   "--num-snippets", "1", "--crops", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert [json.loads(ln)["shard_index"] for ln in res.stdout.splitlines()
            if '"stage"' in ln] == [0, 1]
    for i in range(2):
        ids = store.open_shards(tmp_path / "s" / f"scores-{i}-of-2.h5").ids
        assert ids == sorted(in_frames[i] & {"vid_b", "vid_c"})
        assert ids == batch.assign_shard(["vid_b", "vid_c"], i, 2)
    assert len(frames) == 3


def test_long_videos_are_read_in_chunks_with_the_same_result(rgb_setup, tmp_path):
    """Chunks of 4 snippets (vid_a: 31 frames at stride 2 -> 16 snippets -> 4 chunks) give
    the same outputs as one chunk; a failing chunk fails its whole video, once."""
    import torch

    from tsn_pipeline import data
    from tsn_pipeline.snippets import SnippetDataset, SnippetPlan, iter_video_outputs

    src = data.Sources.open(frames=rgb_setup["frames"])
    plan = SnippetPlan("rgb", 1, stride=2, input_size=S_IN, crops=3)
    tasks = [batch.Task(v, "", 0) for v in sorted(VIDEOS)] + [batch.Task("nope", "", 0)]
    model, cfg = rgb_setup["model"], rgb_setup["cfg"]
    torch.manual_seed(0)

    def run(chunk, bs):
        ds = SnippetDataset(src, tasks, plan, chunk=chunk)
        return ds, list(iter_video_outputs(model, "forward_snippets", ds, 1, cfg.mean, cfg.std,
                                           bs, "cpu"))

    ds4, small = run(4, 7)
    ds64, big = run(64, 1000)
    assert len(ds4) == 4 + 2 + 1 + 1 and len(ds64) == 4       # vid_a, vid_b, vid_c, nope
    assert [t.video_id for t, _, _ in small] == ["vid_a", "vid_b", "vid_c", "nope"]
    for (t, i1, o1), (_, i2, o2) in zip(small[:3], big[:3]):
        assert o1.shape == (3, len(i1), 4)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-5)
    assert small[0][1][:, 0].tolist() == list(range(0, 31, 2))
    assert isinstance(small[3][2], batch.VideoFailure) and "nope" in str(small[3][2])

    class FailSecondChunk:
        calls = 0

        def forward_snippets(self, x):
            FailSecondChunk.calls += 1
            if FailSecondChunk.calls == 2:
                raise RuntimeError("device out of memory (simulated)")
            return model.forward_snippets(x)

    ds = SnippetDataset(src, tasks[:1], plan, chunk=4)
    (res,) = list(iter_video_outputs(FailSecondChunk(), "forward_snippets", ds, 1, cfg.mean,
                                     cfg.std, 12, "cpu"))
    assert res[1] is None and "out of memory" in str(res[2])


def test_a_no_flip_checkpoint_is_tested_without_mirrored_crops(rgb_setup, tmp_path):
    """A model trained with --no-flip (direction-sensitive classes) is scored on the 5
    unmirrored crops by default (the first 5 of TSN's 10), and refuses --crops 10."""
    model, cfg = rgb_setup["model"], rgb_setup["cfg"]
    ckpt = save_checkpoint(tmp_path / "noflip.pt", model, cfg, flip=False)
    common = ["--frames", str(rgb_setup["frames"]), "--num-snippets", "3", "--save-crops",
              "--no-progress"]
    res = run_cli(["score", str(ckpt), "--out", str(tmp_path / "s5"), *common])
    assert res.exit_code == 0, res.output
    five, _, root = read_scores(tmp_path / "s5")
    assert root["config"]["crops"] == 5
    res = run_cli(["score", str(rgb_setup["ckpt"]), "--out", str(tmp_path / "s10"), *common])
    assert res.exit_code == 0, res.output
    ten, _, _ = read_scores(tmp_path / "s10")
    for vid in ten:
        assert five[vid]["crop_scores"].shape[1] == 5
        np.testing.assert_allclose(five[vid]["crop_scores"], ten[vid]["crop_scores"][:, :5],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(five[vid]["scores"], ten[vid]["crop_scores"][:, :5].mean(1),
                                   rtol=1e-5, atol=1e-5)
    res = run_cli(["score", str(ckpt), "--out", str(tmp_path / "bad"), "--crops", "10", *common])
    assert res.exit_code == 1 and "--no-flip" in res.output and "--crops 5" in res.output
    assert not (tmp_path / "bad").exists()


def test_a_damaged_video_is_a_recorded_failure(rgb_setup, tmp_path):
    """A payload byte flipped on disk: score checks the video's checksum before reading it."""
    from shards import flip_byte, payload_offset

    frames = write_frame_shards(tmp_path / "frames")
    shard = frames / "frames-0-of-1.h5"
    flip_byte(shard, payload_offset(shard, "vid_b", "rgb") + 200)
    res = run_cli(["score", str(rgb_setup["ckpt"]), "--frames", str(frames), "--out",
                   str(tmp_path / "s"), "--num-snippets", "2", "--crops", "1", "--no-progress"])
    assert res.exit_code == 1 and "1 of 3 videos failed" in res.output
    (failure,) = json.loads((tmp_path / "s" / "scores-0-of-1.failures.json").read_text())
    assert failure["video_id"] == "vid_b" and f"{shard}: video 'vid_b' is damaged" in failure["reason"]
    assert list(read_scores(tmp_path / "s")[0]) == ["vid_a", "vid_c"]


def test_labels_follow_the_checkpoints_class_names(rgb_setup, tmp_path, monkeypatch):
    """The model's output i is the class it was trained on as i: data whose list orders the
    classes otherwise (or holds a subset) is scored with its labels mapped by name, and a
    class the model never saw is refused. A rerun from another folder, naming the same
    checkpoint by another relative path, is the same run."""
    model, cfg = rgb_setup["model"], rgb_setup["cfg"]
    trained_on = ["d", "c", "b", "a"]                  # the data's CLASSES, reversed
    (tmp_path / "ckpt").mkdir()
    ckpt = save_checkpoint(tmp_path / "ckpt" / "rgb.pt", model, cfg, classes=trained_on)
    out = tmp_path / "s"
    res = run_cli(["score", str(ckpt), "--frames", str(rgb_setup["frames"]), "--out", str(out),
                   "--num-snippets", "2", "--crops", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    _, attrs, root = read_scores(out)
    assert list(root["classes"]) == trained_on
    by_name = {v: trained_on.index(CLASSES[VIDEOS[v][1]]) for v in VIDEOS}
    assert {v: a["label"] for v, a in attrs.items()} == by_name        # a -> 3, c -> 1, d -> 0
    monkeypatch.chdir(tmp_path / "ckpt")
    res = run_cli(["score", "rgb.pt", "--frames", str(rgb_setup["frames"]), "--out", str(out),
                   "--num-snippets", "2", "--crops", "1", "--no-progress"])
    assert res.exit_code == 0 and '"status": "complete"' in res.output, res.output
    other = save_checkpoint(tmp_path / "other.pt", model, cfg, classes=["a", "b", "x", "y"])
    res = run_cli(["score", str(other), "--frames", str(rgb_setup["frames"]), "--out",
                   str(tmp_path / "refused"), "--num-snippets", "2", "--crops", "1"])
    assert res.exit_code == 1 and "do not include 'c'" in res.output
    assert not (tmp_path / "refused").exists()
