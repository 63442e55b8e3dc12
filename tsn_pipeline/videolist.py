"""Video lists: which videos a run covers, with their ids, labels and splits.

Reads a folder of videos (class folders become labels) or a CSV list file and produces a
``VideoList``; every stage and every dataset adapter (``tsn_pipeline.datasets``) speaks it.

CSV columns: ``video_id,path[,label][,class_name][,split]``. ``video_id`` may be left out (the
file stem is used); relative paths are relative to the CSV's folder; ``label`` is either a
0-based integer (stored as given) or a class name (classes are then the sorted names), never
a mix. The file is UTF-8, with or without a byte order mark; an unknown column is an error.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .store import check_video_id

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv",
                    ".wmv", ".3gp", ".ogv", ".ts", ".mts")
CSV_COLUMNS = ("video_id", "path", "label", "class_name", "split")
MAX_CLASSES = 1_000_000      # a larger label is a typo, not a class index


class VideoListError(ValueError):
    """The list itself is unusable (unreadable file, bad column, unknown class)."""


@dataclass(frozen=True)
class VideoItem:
    video_id: str
    path: str
    label: int = -1            # 0-based class index, -1 when unknown
    class_name: str = ""
    split: str = ""            # free text: "train", "test", "val", or "" for none


@dataclass(frozen=True)
class VideoList:
    items: Tuple[VideoItem, ...]
    classes: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.items)

    def select(self, split: Optional[str]) -> "VideoList":
        if not split:
            return self
        return VideoList(tuple(i for i in self.items if i.split == split), self.classes)

    def duplicates(self) -> Dict[str, List[VideoItem]]:
        """Ids that occur more than once -> all their items, in list order."""
        seen: Dict[str, List[VideoItem]] = {}
        for item in self.items:
            seen.setdefault(item.video_id, []).append(item)
        return {k: v for k, v in seen.items() if len(v) > 1}


def video_id_from_path(path: str) -> str:
    """The file stem: ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi`` -> ``v_ApplyEyeMakeup_g08_c01``.

    This is the name dense_flow, mmaction2 and the TSN list files use for a video's folder.
    White space around the stem is dropped (`` a.avi`` -> ``a``): ids never start or end
    with it (they name folders and list entries).
    """
    name = os.path.basename(str(path))
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return check_video_id(stem.strip())


def from_directory(root, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> VideoList:
    """Every video below ``root`` (recursive). A file in ``root/<class>/...`` gets that class.

    Classes are the sorted names of the first-level folders holding videos; label i is
    ``classes[i]``. Files directly in ``root`` have no label (-1).
    """
    root = Path(root)
    if not root.is_dir():
        raise VideoListError(f"{root}: not a folder")
    exts = {e.lower() for e in extensions}
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and not p.is_dir())
    if not paths:
        raise VideoListError(f"{root}: no video files ({', '.join(sorted(exts))}) below this folder")
    rels = [p.relative_to(root) for p in paths]
    # control characters in a file name would make an unusable id: they become "_"
    classes = sorted({r.parts[0] for r in rels if len(r.parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for p, r in zip(paths, rels):
        cls = r.parts[0] if len(r.parts) > 1 else ""
        try:
            vid = video_id_from_path(re.sub(r"[\x00-\x1f\x7f]", "_", p.name))
        except ValueError as exc:
            raise VideoListError(f"{p}: {exc}") from exc
        items.append(VideoItem(vid, str(p), index.get(cls, -1), cls, ""))
    return VideoList(tuple(items), tuple(classes))


def read_csv_rows(path) -> List[Tuple[int, List[str]]]:
    """``(line number, cells)`` of the non-blank rows of a UTF-8 CSV, with or without the
    byte order mark spreadsheet programs write (raises OSError, UnicodeDecodeError, csv.Error)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        return [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]


def from_csv(path) -> VideoList:
    path = Path(path)
    try:
        # utf-8-sig: spreadsheet programs start the file with a byte order mark
        table = read_csv_rows(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VideoListError(f"{path}: cannot read list file ({exc})") from exc
    if len(table) < 2:
        raise VideoListError(f"{path}: list file has no rows (expected a header with at "
                             f"least 'path', then one video per line)")
    header = [c.strip().lower() for c in table[0][1]]
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown or "path" not in header:
        what = f"unknown columns {unknown}" if unknown else "no 'path' column"
        raise VideoListError(f"{path}: {what} in the header {table[0][1]}; the known columns "
                             f"are {', '.join(CSV_COLUMNS)} ('path' is required)")
    rows = [(line, dict(zip(header, (c.strip() for c in r)))) for line, r in table[1:]]
    base = path.parent
    labels = parse_labels([(line, r.get("label") or "") for line, r in rows], str(path))
    names = [r.get("class_name") or "" for _, r in rows]
    if labels is None:
        classes = sorted({r["label"] for _, r in rows if r.get("label")})
    else:
        classes = [""] * (max(labels + [-1]) + 1)
        for (line, _), lab, name in zip(rows, labels, names):
            if lab >= 0 and name:
                if classes[lab] and classes[lab] != name:
                    raise VideoListError(f"{path}:{line}: label {lab} is both "
                                         f"{classes[lab]!r} and {name!r}")
                classes[lab] = name
        classes = [c or str(i) for i, c in enumerate(classes)]
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for i, (line, row) in enumerate(rows):
        p = row.get("path") or ""
        if not p:
            raise VideoListError(f"{path}:{line}: empty path")
        full = Path(p) if os.path.isabs(p) else base / p
        try:
            vid = check_video_id(row.get("video_id") or video_id_from_path(p))
        except ValueError as exc:
            raise VideoListError(f"{path}:{line}: {exc}") from exc
        if labels is not None:
            label = labels[i]
            cls = names[i] or (classes[label] if label >= 0 else "")
        elif row.get("label"):
            label, cls = index[row["label"]], row["label"]
        else:
            label, cls = -1, names[i]
        items.append(VideoItem(vid, str(full), label, cls, row.get("split") or ""))
    return VideoList(tuple(items), tuple(classes))


_INT = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


def parse_labels(labels: Sequence[Tuple[int, str]], where: str) -> Optional[List[int]]:
    """Labels of a list's rows: ``(line, text)`` pairs, ``""`` for none.

    Integers (0-based class indices, -1 for unknown) give their values, as given: never
    renumbered. Class names give None (the caller numbers the sorted names). A mix of the
    two kinds, numbers that are not integers (``1.0``) and labels of ``MAX_CLASSES`` or more
    are errors naming the lines, since each would otherwise renumber labels silently.
    """
    given = [(line, t.strip()) for line, t in labels if t.strip()]
    ints = [(line, t) for line, t in given if _INT.fullmatch(t)]
    names = [(line, t) for line, t in given if not _INT.fullmatch(t)]
    floats = [(line, t) for line, t in names if _NUMBER.fullmatch(t)]
    if floats:
        raise VideoListError(f"{where}: labels at {_rows(floats)} are numbers but not integers; "
                             "give 0-based integer class indices or class names")
    if ints and names:
        few = ints if len(ints) < len(names) else names
        kind = ("a number" if few is ints else "a class name") if len(few) == 1 else (
            "numbers" if few is ints else "class names")
        hint = (" (if line 1 is a header, name its columns: " + ", ".join(CSV_COLUMNS) + ")"
                if few[0][0] == 1 else "")
        other = "class names" if few is ints else "numbers"
        raise VideoListError(f"{where}: labels mix class names and numbers: {_rows(few)} "
                             f"{'is' if len(few) == 1 else 'are'} {kind}, the other "
                             f"{len(given) - len(few)} labels are {other}; use one kind{hint}")
    if names:
        return None
    values = {line: int(t) for line, t in ints}
    bad = [(line, t) for line, t in ints if not -1 <= values[line] < MAX_CLASSES]
    if bad:
        raise VideoListError(f"{where}: labels at {_rows(bad)} outside -1..{MAX_CLASSES - 1} "
                             "(0-based class indices; -1 or empty for unknown)")
    return [values.get(line, -1) for line, _ in labels]


def _rows(pairs: Sequence[Tuple[int, str]], shown: int = 5) -> str:
    """``line 3 ('walk'), line 9 ('1.5') and 4 more``"""
    text = ", ".join(f"line {line} ({t!r})" for line, t in pairs[:shown])
    return text + (f" and {len(pairs) - shown} more" if len(pairs) > shown else "")


def load_video_list(source) -> VideoList:
    """A folder of videos or a CSV list file."""
    source = Path(source)
    if source.is_dir():
        return from_directory(source)
    if not source.exists():
        raise VideoListError(f"{source}: no such folder or list file")
    return from_csv(source)


def path_in_list(video_path, list_path) -> str:
    """How a list file at ``list_path`` stores ``video_path``: relative to the list's folder.

    The one path rule of list files: a relative path in a list is relative to the list's own
    folder (``from_csv`` reads it so), never to the current folder of whoever runs a stage.
    ``video_path`` itself may be relative to the current folder or absolute. Example: from
    the repository root, ``out/demo/data/videos/a.avi`` in ``out/demo/lists/split1.csv`` is
    stored as ``../data/videos/a.avi``. Folders are compared where they really are (links
    resolved), because the system resolves ``<list folder>/..`` through a linked list folder
    to the link's target, not to the folder that holds the link; the video's own file name is
    kept.
    """
    video = os.path.abspath(video_path)
    real_video = os.path.join(os.path.realpath(os.path.dirname(video)), os.path.basename(video))
    return os.path.relpath(real_video, os.path.realpath(Path(list_path).parent))


def write_video_list_csv(items: Iterable[VideoItem], path) -> None:
    """Write the CSV that ``tsn decode`` and the other stages read (atomically).

    Video paths are written relative to the CSV's folder (``path_in_list``), so the list
    works from any current folder and moves with the data it sits beside.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for it in items:
            writer.writerow([it.video_id, path_in_list(it.path, path), it.label, it.class_name,
                             it.split])
    os.replace(tmp, path)
