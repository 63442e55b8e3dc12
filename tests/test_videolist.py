"""Video lists (tsn_pipeline.videolist): labels, encodings and headers of list CSVs, through
the commands that read them (`tsn decode`, `tsn make-list generic`, `tsn import-rawframes`)."""
from __future__ import annotations


import numpy as np
import pytest

from tsn_pipeline import store
from tsn_pipeline.videolist import MAX_CLASSES, load_video_list

DECODE = ["--size", "32x24", "--no-progress"]


@pytest.fixture
def videos(make_video, tmp_path):
    """Four tiny real videos v0..v3 in tmp_path/v."""
    for i in range(4):
        make_video(f"v/v{i}.avi", n=3, seed=i)
    return tmp_path / "v"


def _write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def test_integer_labels_are_stored_as_given(videos, tmp_path, cli_runner):
    """Labels 2 and 10 stay 2 and 10 (no renumbering by string sort: "10" < "2")."""
    lst = _write(tmp_path / "list.csv", "video_id,path,label\n"
                 "a,v/v0.avi,2\nb,v/v1.avi,10\nc,v/v2.avi,\n")
    result = cli_runner("decode", lst, "--out", tmp_path / "frames", *DECODE)
    assert result.exit_code == 0, result.output
    shards = store.open_shards(tmp_path / "frames")
    assert {v: shards[v].label for v in shards.ids} == {"a": 2, "b": 10, "c": -1}
    shards.close()
    out = tmp_path / "generic.csv"
    plain = _write(tmp_path / "plain.csv", "v/v0.avi,2\nv/v1.avi,10\n")
    result = cli_runner("make-list", "generic", plain, "--out", out)
    assert result.exit_code == 0, result.output
    assert [(it.video_id, it.label) for it in load_video_list(out).items] == [("v0", 2), ("v1", 10)]


@pytest.mark.parametrize("header", [True, False])
def test_mixed_label_kinds_are_an_error_naming_the_rows(videos, tmp_path, cli_runner, header):
    rows = [f"v/v{i}.avi,{lab}" for i, lab in enumerate(["1", "2", "walk", "10"])]
    rows.insert(1, "")                 # blank lines are skipped but counted
    lst = _write(tmp_path / "list.csv", ("path,label\n" if header else "") + "\n".join(rows) + "\n")
    line = 5 if header else 4
    expected = (f"labels mix class names and numbers: line {line} ('walk') is a class name, "
                "the other 3 labels are numbers")
    commands = [("make-list", "generic", lst, "--out", tmp_path / "out.csv")]
    if header:
        commands.append(("decode", lst, "--out", tmp_path / "frames", *DECODE))
    for args in commands:
        result = cli_runner(*args)
        assert result.exit_code == 1, result.output
        assert expected in result.output
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "frames").exists()


@pytest.mark.parametrize("label,message", [
    ("999999999999", f"line 3 ('999999999999') outside -1..{MAX_CLASSES - 1}"),
    ("-2", f"line 3 ('-2') outside -1..{MAX_CLASSES - 1}"),
    ("1.0", "line 3 ('1.0') are numbers but not integers"),
])
def test_labels_that_are_no_class_index_are_an_error(videos, tmp_path, cli_runner, label,
                                                     message):
    lst = _write(tmp_path / "list.csv", f"path,label\nv/v0.avi,0\nv/v1.avi,{label}\n")
    for args in (("decode", lst, "--out", tmp_path / "frames", *DECODE),
                 ("make-list", "generic", lst, "--out", tmp_path / "out.csv")):
        result = cli_runner(*args)
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "frames").exists()
    if label != "1.0":      # the mmaction2 list of import-rawframes: same rule, same message
        for vid in ("v0", "v1"):
            (tmp_path / "raw" / vid).mkdir(parents=True)
            (tmp_path / "raw" / vid / "img_00001.jpg").write_bytes(
                store.encode_image(np.zeros((8, 8, 3), np.uint8)))
        txt = _write(tmp_path / "list.txt", f"v0 1 0\nv1 1 {label}\n")
        result = cli_runner("import-rawframes", tmp_path / "raw", "--list", txt, "--frames-out",
                            tmp_path / "imported", "--no-progress")
        assert result.exit_code == 1, result.output
        assert message.replace("line 3", "line 2") in result.output
        assert not (tmp_path / "imported").exists()


def test_a_byte_order_mark_keeps_the_first_column(videos, tmp_path, cli_runner):
    """Spreadsheets save UTF-8 with a BOM; the first column (video_id) must not be lost."""
    lst = _write(tmp_path / "list.csv",
                 "video_id,path,label\nclip_a,v/v0.avi,1\nclip_b,v/v1.avi,0\n",
                 encoding="utf-8-sig")
    assert lst.read_bytes()[:3] == b"\xef\xbb\xbf"
    result = cli_runner("decode", lst, "--out", tmp_path / "frames", *DECODE)
    assert result.exit_code == 0, result.output
    shards = store.open_shards(tmp_path / "frames")
    assert {v: shards[v].label for v in shards.ids} == {"clip_a": 1, "clip_b": 0}
    shards.close()
    result = cli_runner("make-list", "generic", lst, "--out", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    listed = load_video_list(tmp_path / "out.csv").items
    assert [it.video_id for it in listed] == ["clip_a", "clip_b"]
    # the rawframes list reader is the same one: ids from the column, not from the paths
    for vid in ("clip_a", "clip_b"):
        (tmp_path / "raw" / vid).mkdir(parents=True)
        (tmp_path / "raw" / vid / "img_00001.jpg").write_bytes(store.encode_image(
            np.zeros((8, 8, 3), np.uint8)))
    result = cli_runner("import-rawframes", tmp_path / "raw", "--list", lst, "--frames-out",
                        tmp_path / "imported", "--no-progress")
    assert result.exit_code == 0, result.output
    shards = store.open_shards(tmp_path / "imported")
    assert shards.ids == ["clip_a", "clip_b"]
    shards.close()


@pytest.mark.parametrize("header,row,unknown", [
    ("file,label", "v/v0.avi,1", "['file']"),
    ("video_id,path,lable", "a,v/v0.avi,1", "['lable']")])
def test_a_header_of_unknown_columns_is_an_error_listing_the_known_ones(
        videos, tmp_path, cli_runner, header, row, unknown):
    lst = _write(tmp_path / "list.csv", f"{header}\n{row}\n")
    if "path" not in header:          # no 'path' column: read as rows without a header
        result = cli_runner("make-list", "generic", lst, "--out", tmp_path / "out.csv")
        assert result.exit_code == 1
        assert ("line 1 ('label') is a class name, the other 1 labels are numbers; use one "
                "kind (if line 1 is a header, name its columns: video_id, path, label, "
                "class_name, split)") in result.output
    for args in (("decode", lst, "--out", tmp_path / "frames", *DECODE),
                 ("index", tmp_path, "--list", lst, "--out", tmp_path / "index.json")):
        if args[0] == "index" and "path" not in header:
            continue                  # index reads such a file as rows without a header
        result = cli_runner(*args)
        assert result.exit_code == 1, result.output
        assert (f"unknown columns {unknown} in the header" in result.output
                and "the known columns are video_id, path, label, class_name, split"
                in result.output)
    assert not (tmp_path / "frames").exists() and not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "index.json").exists()
