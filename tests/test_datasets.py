"""Dataset adapters: UCF101 / HMDB51 split files, generic CSV and folders -> video lists."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tsn_pipeline import store
from tsn_pipeline.datasets import (DatasetError, generic, hmdb51, read_list_ids, ucf101)
from tsn_pipeline.videolist import load_video_list

UCF_CLIP = "v_SoccerJuggling_g23_c01.avi"
HMDB_CLIPS = ["SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi",
              "TrumanShow_wave_f_nm_np1_fr_med_26.avi", "RATRACE_wave_f_nm_np1_fr_goo_37.avi"]


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def ucf_root(tmp_path, real_clips):
    """A UCF101-shaped tree: the real SoccerJuggling clip (linked) plus placeholder files,
    the official files' CRLF line ends, and a trimmed classInd (3 classes)."""
    root = tmp_path / "UCF101"
    vids = root / "UCF-101"
    (vids / "SoccerJuggling").mkdir(parents=True)
    os.symlink(real_clips / UCF_CLIP, vids / "SoccerJuggling" / UCF_CLIP)
    for rel in ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
                "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
                "HandstandPushups/v_HandStandPushups_g01_c01.avi",
                "SoccerJuggling/v_SoccerJuggling_g01_c01.avi"]:
        _touch(vids / rel)
    s = root / "ucfTrainTestlist"
    s.mkdir()
    (s / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 SoccerJuggling\r\n")
    (s / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        b"SoccerJuggling/v_SoccerJuggling_g23_c01.avi 3\r\n")
    (s / "testlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
        b"HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n"
        b"SoccerJuggling/v_SoccerJuggling_g01_c01.avi\r\n")
    return root


def test_ucf101_split_labels_and_paths(ucf_root, real_clips):
    vl = ucf101(ucf_root, split=1)
    assert vl.classes == ("ApplyEyeMakeup", "HandstandPushups", "SoccerJuggling")
    got = {it.video_id: (it.label, it.class_name, it.split) for it in vl.items}
    assert got == {
        "v_ApplyEyeMakeup_g08_c01": (0, "ApplyEyeMakeup", "train"),
        "v_SoccerJuggling_g23_c01": (2, "SoccerJuggling", "train"),
        "v_ApplyEyeMakeup_g01_c01": (0, "ApplyEyeMakeup", "test"),
        "v_HandStandPushups_g01_c01": (1, "HandstandPushups", "test"),
        "v_SoccerJuggling_g01_c01": (2, "SoccerJuggling", "test"),
    }
    real = next(it for it in vl.items if it.video_id == "v_SoccerJuggling_g23_c01")
    assert Path(real.path).resolve() == (real_clips / UCF_CLIP).resolve()
    assert [it.video_id for it in vl.items] == sorted(got)


@pytest.mark.parametrize("edit,message", [
    (("trainlist01.txt", b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 3\n"),
     "label 3 is 'SoccerJuggling' in classInd.txt but the video is in folder 'ApplyEyeMakeup'"),
    (("trainlist01.txt", b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 4\n"),
     "label 4 outside 1..3"),
    (("testlist01.txt", b"Juggling/v_Juggling_g01_c01.avi\n"),
     "class folder 'Juggling' is not in classInd.txt"),
    (("testlist01.txt", b"ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi\n"),
     "1 of 2 listed videos do not exist"),
    (("testlist01.txt", b"SoccerJuggling/v_ApplyEyeMakeup_g08_c01.avi\n"),
     "1 duplicate video ids: 'v_ApplyEyeMakeup_g08_c01'"),
    (("classInd.txt", b"1 ApplyEyeMakeup\n3 SoccerJuggling\n"), "class indices must be 1..2"),
])
def test_ucf101_errors_name_file_line_and_fix(ucf_root, edit, message):
    name, text = edit
    s = ucf_root / "ucfTrainTestlist"
    if name == "trainlist01.txt":
        (s / "testlist01.txt").write_text("")
    if name == "testlist01.txt":
        (s / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n")
    (s / name).write_bytes(text)
    with pytest.raises(DatasetError) as err:
        ucf101(ucf_root, split=1)
    assert message in str(err.value)
    if "do not exist" in message:
        assert "--no-check-files" in str(err.value)
        assert len(ucf101(ucf_root, split=1, check_files=False)) == 2


def test_ucf101_missing_split_file_and_bad_split(ucf_root):
    with pytest.raises(DatasetError, match="trainlist02.txt: missing"):
        ucf101(ucf_root, split=2)
    with pytest.raises(DatasetError, match="split 4 is not one of"):
        ucf101(ucf_root, split=4)
    with pytest.raises(DatasetError, match="no classInd.txt"):
        ucf101(ucf_root / "UCF-101", split=1)


@pytest.fixture
def hmdb_root(tmp_path, real_clips):
    root = tmp_path / "hmdb51"
    for clip in HMDB_CLIPS:
        (root / "videos" / "wave").mkdir(parents=True, exist_ok=True)
        os.symlink(real_clips / clip, root / "videos" / "wave" / clip)
    _touch(root / "videos" / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_0.avi")
    _touch(root / "videos" / "brush_hair" / "April_09_brush_hair_u_nm_np1_ba_goo_1.avi")
    s = root / "testTrainMulti_7030_splits"
    s.mkdir()
    for k in (1, 2, 3):
        (s / f"wave_test_split{k}.txt").write_text(
            f"{HMDB_CLIPS[0]} 1 \n{HMDB_CLIPS[1]} 2 \n{HMDB_CLIPS[2]} {0 if k == 1 else 1} \n")
        (s / f"brush_hair_test_split{k}.txt").write_text(
            "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 2 \n"
            "April_09_brush_hair_u_nm_np1_ba_goo_1.avi 1 \n")
    return root


def test_hmdb51_split_codes_and_sorted_classes(hmdb_root):
    vl = hmdb51(hmdb_root, split=1)
    assert vl.classes == ("brush_hair", "wave")
    got = {it.video_id: (it.label, it.split) for it in vl.items}
    assert got == {"April_09_brush_hair_u_nm_np1_ba_goo_0": (0, "test"),
                   "April_09_brush_hair_u_nm_np1_ba_goo_1": (0, "train"),
                   Path(HMDB_CLIPS[0]).stem: (1, "train"),
                   Path(HMDB_CLIPS[1]).stem: (1, "test")}          # code 0 left out
    with_unused = hmdb51(hmdb_root, split=1, include_unused=True)
    assert {it.video_id: it.split for it in with_unused.items}[Path(HMDB_CLIPS[2]).stem] == "unused"
    assert {it.video_id: it.split for it in hmdb51(hmdb_root, split=2).items}[
        Path(HMDB_CLIPS[2]).stem] == "train"
    assert all(os.path.isfile(it.path) for it in vl.items)


def test_hmdb51_errors(hmdb_root):
    s = hmdb_root / "testTrainMulti_7030_splits"
    (s / "wave_test_split2.txt").unlink()
    with pytest.raises(DatasetError, match="wave_test_split2.txt: missing"):
        hmdb51(hmdb_root, split=2)
    (s / "wave_test_split1.txt").write_text(f"{HMDB_CLIPS[0]} 3\n")
    with pytest.raises(DatasetError, match=r"wave_test_split1.txt:1: expected '<video>.avi <0\|1\|2>'"):
        hmdb51(hmdb_root, split=1)
    (s / "wave_test_split1.txt").write_text("April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1\n")
    with pytest.raises(DatasetError, match="duplicate video ids"):
        hmdb51(hmdb_root, split=1, check_files=False)


def test_generic_csv_headerless_and_with_classes_file(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        _touch(tmp_path / "v" / name)
    lst = tmp_path / "list.csv"
    lst.write_text("v/a.mp4,run,train\nv/b.mp4,jump,test\nv/c.mp4,run,test\n")
    vl = generic(lst)
    assert vl.classes == ("jump", "run")
    assert [(it.video_id, it.label, it.split) for it in vl.items] == [
        ("a", 1, "train"), ("b", 0, "test"), ("c", 1, "test")]
    assert vl.items[0].path == str(tmp_path / "v" / "a.mp4")
    classes = tmp_path / "classes.txt"
    classes.write_text("run\njump\nswim\n")
    vl = generic(lst, classes_file=classes)
    assert vl.classes == ("run", "jump", "swim") and [it.label for it in vl.items] == [0, 1, 0]
    classes.write_text("run\nswim\n")
    with pytest.raises(DatasetError, match="class 'jump', which is not in"):
        generic(lst, classes_file=classes)
    lst.write_text("v/a.mp4,run\nv/b.mp4,1\n")
    with pytest.raises(DatasetError, match="mix class names and numbers"):
        generic(lst)
    lst.write_text("v/a.mp4,0\nv/zz.mp4,1\n")
    with pytest.raises(DatasetError, match="zz.mp4"):
        generic(lst)


def test_generic_folders_with_split_folders(tmp_path):
    for rel in ("train/run/a.avi", "train/jump/b.avi", "test/run/c.avi"):
        _touch(tmp_path / "d" / rel)
    vl = generic(tmp_path / "d")
    assert vl.classes == ("jump", "run")
    assert [(it.video_id, it.label, it.split) for it in vl.items] == [
        ("a", 1, "train"), ("b", 0, "train"), ("c", 1, "test")]
    _touch(tmp_path / "d" / "test" / "jump" / "a.avi")
    with pytest.raises(DatasetError, match="duplicate video ids"):
        generic(tmp_path / "d")


def test_make_list_cli_writes_the_list_decode_reads(ucf_root, cli_runner, tmp_path):
    out = tmp_path / "lists" / "ucf101-split1.csv"
    result = cli_runner("make-list", "ucf101", ucf_root, "--split", "1", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["videos"] == 5 and summary["splits"] == {"test": 3, "train": 2}
    vl = load_video_list(out)
    assert vl.classes == ("ApplyEyeMakeup", "HandstandPushups", "SoccerJuggling")
    assert read_list_ids(out) == sorted(it.video_id for it in vl.items)
    # decode reads it: the real clip decodes, the placeholders fail with their reason
    frames = tmp_path / "frames"
    result = cli_runner("decode", out, "--out", frames, "--size", "32x24", "--no-progress",
                        "--split", "train")
    assert result.exit_code == 1             # the placeholder ApplyEyeMakeup file is not a video
    shards = store.open_shards(frames)
    assert shards.ids == ["v_SoccerJuggling_g23_c01"]
    entry = shards["v_SoccerJuggling_g23_c01"]
    assert (entry.label, entry.attrs["class_name"], entry.attrs["split"], entry.length) == (
        2, "SoccerJuggling", "train", 240)
    # errors are click errors (exit 1) with the adapter's message
    (ucf_root / "ucfTrainTestlist" / "testlist01.txt").write_text("Nope/v_Nope_g01_c01.avi\n")
    result = cli_runner("make-list", "ucf101", ucf_root, "--out", out)
    assert result.exit_code == 1 and "class folder 'Nope' is not in classInd.txt" in result.output


@pytest.mark.parametrize("name", ["ucf101", "hmdb51", "demo", "demo-tiny", "template"])
def test_pipeline_settings_name_real_options(name):
    """Every key of pipelines/<name>.toml is an option of its command (click ignores unknown
    default_map keys silently, so a typo would otherwise be lost), and its value converts."""
    import click

    from tsn_pipeline import cli

    path = Path(__file__).resolve().parents[1] / "pipelines" / f"{name}.toml"
    sections = cli.load_config(str(path))
    assert sections or name == "template"
    for command, table in sections.items():
        cmd = cli.main.get_command(None, command)
        params = {p.name: p for p in cmd.params}
        ctx = click.Context(cmd)
        for key, value in table.items():
            if isinstance(value, dict):                       # [train.rgb] and the like
                assert command == "train" and key in ("rgb", "flow", "warped", "rgbdiff"), key
                pairs = value.items()
            else:
                pairs = [(key, value)]
            for k, v in pairs:
                assert k in params, f"{path.name} [{command}] {k!r} is not an option of tsn {command}"
                params[k].process_value(ctx, v)


def test_make_list_paths_resolve_from_any_current_folder(real_clips, cli_runner, tmp_path,
                                                        monkeypatch):
    """The one path rule: a list's relative paths are relative to the list's folder. A list
    made with relative paths from one folder (as `make demo` does from the repository root)
    is read by decode and training from any other folder."""
    data = tmp_path / "project" / "data" / "videos"
    for cls, clip in [("juggle", UCF_CLIP), ("wave", HMDB_CLIPS[1])]:
        (data / cls).mkdir(parents=True)
        os.symlink(real_clips / clip, data / cls / clip)
    monkeypatch.chdir(tmp_path / "project")
    result = cli_runner("make-list", "generic", "data/videos", "--out", "out/lists/all.csv")
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "project" / "out" / "lists" / "all.csv").read_text().splitlines()
    assert sorted(r.split(",")[1] for r in rows[1:]) == [
        f"../../data/videos/juggle/{UCF_CLIP}", f"../../data/videos/wave/{HMDB_CLIPS[1]}"]
    monkeypatch.chdir(tmp_path)                 # elsewhere: the list still finds its videos
    result = cli_runner("decode", "project/out/lists/all.csv", "--out", "frames",
                        "--size", "32x24", "--no-progress")
    assert result.exit_code == 0, result.output
    shards = store.open_shards(tmp_path / "frames")
    assert shards.ids == sorted([Path(UCF_CLIP).stem, Path(HMDB_CLIPS[1]).stem])
    assert {v: shards[v].label for v in shards.ids} == {Path(UCF_CLIP).stem: 0,
                                                        Path(HMDB_CLIPS[1]).stem: 1}
    # a list written into a linked folder: its paths resolve through the link's target
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    os.symlink(tmp_path / "deep" / "a" / "b", tmp_path / "project" / "lnk")
    monkeypatch.chdir(tmp_path / "project")
    result = cli_runner("make-list", "generic", "data/videos", "--out", "lnk/all.csv")
    assert result.exit_code == 0, result.output
    assert load_video_list("lnk/all.csv").items[0].path.endswith(".avi")
    assert all(os.path.isfile(it.path) for it in load_video_list("lnk/all.csv").items)
    # an absolute list path works the same, from a third folder
    monkeypatch.chdir(data)
    result = cli_runner("decode", tmp_path / "project" / "out" / "lists" / "all.csv", "--out",
                        tmp_path / "frames2", "--size", "32x24", "--no-progress")
    assert result.exit_code == 0, result.output
    assert store.open_shards(tmp_path / "frames2").ids == shards.ids
