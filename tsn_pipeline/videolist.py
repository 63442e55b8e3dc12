"""Video lists: which videos a run covers, with their ids, labels and splits.

Reads a folder of videos (class folders become labels) or a CSV list file and produces a
``VideoList``; every stage and every dataset adapter (``tsn_pipeline.datasets``) speaks it.

CSV columns: ``video_id,path[,label][,class_name][,split]``. ``video_id`` may be left out (the
file stem is used); relative paths are relative to the CSV's folder; ``label`` is either a
0-based integer or a class name.
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
    """
    name = os.path.basename(str(path))
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return check_video_id(stem)


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


def from_csv(path) -> VideoList:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VideoListError(f"{path}: cannot read list file ({exc})") from exc
    if not rows:
        raise VideoListError(f"{path}: list file has no rows (expected a header with at "
                             f"least 'path', then one video per line)")
    if "path" not in rows[0]:
        raise VideoListError(f"{path}: no 'path' column (columns: {list(rows[0])}); "
                             f"expected {', '.join(CSV_COLUMNS)}")
    base = path.parent
    raw_labels = [(r.get("label") or "").strip() for r in rows]
    names = [(r.get("class_name") or "").strip() for r in rows]
    numeric = all(_is_int(x) for x in raw_labels if x)
    if numeric:
        top = max([int(x) for x in raw_labels if x] or [-1])
        classes = [""] * (top + 1)
        for lab, name in zip(raw_labels, names):
            if lab and name:
                if classes[int(lab)] and classes[int(lab)] != name:
                    raise VideoListError(f"{path}: label {lab} is both {classes[int(lab)]!r} "
                                         f"and {name!r}")
                classes[int(lab)] = name
        classes = [c or str(i) for i, c in enumerate(classes)]
    else:
        classes = sorted({x for x in raw_labels if x})
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for line, row in enumerate(rows, start=2):
        p = (row.get("path") or "").strip()
        if not p:
            raise VideoListError(f"{path}:{line}: empty path")
        full = Path(p) if os.path.isabs(p) else base / p
        try:
            vid = check_video_id((row.get("video_id") or "").strip() or video_id_from_path(p))
        except ValueError as exc:
            raise VideoListError(f"{path}:{line}: {exc}") from exc
        lab = raw_labels[line - 2]
        if not lab:
            label, cls = -1, names[line - 2]
        elif numeric:
            label = int(lab)
            if label < -1:
                raise VideoListError(f"{path}:{line}: label {label} is negative")
            cls = names[line - 2] or (classes[label] if label >= 0 else "")
        else:
            label, cls = index[lab], lab
        items.append(VideoItem(vid, str(full), label, cls, (row.get("split") or "").strip()))
    return VideoList(tuple(items), tuple(classes))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


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
    stored as ``../data/videos/a.avi``.
    """
    return os.path.relpath(os.path.abspath(video_path), os.path.abspath(Path(list_path).parent))


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
