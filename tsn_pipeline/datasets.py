"""Dataset adapters: official split files or generic lists -> one video list for every stage.

Reads the split files of UCF101 and HMDB51, a generic CSV, or class folders; writes nothing
itself (``tsn make-list`` writes the result with ``videolist.write_video_list_csv``, the CSV
that ``tsn decode`` and the later stages read). Every adapter returns a
``videolist.VideoList`` of ``VideoItem(video_id, path, label, class_name, split)`` with
0-based labels, ``classes[label] == class_name``, and split ``"train"`` or ``"test"``.

The rules every adapter enforces, so a mistake stops here instead of three stages later:
the video id is the file stem and must be unique; every class a list names must be known;
every listed file must exist (``check_files=False`` skips that, e.g. to make lists on a login
node without the videos). The error names the file and line, the rule, and what to do.

UCF101 (``ucfTrainTestlist/``)::

    classInd.txt        "1 ApplyEyeMakeup"                                  (1-based)
    trainlist01.txt     "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"     (1-based label)
    testlist01.txt      "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"       (class = folder)

-> label 0 is ApplyEyeMakeup. The official files use CRLF line ends; both are read.

HMDB51 (``testTrainMulti_7030_splits/``)::

    brush_hair_test_split1.txt   "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1"

1 = train, 2 = test, 0 = unused in this split (left out unless ``include_unused``).
Classes are the 51 names sorted, as in every public HMDB51 code base (label 0 = brush_hair).
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .store import check_video_id
from .videolist import (VideoItem, VideoList, VideoListError, from_csv,
                        from_directory, parse_labels, read_csv_rows, video_id_from_path)

SPLITS = (1, 2, 3)
_MAX_LISTED = 5


class DatasetError(VideoListError):
    """A dataset's files are inconsistent: unknown class, missing video, duplicate id, ..."""


# -- shared checks ------------------------------------------------------------------------
def _read_lines(path: Path) -> List[Tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines; CRLF and BOM tolerated."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text file ({exc})") from exc
    return [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(str(n) for n in names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def check_items(items: Sequence[VideoItem], classes: Sequence[str], where: str,
                check_files: bool = True) -> VideoList:
    """The checks every adapter ends with; returns the ``VideoList`` sorted by video id."""
    seen: Dict[str, VideoItem] = {}
    dups: List[str] = []
    for it in items:
        if it.video_id in seen:
            dups.append(f"{it.video_id!r} ({seen[it.video_id].path} and {it.path})")
        else:
            seen[it.video_id] = it
    if dups:
        raise DatasetError(f"{where}: {len(dups)} duplicate video ids: {_listing(dups)}. Ids "
                           "are file stems and must be unique in a dataset; rename the files "
                           "or give explicit video_id values in a CSV list")
    for it in items:
        if it.label >= len(classes) or (it.label >= 0 and classes[it.label] != it.class_name):
            raise DatasetError(f"{where}: video {it.video_id!r} has label {it.label} "
                               f"({it.class_name!r}) which is not in the {len(classes)} classes")
    if check_files:
        missing = [it.path for it in items if not os.path.isfile(it.path)]
        if missing:
            raise DatasetError(f"{where}: {len(missing)} of {len(items)} listed videos do not "
                               f"exist: {_listing(missing)}. Check the videos folder "
                               "(--videos), or pass --no-check-files to write the list anyway")
    return VideoList(tuple(sorted(items, key=lambda i: i.video_id)), tuple(classes))


def _find_dir(root: Path, marker: str, names: Sequence[str]) -> Optional[Path]:
    """``root`` or a child of it (``names`` first) that holds files matching glob ``marker``."""
    candidates = [root] + [root / n for n in names]
    if root.is_dir():
        candidates += sorted(p for p in root.iterdir() if p.is_dir())
    for c in candidates:
        if c.is_dir() and any(c.glob(marker)):
            return c
    return None


def _videos_root(root: Path, rel_paths: Sequence[str], names: Sequence[str]) -> Path:
    """The folder the list's relative paths resolve in: ``root`` or a child of it."""
    candidates = [root] + [root / n for n in names]
    if root.is_dir():
        candidates += sorted(p for p in root.iterdir() if p.is_dir() and p not in candidates)
    probe = list(rel_paths[:20])
    for c in candidates:
        if any((c / r).is_file() or (c / Path(r).name).is_file() for r in probe):
            return c
    return root


def _resolve(videos: Path, rel: str) -> str:
    """``videos/<class>/<file>`` if it exists, else a flat ``videos/<file>``, else the former."""
    nested = videos / rel
    if nested.is_file():
        return str(nested)
    flat = videos / Path(rel).name
    return str(flat if flat.is_file() else nested)


def _check_split(split: int) -> int:
    if int(split) not in SPLITS:
        raise DatasetError(f"split {split} is not one of {SPLITS} (UCF101 and HMDB51 have three "
                           "official train/test splits)")
    return int(split)


def _vid(path: str, where: str) -> str:
    try:
        return video_id_from_path(path)
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from exc


# -- UCF101 -------------------------------------------------------------------------------
def read_ucf101_classes(path) -> List[str]:
    """``classInd.txt`` -> class names in label order (file is 1-based, labels 0-based)."""
    path = Path(path)
    by_index: Dict[int, str] = {}
    for n, line in _read_lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path}:{n}: expected '<index> <ClassName>' (e.g. "
                               f"'1 ApplyEyeMakeup'), got {line!r}")
        i, name = int(parts[0]), parts[1]
        if i in by_index or name in by_index.values():
            raise DatasetError(f"{path}:{n}: index {i} or class {name!r} appears twice")
        by_index[i] = name
    if not by_index:
        raise DatasetError(f"{path}: no classes")
    expected = list(range(1, len(by_index) + 1))
    if sorted(by_index) != expected:
        raise DatasetError(f"{path}: class indices must be 1..{len(by_index)} (1-based, no gaps); "
                           f"got {_listing([str(i) for i in sorted(set(by_index) ^ set(expected))])} "
                           "out of place")
    return [by_index[i] for i in expected]


def _class_of(folder: str, index: Dict[str, int], lower: Dict[str, str], where: str) -> str:
    """Class named by a list's folder part; case differences tolerated (UCF101's own
    ``HandStandPushups`` vs ``HandstandPushups``) when unambiguous."""
    if folder in index:
        return folder
    if folder.lower() in lower:
        return lower[folder.lower()]
    raise DatasetError(f"{where}: class folder {folder!r} is not in classInd.txt; fix the "
                       "line or add the class to classInd.txt")


def ucf101(root, split: int = 1, splits_dir=None, videos_dir=None,
           check_files: bool = True) -> VideoList:
    """UCF101 split ``split`` (1..3): train items from ``trainlist0<split>.txt``, test items
    from ``testlist0<split>.txt``.

    ``root`` is the dataset folder; ``splits_dir`` defaults to the folder under it holding
    ``classInd.txt`` (``ucfTrainTestlist``), ``videos_dir`` to the one where the listed paths
    exist (``UCF-101``, ``videos`` or ``root`` itself; class sub-folders or flat).
    """
    split = _check_split(split)
    root = Path(root)
    sdir = Path(splits_dir) if splits_dir else _find_dir(root, "classInd.txt",
                                                         ["ucfTrainTestlist"])
    if sdir is None or not (sdir / "classInd.txt").is_file():
        raise DatasetError(f"{splits_dir or root}: no classInd.txt here or in a sub-folder; pass "
                           "--splits DIR (the unpacked UCF101TrainTestSplits-RecognitionTask.zip)")
    classes = read_ucf101_classes(sdir / "classInd.txt")
    index = {c: i for i, c in enumerate(classes)}
    lower = {c.lower(): c for c in classes}
    rows: List[Tuple[str, int, str, str]] = []      # (rel path, label, class, split)
    for kind in ("train", "test"):
        path = sdir / f"{kind}list0{split}.txt"
        if not path.is_file():
            raise DatasetError(f"{path}: missing; UCF101 split {split} needs trainlist0{split}.txt "
                               f"and testlist0{split}.txt next to classInd.txt")
        for n, line in _read_lines(path):
            where = f"{path}:{n}"
            parts = line.split()
            rel = parts[0].replace("\\", "/")
            if "/" not in rel:
                raise DatasetError(f"{where}: expected '<Class>/<video>.avi', got {parts[0]!r}")
            cls = _class_of(rel.split("/")[0], index, lower, where)
            if kind == "train":
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise DatasetError(f"{where}: expected '<Class>/<video>.avi <label 1..{len(classes)}>', "
                                       f"got {line!r}")
                label = int(parts[1]) - 1
                if not 0 <= label < len(classes):
                    raise DatasetError(f"{where}: label {parts[1]} outside 1..{len(classes)} "
                                       "(classInd.txt is 1-based)")
                if classes[label] != cls:
                    raise DatasetError(f"{where}: label {parts[1]} is {classes[label]!r} in "
                                       f"classInd.txt but the video is in folder {cls!r}")
            else:
                if len(parts) not in (1, 2):
                    raise DatasetError(f"{where}: expected '<Class>/<video>.avi', got {line!r}")
                label = index[cls]
            rows.append((rel, label, cls, kind))
    if not rows:
        raise DatasetError(f"{sdir}: split {split} lists no videos")
    vdir = Path(videos_dir) if videos_dir else _videos_root(root, [r[0] for r in rows],
                                                           ["UCF-101", "UCF101", "videos"])
    items = [VideoItem(_vid(rel, f"{sdir}"), _resolve(vdir, rel), label, cls, kind)
             for rel, label, cls, kind in rows]
    return check_items(items, classes, f"UCF101 split {split} ({sdir})", check_files)


# -- HMDB51 -------------------------------------------------------------------------------
_HMDB_RE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>[1-3])\.txt$")
HMDB_SPLIT_CODES = {"0": "unused", "1": "train", "2": "test"}


def hmdb51_classes(sdir: Path) -> List[str]:
    return sorted({m.group("cls") for p in sdir.iterdir() for m in [_HMDB_RE.match(p.name)] if m})


def hmdb51(root, split: int = 1, splits_dir=None, videos_dir=None, include_unused: bool = False,
           check_files: bool = True) -> VideoList:
    """HMDB51 split ``split`` (1..3) from ``<class>_test_split<split>.txt`` files.

    Classes are the sorted class names of the split files; videos live in
    ``<videos>/<class>/<video>.avi`` (as unpacked from the per-class rar files) or flat.
    """
    split = _check_split(split)
    root = Path(root)
    sdir = Path(splits_dir) if splits_dir else _find_dir(
        root, "*_test_split1.txt", ["testTrainMulti_7030_splits", "splits"])
    if sdir is None or not sdir.is_dir():
        raise DatasetError(f"{splits_dir or root}: no <class>_test_split<k>.txt files here or in a "
                           "sub-folder; pass --splits DIR (the unpacked test_train_splits.rar)")
    classes = hmdb51_classes(sdir)
    if not classes:
        raise DatasetError(f"{sdir}: no <class>_test_split<k>.txt files")
    rows: List[Tuple[str, int, str, str]] = []
    for label, cls in enumerate(classes):
        path = sdir / f"{cls}_test_split{split}.txt"
        if not path.is_file():
            raise DatasetError(f"{path}: missing; every class needs a file for split {split} "
                               f"(found one for another split of {cls!r})")
        for n, line in _read_lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in HMDB_SPLIT_CODES:
                raise DatasetError(f"{path}:{n}: expected '<video>.avi <0|1|2>' (1 train, 2 test, "
                                   f"0 unused), got {line!r}")
            kind = HMDB_SPLIT_CODES[parts[1]]
            if kind == "unused" and not include_unused:
                continue
            rows.append((f"{cls}/{parts[0]}", label, cls, kind))
    if not rows:
        raise DatasetError(f"{sdir}: split {split} lists no videos")
    vdir = Path(videos_dir) if videos_dir else _videos_root(root, [r[0] for r in rows],
                                                           ["videos", "hmdb51_org", "hmdb51"])
    items = [VideoItem(_vid(rel, str(sdir)), _resolve(vdir, rel), label, cls, kind)
             for rel, label, cls, kind in rows]
    return check_items(items, classes, f"HMDB51 split {split} ({sdir})", check_files)


# -- generic ------------------------------------------------------------------------------
def read_class_names(path) -> List[str]:
    """One class name per line, or UCF101-style '<1-based index> <name>' lines."""
    path = Path(path)
    lines = _read_lines(path)
    if lines and all(len(t.split()) == 2 and t.split()[0].isdigit() for _, t in lines):
        return read_ucf101_classes(path)
    names = [t for _, t in lines]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"{path}: classes listed twice: {_listing(dup)}")
    if not names:
        raise DatasetError(f"{path}: no classes")
    return names


def _headerless_csv(path: Path) -> Optional[List[Tuple[int, List[str]]]]:
    """``(line, cells)`` of a CSV without header (``path,label[,split]``), or None if it has
    a header."""
    try:
        rows = read_csv_rows(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read list file ({exc})") from exc
    if not rows:
        raise DatasetError(f"{path}: empty list file")
    first = [c.strip().lower() for c in rows[0][1]]
    if "path" in first:
        return None
    return rows


def generic(source, classes_file=None, check_files: bool = True) -> VideoList:
    """A CSV list or a folder of class folders.

    CSV: with a header (``video_id,path,label,class_name,split``, any subset holding
    ``path``; see ``videolist``) or without one, rows ``path,label[,split]``; ``label`` is a
    class name or a 0-based index; relative paths are relative to the CSV's folder.
    Folder: ``<root>/<class>/<video>``, or ``<root>/<split>/<class>/<video>`` when every
    sub-folder is ``train``, ``val`` or ``test`` (then the split is that folder's name).
    ``classes_file`` fixes the class order (one name a line, or classInd.txt); a label that
    names another class is an error. Without it, classes are the sorted names found.
    """
    source = Path(source)
    fixed = read_class_names(classes_file) if classes_file else None
    if source.is_dir():
        items, found = _from_folders(source)
        where = str(source)
    elif source.is_file():
        rows = _headerless_csv(source)
        if rows is None:
            vl = from_csv(source)
            items, found = list(vl.items), list(vl.classes)
        else:
            items, found = _from_rows(source, rows)
        where = str(source)
    else:
        raise DatasetError(f"{source}: no such list file or folder")
    if fixed is None:
        return check_items(items, found, where, check_files)
    index = {c: i for i, c in enumerate(fixed)}
    remapped = []
    for it in items:
        name = it.class_name or (found[it.label] if 0 <= it.label < len(found) else "")
        if it.label < 0 and not name:
            remapped.append(it)
            continue
        if name not in index:
            raise DatasetError(f"{where}: video {it.video_id!r} has class {name!r}, which is not "
                               f"in {classes_file} ({len(fixed)} classes); add it there or fix "
                               "the label")
        remapped.append(VideoItem(it.video_id, it.path, index[name], name, it.split))
    return check_items(remapped, fixed, where, check_files)


def _from_rows(path: Path, rows: List[Tuple[int, List[str]]]):
    base = path.parent
    parsed = []
    for n, row in rows:
        cells = [c.strip() for c in row]
        if len(cells) not in (2, 3) or not cells[0] or not cells[1]:
            raise DatasetError(f"{path}:{n}: expected 'path,label[,split]', got {','.join(row)!r}")
        parsed.append((n, cells[0], cells[1], cells[2] if len(cells) == 3 else ""))
    try:
        labels = parse_labels([(n, lab) for n, _, lab, _ in parsed], str(path))
    except VideoListError as exc:
        raise DatasetError(str(exc)) from None
    if labels is None:
        classes = sorted({lab for _, _, lab, _ in parsed})
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[lab] for _, _, lab, _ in parsed]
    else:
        classes = [str(i) for i in range(max(labels) + 1)]
    items = []
    for (n, p, _, sp), label in zip(parsed, labels):
        full = p if os.path.isabs(p) else str(base / p)
        items.append(VideoItem(_vid(p, f"{path}:{n}"), full, label,
                               classes[label] if label >= 0 else "", sp))
    return items, classes


def _from_folders(root: Path):
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    split_dirs = {"train", "val", "test"}
    if subdirs and set(subdirs) <= split_dirs:
        items: List[VideoItem] = []
        per_split = {s: from_directory(root / s) for s in subdirs}
        classes = sorted({c for vl in per_split.values() for c in vl.classes})
        index = {c: i for i, c in enumerate(classes)}
        for s, vl in per_split.items():
            for it in vl.items:
                if not it.class_name:
                    raise DatasetError(f"{it.path}: directly in the {s!r} folder; put it in "
                                       f"{root / s}/<class>/")
                items.append(VideoItem(it.video_id, it.path, index[it.class_name],
                                       it.class_name, s))
        return items, classes
    vl = from_directory(root)
    loose = [it.path for it in vl.items if not it.class_name]
    if loose and vl.classes:
        raise DatasetError(f"{root}: {len(loose)} videos are not in a class folder "
                           f"({_listing(loose)}); move them into {root}/<class>/")
    return list(vl.items), list(vl.classes)


# -- entry points -------------------------------------------------------------------------
ADAPTERS = ("ucf101", "hmdb51", "generic")


def make_list(dataset: str, data, split: int = 1, splits_dir=None, videos_dir=None,
              classes_file=None, include_unused: bool = False,
              check_files: bool = True) -> VideoList:
    """Dispatch to an adapter by name (what ``tsn make-list`` calls)."""
    if dataset == "ucf101":
        return ucf101(data, split, splits_dir, videos_dir, check_files)
    if dataset == "hmdb51":
        return hmdb51(data, split, splits_dir, videos_dir, include_unused, check_files)
    if dataset == "generic":
        return generic(data, classes_file, check_files)
    raise DatasetError(f"unknown dataset adapter {dataset!r}; expected one of {ADAPTERS}")


def split_counts(videos: VideoList) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for it in videos.items:
        counts[it.split or "-"] = counts.get(it.split or "-", 0) + 1
    return dict(sorted(counts.items()))


def read_list_ids(path, split: Optional[str] = None) -> List[str]:
    """Video ids of a list file (our CSV, or an mmaction2/TSN list ``<dir> <n> <label>``);
    with ``split``, only that split's (our CSV's ``split`` column)."""
    path = Path(path)
    rows = _headerless_csv(path) if path.suffix.lower() == ".csv" else None
    if path.suffix.lower() == ".csv" and rows is None:
        videos = from_csv(path)
        chosen = videos.select(split).items
        if split is not None and not chosen:
            present = sorted({it.split for it in videos.items if it.split})
            raise DatasetError(f"{path}: no video of split {split!r} (splits in the list: "
                               f"{', '.join(present) or 'none'})")
        return sorted(it.video_id for it in chosen)
    if split is not None:
        raise DatasetError(f"{path}: this list has no split column, so --split cannot select")
    ids = []
    for n, line in _read_lines(path):
        first = line.split(",")[0] if path.suffix.lower() == ".csv" else line.split()[0]
        try:
            ids.append(check_video_id(os.path.basename(first.rstrip("/"))
                                      if "." not in os.path.basename(first)
                                      else video_id_from_path(first)))
        except ValueError as exc:
            raise DatasetError(f"{path}:{n}: {exc}") from exc
    return sorted(ids)
