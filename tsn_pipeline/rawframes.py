"""Rawframes interop: dense_flow / denseflow / mmaction2 image folders <-> our HDF5 shards.

Import reads folders of ``img_00001.jpg``, ``flow_x_00001.jpg``, ``flow_y_00001.jpg`` (one
folder per video, named by its id; optionally inside class folders) and writes frame shards
(kind "frames", stream ``rgb``) and flow shards (kind "flow", streams ``<kind>_x`` /
``<kind>_y``, ``kind`` = "tvl1" or "warped"). The image bytes are copied, never decoded and
re-encoded: a shard holds exactly the files' bytes, so extracting flow again is not needed.
Export writes such folders back from shards, plus an mmaction2 / TSN list file
(``<video dir> <num images> <label>`` per line).

Index conventions. Shards are 0-based: frame t is ``rgb[t]``, flow field t is the motion from
frame t to t + step. Folders are numbered from ``start_index``: dense_flow and the TSN list
files count from 1, mmaction2's denseflow writes from 0 in some versions. On import the start
is detected per video (the smallest number present, which must be 0 or 1) unless given;
example with start 1: ``flow_x_00001.jpg`` -> field 0 (frames 0 -> 1), ``img_00001.jpg`` ->
frame 0. Numbers must be contiguous from the start; a gap fails that video and names the
missing file.

Counts: dense_flow writes N-1 flow images for N frames. The flow shard records
``num_flows`` = number of x images and ``num_frames`` = ``num_flows + step`` (the flow
layout's invariant); the frame shard records the number of ``img`` files.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import struct
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from . import batch, store

from .modalities import FLOW_KINDS


class RawframesError(ValueError):
    """A rawframes tree or a list cannot be used as asked (the message says why and what to do)."""


# -- image headers (size without decoding) --------------------------------------------------
def image_format(payload: bytes) -> str:
    """"jpeg" or "png" from the magic bytes; raises ValueError otherwise."""
    if payload[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if payload[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    raise ValueError(f"not a JPEG or PNG image (starts with {payload[:8]!r})")


def image_size(payload: bytes) -> Tuple[int, int, int]:
    """(width, height, channels) read from a JPEG SOF or PNG IHDR header.

    Reads headers only, so importing terabytes of rawframes does not decode them; ``verify``
    in ``ImportConfig`` decodes every image as well.
    """
    fmt = image_format(payload)
    if fmt == "png":
        if len(payload) < 26 or payload[12:16] != b"IHDR":
            raise ValueError("PNG without IHDR chunk")
        w, h = struct.unpack(">II", payload[16:24])
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(payload[25], 0)
        return int(w), int(h), channels
    from .videoio import VideoError, jpeg_header

    try:
        return jpeg_header(payload)
    except VideoError as exc:
        raise ValueError(str(exc)) from None


# -- folder scanning --------------------------------------------------------------------------
def _pattern(prefix: str) -> "re.Pattern[str]":
    return re.compile("^" + re.escape(prefix) + r"(\d+)(\.jpe?g|\.png)$", re.IGNORECASE)


def scan_stream(folder: Path, prefix: str, names: Optional[Sequence[str]] = None
                ) -> Dict[int, Path]:
    """Number -> file for the files ``<prefix><digits>.(jpg|jpeg|png)`` in ``folder``."""
    pat = _pattern(prefix)
    out: Dict[int, Path] = {}
    for name in (names if names is not None else os.listdir(folder)):
        m = pat.match(name)
        if m:
            k = int(m.group(1))
            if k in out:
                raise batch.VideoFailure(f"{folder}: two files numbered {k} for prefix {prefix!r} "
                                         f"({out[k].name}, {name})")
            out[k] = folder / name
    return out


def ordered_files(folder: Path, prefix: str, found: Dict[int, Path], start: int) -> List[Path]:
    """Files in frame order, checking the numbers run ``start, start+1, ...`` without gaps."""
    if not found:
        return []
    first, last = min(found), max(found)
    if first != start:
        raise batch.VideoFailure(f"{folder}: {prefix}* numbering starts at {first}, expected "
                                 f"{start} (set --start-index, or fix the folder)")
    if len(found) != last - start + 1:
        gap = next(k for k in range(start, last + 1) if k not in found)
        raise batch.VideoFailure(f"{folder}: {prefix}* numbering has a gap: number {gap} is "
                                 f"missing between {start} and {last}")
    return [found[k] for k in range(start, last + 1)]


def detect_start(folder: Path, streams: Dict[str, Dict[int, Path]],
                 start_index: Optional[int]) -> int:
    """The first file number: given, or the smallest present (must be 0 or 1, and agree)."""
    if start_index is not None:
        return int(start_index)
    firsts = {name: min(found) for name, found in streams.items() if found}
    if not firsts:
        raise batch.VideoFailure(f"{folder}: no images with the expected prefixes")
    values = set(firsts.values())
    if len(values) != 1 or values.pop() not in (0, 1):
        raise batch.VideoFailure(f"{folder}: cannot tell the start index: first numbers are "
                                 f"{firsts}; pass --start-index 0 or 1")
    return next(iter(firsts.values()))


def read_payloads(files: Sequence[Path], what: str, verify: bool
                  ) -> Tuple[List[bytes], Tuple[int, int], str]:
    """Bytes of ``files`` plus their common (width, height) and format; checks every header."""
    payloads: List[bytes] = []
    size = None
    fmt = None
    for p in files:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise batch.VideoFailure(f"{p}: cannot read ({exc.strerror or exc})") from exc
        try:
            this_fmt = image_format(data)
            w, h, _ = image_size(data)
        except (ValueError, struct.error) as exc:
            raise batch.VideoFailure(f"{p}: {exc}") from exc
        if size is None:
            size, fmt = (w, h), this_fmt
        elif (w, h) != size or this_fmt != fmt:
            raise batch.VideoFailure(f"{p}: {this_fmt} {w}x{h}, but the first {what} image is "
                                     f"{fmt} {size[0]}x{size[1]}; a stream must be uniform")
        if verify:
            try:
                store.decode_image(data, color=what == "rgb")
            except store.StoreError as exc:
                raise batch.VideoFailure(f"{p}: does not decode ({exc})") from exc
        payloads.append(data)
    return payloads, size, fmt


# -- import -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameImportConfig:
    """How the RGB frames of a rawframes tree are read into frame shards (stored in them)."""

    rgb_prefix: str = "img_"
    start_index: Optional[int] = None        # None: detect per video (0 or 1)
    fps: float = 0.0                         # recorded as the videos' fps (folders carry none)
    verify: bool = False                     # decode every image (slow), not only headers
    kind = "frames"                          # the shard kind this import writes

    def __post_init__(self):
        _check_import(self, ("rgb_prefix",))

    def stage_config(self) -> Dict:
        """What goes into the shard's root ``config``."""
        return dict(_common_config(self), rgb_prefix=self.rgb_prefix, fps=self.fps)


@dataclass(frozen=True)
class FlowImportConfig:
    """How the flow images of a rawframes tree (and optionally a warped-flow tree) are read
    into flow shards (stored in them: every field can change their content)."""

    flow_x_prefix: str = "flow_x_"
    flow_y_prefix: str = "flow_y_"
    flow_kind: str = "tvl1"                  # what the flow images in the main tree are
    warped_x_prefix: str = "flow_x_"         # prefixes in the --warped-src tree
    warped_y_prefix: str = "flow_y_"
    with_warped: bool = False                # also read warped flow from a second tree
    start_index: Optional[int] = None        # None: detect per video (0 or 1)
    bound: float = 20.0                      # quantisation bound the flow images were made with
    step: int = 1
    encoding: str = "jpeg"                   # flow image format expected: "jpeg" or "png"
    fps: float = 0.0                         # recorded as the videos' fps (folders carry none)
    verify: bool = False                     # decode every image (slow), not only headers
    kind = "flow"

    def __post_init__(self):
        _check_import(self, ("flow_x_prefix", "flow_y_prefix", "warped_x_prefix",
                             "warped_y_prefix"))
        if self.flow_kind not in FLOW_KINDS:
            raise ValueError(f"flow kind {self.flow_kind!r} not in {FLOW_KINDS}")
        if self.with_warped and self.flow_kind == "warped":
            raise ValueError("the main tree already holds warped flow; --warped-src adds warped "
                             "flow to tvl1 flow only")
        from .flow.quantize import check_bound

        object.__setattr__(self, "bound", check_bound(self.bound))
        if self.encoding not in ("jpeg", "png"):
            raise ValueError(f"flow encoding {self.encoding!r}: rawframes are 'jpeg' or 'png'")
        if self.step < 1:
            raise ValueError(f"step {self.step} must be >= 1")
        if self.flow_x_prefix == self.flow_y_prefix:
            raise ValueError("flow x and y prefixes must differ")

    @property
    def kinds(self) -> List[str]:
        return [self.flow_kind] + (["warped"] if self.with_warped else [])

    def stage_config(self) -> Dict:
        """What goes into the shard's root ``config``."""
        d = dict(_common_config(self), kinds=self.kinds, encoding=self.encoding,
                 bound=self.bound, step=self.step, backend="rawframes",
                 flow_x_prefix=self.flow_x_prefix, flow_y_prefix=self.flow_y_prefix)
        if self.with_warped:
            d.update(warped_x_prefix=self.warped_x_prefix, warped_y_prefix=self.warped_y_prefix)
        return d


ImportConfig = Union[FrameImportConfig, FlowImportConfig]


def _check_import(cfg, prefixes: Sequence[str]) -> None:
    if cfg.start_index is not None and cfg.start_index not in (0, 1):
        raise ValueError(f"start index {cfg.start_index} must be 0 or 1")
    for name in prefixes:
        if "/" in getattr(cfg, name):
            raise ValueError(f"{name} {getattr(cfg, name)!r} may not contain '/'")


def _common_config(cfg) -> Dict:
    return {"source": "rawframes", "verify": cfg.verify,
            "start_index": cfg.start_index if cfg.start_index is not None else "auto"}


@dataclass(frozen=True)
class RawItem:
    """One video folder to import: ``folder`` (and ``warped`` folder), label, class, split."""

    video_id: str
    folder: str
    warped: str = ""
    label: int = -1
    class_name: str = ""
    split: str = ""


def _read_flow_pair(folder: Path, xp: str, yp: str, start: Optional[int], verify: bool):
    names = os.listdir(folder)
    fx, fy = scan_stream(folder, xp, names), scan_stream(folder, yp, names)
    if not fx and not fy:
        raise batch.VideoFailure(f"{folder}: no flow images {xp}*/{yp}*")
    s = detect_start(folder, {"x": fx, "y": fy}, start)
    x_files, y_files = ordered_files(folder, xp, fx, s), ordered_files(folder, yp, fy, s)
    if len(x_files) != len(y_files):
        raise batch.VideoFailure(f"{folder}: {len(x_files)} {xp}* but {len(y_files)} {yp}* images")
    x, size, fmt = read_payloads(x_files, "flow", verify)
    y, size_y, fmt_y = read_payloads(y_files, "flow", verify)
    if (size, fmt) != (size_y, fmt_y):
        raise batch.VideoFailure(f"{folder}: x images are {fmt} {size}, y images {fmt_y} {size_y}")
    return x, y, size, fmt, s


def import_video(task: batch.Task, cfg: ImportConfig) -> store.VideoRecord:
    """Batch-runner entry point: one video folder -> a frame or flow shard record."""
    folder = Path(task.source)
    if not folder.is_dir():
        raise batch.VideoFailure(f"{folder}: no such folder")
    common = {"label": task.label, "class_name": task.meta.get("class_name", ""),
              "split": task.meta.get("split", ""), "source": os.path.abspath(folder),
              "fps": cfg.fps}
    if cfg.kind == "frames":
        found = scan_stream(folder, cfg.rgb_prefix)
        if not found:
            raise batch.VideoFailure(f"{folder}: no {cfg.rgb_prefix}* images")
        start = detect_start(folder, {"rgb": found}, cfg.start_index)
        payloads, (w, h), fmt = read_payloads(ordered_files(folder, cfg.rgb_prefix, found, start),
                                              "rgb", cfg.verify)
        return store.frame_video(task.video_id, payloads, width=w, height=h, orig_width=w,
                                 orig_height=h, start_index=start, image_format=fmt, **common)
    streams: Dict[str, List[bytes]] = {}
    x, y, size, fmt, start = _read_flow_pair(folder, cfg.flow_x_prefix, cfg.flow_y_prefix,
                                             cfg.start_index, cfg.verify)
    if fmt != cfg.encoding:
        raise batch.VideoFailure(f"{folder}: flow images are {fmt}, expected {cfg.encoding} "
                                 f"(set --encoding {fmt})")
    streams[f"{cfg.flow_kind}_x"], streams[f"{cfg.flow_kind}_y"] = x, y
    if cfg.with_warped:
        wfolder = Path(task.meta.get("warped", ""))
        if not wfolder.is_dir():
            raise batch.VideoFailure(f"{wfolder}: no warped flow folder for {task.video_id!r}")
        wx, wy, wsize, wfmt, _ = _read_flow_pair(wfolder, cfg.warped_x_prefix,
                                                 cfg.warped_y_prefix, cfg.start_index, cfg.verify)
        if len(wx) != len(x) or wsize != size or wfmt != fmt:
            raise batch.VideoFailure(f"{wfolder}: {len(wx)} warped fields {wfmt} {wsize}, but "
                                     f"{len(x)} {cfg.flow_kind} fields {fmt} {size} in {folder}")
        streams["warped_x"], streams["warped_y"] = wx, wy
    w, h = size
    return store.flow_video(task.video_id, num_frames=len(x) + cfg.step, step=cfg.step,
                            kinds=cfg.kinds, encoding=fmt, bound=cfg.bound, width=w, height=h,
                            streams=streams, start_index=start, **common)


def _is_video_dir(folder: Path, prefixes: Sequence[str]) -> bool:
    pats = [_pattern(p) for p in prefixes]
    try:
        return any(pat.match(n) for n in os.listdir(folder) for pat in pats)
    except OSError:
        return False


def find_video_dirs(root, prefixes: Sequence[str]) -> List[RawItem]:
    """Video folders under ``root``: ``root/<id>/`` or ``root/<class>/<id>/`` (mmaction2).

    With class folders, labels are the sorted class names' indices.
    """
    root = Path(root)
    if not root.is_dir():
        raise RawframesError(f"{root}: no such folder")
    flat, nested = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if _is_video_dir(d, prefixes):
            flat.append(d)
        else:
            nested.extend(sorted(q for q in d.iterdir() if q.is_dir() and _is_video_dir(q, prefixes)))
    if flat and nested:
        raise RawframesError(f"{root}: mixes video folders ({flat[0].name}) and class folders "
                             f"({nested[0].parent.name}/{nested[0].name}); give a --list")
    if nested:
        classes = sorted({q.parent.name for q in nested})
        index = {c: i for i, c in enumerate(classes)}
        return [RawItem(q.name, str(q), "", index[q.parent.name], q.parent.name) for q in nested]
    if not flat:
        raise RawframesError(f"{root}: no video folders with images named {list(prefixes)}<n>.jpg "
                             "here or one level down")
    return [RawItem(d.name, str(d)) for d in flat]


_LIST_LINE = re.compile(r"(.+?)\s+(-?\d+)(?:\s+(-?\d+))?")     # dir, count[, label]


def items_from_list(root, list_file) -> Tuple[List[RawItem], List[str]]:
    """Items named by a list: our CSV (ids, labels, classes, splits) or an mmaction2/TSN list
    ``<video dir> <num frames> <label>`` (dir relative to ``root``). Returns (items, classes)."""
    root, list_file = Path(root), Path(list_file)
    if list_file.suffix.lower() == ".csv":
        from .videolist import load_video_list

        vl = load_video_list(list_file)
        items = []
        for it in vl.items:
            folder = root / it.video_id
            if not folder.is_dir() and it.class_name:
                folder = root / it.class_name / it.video_id
            items.append(RawItem(it.video_id, str(folder), "", it.label, it.class_name, it.split))
        return items, list(vl.classes)
    items, labels = [], []
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RawframesError(f"{list_file}: cannot read ({exc})") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        # the folder is everything before the numbers: ids may hold spaces ("my clip 3 10 2")
        match = _LIST_LINE.fullmatch(line.strip())
        if match is None:
            raise RawframesError(f"{list_file}:{n}: expected '<video dir> <num frames> <label>', "
                                 f"got {line!r}")
        rel = match.group(1).rstrip("/")
        folder = Path(rel) if os.path.isabs(rel) else root / rel
        try:
            vid = store.check_video_id(os.path.basename(rel))
        except ValueError as exc:
            raise RawframesError(f"{list_file}:{n}: {exc}") from exc
        parent = os.path.basename(os.path.dirname(rel))
        items.append(RawItem(vid, str(folder), "", -1, parent))
        labels.append((n, match.group(3) or ""))
    from .videolist import VideoListError, parse_labels

    try:        # integers within -1..MAX_CLASSES - 1 (the regex admits only integers)
        values = parse_labels(labels, str(list_file))
    except VideoListError as exc:
        raise RawframesError(str(exc)) from None
    items = [replace(it, label=v) for it, v in zip(items, values)]
    top = max([it.label for it in items] or [-1])
    classes = [str(i) for i in range(top + 1)]
    names: Dict[int, set] = {}
    for it in items:
        if it.label >= 0 and it.class_name:
            names.setdefault(it.label, set()).add(it.class_name)
    for label, found in names.items():     # class folders name the labels when consistent
        if len(found) == 1:
            classes[label] = found.pop()
    return items, classes


def plan_import(items: Sequence[RawItem], shard_index: int, num_shards: int,
                src_root=None, warped_root=None):
    """Tasks of one shard (same assignment as ``tsn decode``) plus duplicate-id failures.

    A video's warped folder is at the same place under ``warped_root`` as its folder under
    ``src_root`` (``<class>/<id>`` or ``<id>``), else ``warped_root/<id>``.
    """
    def to_task(it: RawItem) -> batch.Task:
        meta = {"class_name": it.class_name, "split": it.split}
        if warped_root is not None:
            wroot = Path(warped_root)
            try:
                same = wroot / Path(it.folder).relative_to(Path(src_root)) if src_root else None
            except ValueError:
                same = None
            meta["warped"] = str(same if same is not None and same.is_dir()
                                 else wroot / it.video_id)
        return batch.Task(it.video_id, it.folder, it.label, meta)

    return batch.plan_shard(items, shard_index, num_shards, to_task)


def run_import(items: Sequence[RawItem], classes: Sequence[str], out_dir, cfg: ImportConfig,
               shard_index: int = 0, num_shards: int = 1, src_root=None, warped_root=None,
               workers: int = 1,
               overwrite: bool = False, retry_failed: bool = False,
               progress: bool = True) -> batch.Summary:
    with_warped = isinstance(cfg, FlowImportConfig) and cfg.with_warped
    tasks, failures = plan_import(items, shard_index, num_shards, src_root,
                                  warped_root if with_warped else None)
    return batch.run_stage(
        kind=cfg.kind, out_dir=out_dir, shard_index=shard_index, num_shards=num_shards,
        config=cfg.stage_config(), tasks=tasks, process=functools.partial(import_video, cfg=cfg),
        workers=workers, overwrite=overwrite, retry_failed=retry_failed, progress=progress,
        root_extra={"classes": list(classes)}, initial_failures=failures)


# -- export -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportConfig:
    """How shards are written out as folders."""

    start_index: int = 1                     # dense_flow / TSN lists: 1; mmaction2 denseflow: 0
    digits: int = 5
    rgb_prefix: str = "img_"
    flow_x_prefix: str = "flow_x_"
    flow_y_prefix: str = "flow_y_"
    flow_kind: str = "tvl1"
    by_class: bool = False                   # <out>/<class>/<id>/ (mmaction2's UCF101 layout)
    overwrite: bool = False

    def __post_init__(self):
        if self.start_index not in (0, 1):
            raise ValueError(f"start index {self.start_index} must be 0 or 1")
        if not 1 <= self.digits <= 12:
            raise ValueError(f"digits {self.digits} outside 1..12")
        if self.flow_kind not in FLOW_KINDS:
            raise ValueError(f"flow kind {self.flow_kind!r} not in {FLOW_KINDS}")
        if self.flow_x_prefix == self.flow_y_prefix:
            raise ValueError("flow x and y prefixes must differ")

    def name(self, prefix: str, t: int, payload: bytes) -> str:
        """File name of item ``t`` (0-based): ``img_00001.jpg`` for t=0 with start 1."""
        ext = ".png" if image_format(payload) == "png" else ".jpg"
        return f"{prefix}{t + self.start_index:0{self.digits}d}{ext}"


@dataclass
class ExportSummary:
    out: str
    shard_index: int = 0
    num_shards: int = 1
    stage: str = "export"
    videos: int = 0
    written: int = 0
    skipped: int = 0                          # folders already complete
    files: int = 0
    list_file: Optional[str] = None
    failures: List[Dict[str, str]] = field(default_factory=list)
    failures_file: Optional[str] = None       # export's failures are in this summary only

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_json(self):
        return asdict(self)


def shard_list_path(list_file, shard_index: int, num_shards: int) -> Path:
    """The list file of one shard: ``list.txt`` itself for one shard, else
    ``list-<i>-of-<n>.txt`` (array tasks never write the same file)."""
    path = Path(list_file)
    if num_shards == 1:
        return path
    return path.with_name(f"{path.stem}-{shard_index}-of-{num_shards}{path.suffix}")


def _video_dir(out: Path, vid: str, entry, cfg: ExportConfig) -> Path:
    cls = str(entry.attrs.get("class_name") or "") if cfg.by_class else ""
    return out / cls / vid if cls else out / vid


def export_video(frames, flow, vid: str, out: Path, cfg: ExportConfig) -> Tuple[str, int, int]:
    """Write one video's folder atomically (``.<id>.tmp`` renamed). Returns (status, files, count).

    ``count`` is the list file's frame count: images of ``img`` if frames are exported, else
    the number of flow fields.
    """
    entry = (frames or flow)[vid]
    final = _video_dir(out, vid, entry, cfg)
    count = frames[vid].length if frames is not None else flow[vid].length
    if final.is_dir() and not cfg.overwrite:        # renamed into place only when complete
        return "skipped", 0, count
    for shards in (frames, flow):        # never write out damaged bytes
        if shards is not None:
            shards.check_video(vid)
    if final.exists():
        shutil.rmtree(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = 0
    if frames is not None:
        payloads = frames.read_encoded(vid, "rgb", range(frames[vid].length))
        for t, p in enumerate(payloads):
            (tmp / cfg.name(cfg.rgb_prefix, t, p)).write_bytes(p)
        files += len(payloads)
    if flow is not None:
        kind = cfg.flow_kind
        group_names = flow[vid].attrs.get("kinds") or []
        if kind not in group_names:
            raise RawframesError(f"video {vid!r} has no {kind!r} flow (has {group_names})")
        enc = flow[vid].attrs.get("encoding") or flow.config().get("encoding")
        if enc == "float16":
            raise RawframesError(f"video {vid!r}: flow stored as float16 arrays; rawframes are "
                                 "8-bit images: re-run `tsn flow` with a jpeg/png encoding")
        n = flow[vid].length
        for stream, prefix in ((f"{kind}_x", cfg.flow_x_prefix), (f"{kind}_y", cfg.flow_y_prefix)):
            payloads = flow.read_encoded(vid, stream, range(n))
            for t, p in enumerate(payloads):
                (tmp / cfg.name(prefix, t, p)).write_bytes(p)
            files += len(payloads)
    os.replace(tmp, final)
    return "written", files, count


def export_shards(frames_dir=None, flow_dir=None, out_dir=None, cfg: ExportConfig = ExportConfig(),
                  shard_index: int = 0, num_shards: int = 1, list_file=None,
                  progress: bool = False) -> ExportSummary:
    """Export the videos of shard ``shard_index`` of ``num_shards`` (``batch.assign_shard``,
    as every stage) from frame and/or flow shards to ``out_dir``; write the shard's list file
    (``shard_list_path(list_file, ...)``) if ``list_file`` is given."""
    if frames_dir is None and flow_dir is None:
        raise RawframesError("nothing to export: give frame shards and/or flow shards")
    frames = store.open_shards(frames_dir, "frames") if frames_dir else None
    flow = store.open_shards(flow_dir, "flow") if flow_dir else None
    if frames is not None and flow is not None:
        only = sorted(set(frames.ids) ^ set(flow.ids))
        if only:
            raise RawframesError(f"frame and flow shards hold different videos (e.g. {only[:3]}); "
                                 "export them separately or from matching shards")
    ids = (frames or flow).ids
    mine = batch.assign_shard(ids, shard_index, num_shards)
    out = Path(out_dir)
    summary = ExportSummary(out=str(out), shard_index=shard_index, num_shards=num_shards,
                            videos=len(mine))
    lines = []
    bar = batch.progress_bar(len(mine), 0, "export-rawframes", progress)
    try:
        for vid in mine:
            bar.update(1)
            try:
                status, files, count = export_video(frames, flow, vid, out, cfg)
            except (RawframesError, store.StoreError) as exc:
                summary.failures.append({"video_id": vid, "reason": str(exc)})
                continue
            except OSError as exc:
                raise RawframesError(f"cannot write to {out}: {exc.strerror or exc}") from exc
            summary.files += files
            summary.written += status == "written"
            summary.skipped += status == "skipped"
            entry = (frames or flow)[vid]
            lines.append(f"{_video_dir(Path(''), vid, entry, cfg).as_posix()} {count} {entry.label}")
    finally:
        bar.render_finish()
        for shards in (frames, flow):
            if shards is not None:
                shards.close()
    if list_file:
        path = shard_list_path(list_file, shard_index, num_shards)
        batch.atomic_write_text(path, "".join(ln + "\n" for ln in lines))
        summary.list_file = str(path)
    return summary
