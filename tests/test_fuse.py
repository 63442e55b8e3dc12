"""Late fusion: numerics against hand computations, and `tsn fuse` through the CLI.

Score shards are written by the real batch runner in the real score-file format
(``score.scores_record``), then read back by ``tsn fuse``.
"""
import csv
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from tsn_pipeline.cli import main
from tsn_pipeline import batch, fuse, score

CLASSES = ["brush_hair", "cartwheel", "catch"]

# Snippet scores (2 snippets x 3 classes) per video; snippet means in the comments.
RGB = {
    "v1": (0, [[4, 0, 0], [0, 2, 0]]),   # [2, 1, 0]   pred 0 (right)
    "v2": (1, [[1, 0, 0], [1, 0, 0]]),   # [1, 0, 0]   pred 0 (wrong)
    "v3": (2, [[0, 0, 1], [0, 0, 3]]),   # [0, 0, 2]   pred 2 (right)
    "v4": (2, [[0, 3, 0], [0, 1, 0]]),   # [0, 2, 0]   pred 1 (wrong)
}
FLOW = {
    "v1": (0, [[0, 2, 0], [0, 2, 0]]),   # [0, 2, 0]   pred 1 (wrong)
    "v2": (1, [[0, 1, 0], [0, 1, 0]]),   # [0, 1, 0]   pred 1 (right)
    "v3": (2, [[2, 0, 0], [0, 0, 0]]),   # [1, 0, 0]   pred 0 (wrong)
    "v4": (2, [[0, 0, 3], [0, 0, 3]]),   # [0, 0, 3]   pred 2 (right)
}
# Fused with rgb 1, flow 1.5 (TSN default), by hand:
#   v1 [2, 4, 0] -> 1 (wrong); v2 [1, 1.5, 0] -> 1; v3 [1.5, 0, 2] -> 2; v4 [0, 2, 4.5] -> 2
FUSED_BY_HAND = {"v1": [2, 4, 0], "v2": [1, 1.5, 0], "v3": [1.5, 0, 2], "v4": [0, 2, 4.5]}


def write_scores(out_dir, modality, table, num_shards=1, classes=CLASSES):
    """Write ``table`` (id -> (label, snippet scores)) as score shards via the batch runner.

    Each snippet is stored as two crops ``x - 1`` and ``x + 1`` whose mean is ``x``, so the
    crop aggregation is exercised too.
    """
    for i in range(num_shards):
        ids = batch.assign_shard(list(table), i, num_shards)
        tasks = [batch.Task(v, "hand", table[v][0]) for v in ids]

        def batch_process(tasks):
            for t in tasks:
                s = np.asarray(table[t.video_id][1], dtype=np.float32)
                crops = np.stack([s - 1, s + 1], axis=1)              # (S, 2, K)
                yield t, score.scores_record(t.video_id, crops, label=t.label,
                                             modality=modality, save_crops=True)

        summary = batch.run_batched_stage(kind="scores", out_dir=out_dir, shard_index=i,
                                  num_shards=num_shards, config={"modality": modality},
                                  tasks=tasks, batch_process=batch_process, progress=False,
                                  root_extra={"modality": modality,
                                              "classes": json.dumps(classes)})
        assert summary.failed == 0
    return out_dir


def test_fuse_core_equals_hand_computation():
    rgb = np.array([[2.0, 1, 0], [1, 0, 0]])
    flow = np.array([[0.0, 2, 0], [0, 1, 0]])
    out = fuse.fuse({"rgb": rgb, "flow": flow}, {"rgb": 1.0, "flow": 1.5})
    np.testing.assert_allclose(out, [[2, 4, 0], [1, 1.5, 0]])
    # after softmax: softmax([0, ln 3]) = [.25, .75]; softmax([ln 3, 0]) = [.75, .25]
    a = np.array([[0.0, math.log(3)]])
    b = np.array([[math.log(3), 0.0]])
    out = fuse.fuse({"a": a, "b": b}, {"a": 1.0, "b": 2.0}, after_softmax=True)
    np.testing.assert_allclose(out, [[0.25 + 1.5, 0.75 + 0.5]])
    with pytest.raises(ValueError, match="one weight per modality"):
        fuse.fuse({"a": a, "b": b}, {"a": 1.0})


def test_default_weights_follow_tsn():
    assert fuse.default_weights(["rgb", "flow"]) == {"rgb": 1.0, "flow": 1.5}
    assert fuse.default_weights(["flow", "warped", "rgb"]) == {"flow": 1.0, "warped": 0.5,
                                                               "rgb": 1.0}
    assert fuse.default_weights(["rgb", "rgbdiff"]) == {"rgb": 1.0, "rgbdiff": 1.0}
    with pytest.raises(ValueError, match="finite and >= 0"):
        fuse.FuseConfig(weights=(("rgb", -1.0),))


def test_cli_fuse_report_matches_hand_computation(tmp_path):
    write_scores(tmp_path / "rgb", "rgb", RGB, num_shards=2)
    write_scores(tmp_path / "flow", "flow", FLOW)
    out = tmp_path / "fused"
    res = CliRunner().invoke(main, ["fuse", "--scores", f"rgb={tmp_path / 'rgb'}",
                                    "--scores", str(tmp_path / "flow" / "scores-0-of-1.h5"),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fused" in res.output and "75.00" in res.output
    report = json.loads((out / "fused.json").read_text())
    assert report["weights"] == {"rgb": 1.0, "flow": 1.5}      # defaults, modality from file
    m = report["metrics"]
    assert m["rgb"]["top1"] == 0.5 and m["flow"]["top1"] == 0.5
    assert m["rgb"]["mean_class_accuracy"] == pytest.approx(0.5)   # (1 + 0 + 1/2) / 3
    assert m["fused"]["top1"] == 0.75
    assert m["fused"]["mean_class_accuracy"] == pytest.approx(2 / 3)   # (0 + 1 + 1) / 3
    assert m["fused"]["top5"] == 1.0 and m["fused"]["num_labelled"] == 4
    with open(out / "predictions.csv") as fh:
        rows = {r["video_id"]: r for r in csv.DictReader(fh)}
    hand_pred = {v: int(np.argmax(s)) for v, s in FUSED_BY_HAND.items()}
    assert {v: int(r["fused"]) for v, r in rows.items()} == hand_pred
    assert {v: int(r["rgb"]) for v, r in rows.items()} == {"v1": 0, "v2": 0, "v3": 2, "v4": 1}
    with open(out / "confusion.csv") as fh:
        cm = list(csv.reader(fh))
    assert cm[0] == ["true\\predicted"] + CLASSES
    assert [[int(x) for x in r[1:]] for r in cm[1:]] == [[0, 1, 0], [0, 1, 0], [0, 0, 2]]
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same files again: refused without --overwrite; weights by position; --json.
    again = ["fuse", "--scores", f"rgb={tmp_path / 'rgb'}", "--scores",
             f"flow={tmp_path / 'flow'}", "--out", str(out)]
    res = CliRunner().invoke(main, again)
    assert res.exit_code == 1 and "--overwrite" in res.output
    res = CliRunner().invoke(main, again + ["--weights", "3,1", "--overwrite", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["weights"] == {"rgb": 3.0, "flow": 1.0}
    # 3 rgb + 1 flow: v1 [6,5,0]->0 v2 [3,1,0]->0 v3 [1,0,6]->2 v4 [0,6,3]->1 : 2 of 4 right
    assert report["metrics"]["fused"]["top1"] == 0.5


def test_cli_fuse_after_softmax(tmp_path):
    write_scores(tmp_path / "rgb", "rgb", RGB)
    write_scores(tmp_path / "flow", "flow", FLOW)
    res = CliRunner().invoke(main, ["fuse", "--scores", str(tmp_path / "rgb"), "--scores",
                                    str(tmp_path / "flow"), "--after-softmax", "--json",
                                    "--out", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    # by hand: v1 rgb softmax([2,1,0]) = [.665,.245,.090]; 1.5*softmax([0,2,0]) =
    # 1.5*[.107,.787,.107] -> fused [.826, 1.425, .250] -> class 1 (still wrong); v3 rgb
    # softmax([0,0,2]) = [.107,.107,.787], flow 1.5*softmax([1,0,0]) = 1.5*[.576,.212,.212]
    # -> [.970, .425, 1.104] -> class 2 (right); v2, v4 right as before -> 3 of 4.
    assert json.loads(res.stdout)["metrics"]["fused"]["top1"] == 0.75
    assert json.loads(res.stdout)["after_softmax"] is True


def test_cli_refuses_id_mismatch_unless_intersection(tmp_path):
    write_scores(tmp_path / "rgb", "rgb", RGB)
    flow = {k: v for k, v in FLOW.items() if k != "v3"}
    flow["v9"] = (1, [[0, 1, 0], [0, 1, 0]])
    write_scores(tmp_path / "flow", "flow", flow)
    args = ["fuse", "--scores", f"rgb={tmp_path / 'rgb'}", "--scores",
            f"flow={tmp_path / 'flow'}", "--out", str(tmp_path / "f")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1
    assert "'v3'" in res.output and "'v9'" in res.output and "--intersection" in res.output
    assert not (tmp_path / "f" / "fused.json").exists()
    res = CliRunner().invoke(main, args + ["--intersection", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["num_videos"] == 3
    assert report["dropped"]["missing_in_some_modality"]["video_ids"] == ["v3", "v9"]
    assert report["metrics"]["fused"]["top1"] == pytest.approx(2 / 3)   # v1 wrong, v2 v4 right


def test_cli_refuses_label_mismatch(tmp_path):
    write_scores(tmp_path / "rgb", "rgb", RGB)
    flow = dict(FLOW, v2=(0, FLOW["v2"][1]))
    write_scores(tmp_path / "flow", "flow", flow)
    args = ["fuse", "--scores", f"rgb={tmp_path / 'rgb'}", "--scores",
            f"flow={tmp_path / 'flow'}", "--out", str(tmp_path / "f")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "labels of 1 videos disagree" in res.output
    assert "'v2': rgb=1, flow=0" in res.output
    res = CliRunner().invoke(main, args + ["--intersection", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dropped"]["label_mismatch"]["video_ids"] == ["v2"]


def test_cli_refuses_wrong_weight_count_and_names(tmp_path):
    write_scores(tmp_path / "rgb", "rgb", RGB)
    write_scores(tmp_path / "flow", "flow", FLOW)
    base = ["fuse", "--scores", f"rgb={tmp_path / 'rgb'}", "--scores",
            f"flow={tmp_path / 'flow'}", "--out", str(tmp_path / "f")]
    res = CliRunner().invoke(main, base + ["--weights", "1,1.5,0.5"])
    assert res.exit_code == 2 and "3 weights for 2 modalities" in res.output
    res = CliRunner().invoke(main, base + ["--weights", "rgb=1,warped=2"])
    assert res.exit_code == 2 and "warped" in res.output
    res = CliRunner().invoke(main, base + ["--weights", "1,abc"])
    assert res.exit_code == 2 and "'abc'" in res.output
    assert not (tmp_path / "f").exists()


def test_cli_refuses_different_class_lists(tmp_path):
    write_scores(tmp_path / "rgb", "rgb", RGB)
    write_scores(tmp_path / "flow", "flow", FLOW, classes=["brush_hair", "catch", "cartwheel"])
    res = CliRunner().invoke(main, ["fuse", "--scores", str(tmp_path / "rgb"), "--scores",
                                    str(tmp_path / "flow"), "--out", str(tmp_path / "f")])
    assert res.exit_code == 1 and "different label maps" in res.output


def test_cli_refuses_labels_outside_the_classes(tmp_path):
    write_scores(tmp_path / "rgb", "rgb", dict(RGB, v4=(3, RGB["v4"][1])))
    res = CliRunner().invoke(main, ["fuse", "--scores", str(tmp_path / "rgb"), "--out",
                                    str(tmp_path / "f")])
    assert res.exit_code == 1 and "labels [3] outside 0..2" in res.output


def test_one_set_of_shards_with_different_settings_is_refused(tmp_path):
    write_scores(tmp_path / "a", "rgb", {"v1": RGB["v1"]})
    write_scores(tmp_path / "b", "rgb", {"v2": RGB["v2"]})
    args = ["fuse", "--scores", f"rgb={tmp_path / 'a'}", "--scores", f"rgb={tmp_path / 'b'}",
            "--json", "--out"]
    res = CliRunner().invoke(main, args + [str(tmp_path / "ok")])    # same settings: one set
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["num_videos"] == 2
    res = CliRunner().invoke(main, args[:3] + ["--scores", f"rgb={tmp_path / 'a'}",
                                               "--out", str(tmp_path / "dup")])
    assert res.exit_code == 1 and "is in two shards" in res.output
    import h5py
    with h5py.File(tmp_path / "b" / "scores-0-of-1.h5", "r+") as f:
        f.attrs["config"] = json.dumps({"modality": "rgb", "num_snippets": 3})
    res = CliRunner().invoke(main, ["fuse", "--scores", f"rgb={tmp_path / 'a'}", "--scores",
                                    f"rgb={tmp_path / 'b'}", "--out", str(tmp_path / "f")])
    assert res.exit_code == 1 and "num_snippets: None -> 3" in res.output


def test_a_modality_name_on_another_modalitys_scores_is_refused(tmp_path):
    """NAME=PATH with a modality's name picks that modality's TSN weight: given another
    modality's scores it is refused (a name of one's own is fine)."""
    write_scores(tmp_path / "rgb", "rgb", RGB)
    write_scores(tmp_path / "rgb2", "rgb", FLOW)
    res = CliRunner().invoke(main, ["fuse", "--scores", f"rgb={tmp_path / 'rgb'}", "--scores",
                                    f"flow={tmp_path / 'rgb2'}", "--out", str(tmp_path / "f")])
    assert res.exit_code == 2 and "hold rgb scores, not flow" in res.output
    assert not (tmp_path / "f").exists()
    res = CliRunner().invoke(main, ["fuse", "--scores", f"rgb={tmp_path / 'rgb'}", "--scores",
                                    f"rgb_b={tmp_path / 'rgb2'}", "--weights", "1,1",
                                    "--out", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output


def test_predictions_csv_quotes_ids_with_commas_and_quotes(tmp_path):
    odd = {f'x,y "{k}"': v for k, v in RGB.items()}
    write_scores(tmp_path / "rgb", "rgb", odd)
    write_scores(tmp_path / "flow", "flow", {f'x,y "{k}"': v for k, v in FLOW.items()})
    res = CliRunner().invoke(main, ["fuse", "--scores", str(tmp_path / "rgb"), "--scores",
                                    str(tmp_path / "flow"), "--out", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "f" / "predictions.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["video_id", "label", "fused", "rgb", "flow"]
    assert sorted(r[0] for r in rows[1:]) == sorted(odd) and all(len(r) == 5 for r in rows)
