"""HDF5 shard format: record writer, lazy fork-safe reader, index and verification.

Every stage writes shards in this format (see docs/SCHEMA.md for the full layout):

    /                      attrs: schema_version, package_version, kind, config (JSON),
                                  shard_index, num_shards, num_videos, failed (JSON list),
                                  crc32 (root checksum: attrs, assigned ids, video list)
    /assigned_ids          UTF-8 strings: the sorted ids assigned to this shard
    /videos/<video_id>     attrs: per-video metadata (num_frames, fps, label, ...), crc32
        <stream>           uint8 (total_bytes,)  JPEG/PNG payloads concatenated
        <stream>_offsets   int64 (n + 1,)        payload i is <stream>[off[i]:off[i+1]]
        <array>            any dtype             raw arrays (float16 flow, scores, features)

A shard is written as ``name.h5.tmp`` and renamed when complete (see ``batch``), so a
``*.h5`` file is always whole. Readers open each file lazily, once per process, and never
pickle an open handle, so a ``ShardSet`` can be handed to DataLoader workers.
"""
from __future__ import annotations

import json
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import __version__

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
VIDEOS = "videos"
ASSIGNED = "assigned_ids"
CHECKSUM = "crc32"
OFFSETS_SUFFIX = "_offsets"
KINDS = ("frames", "flow", "scores", "features")
_MAX_ID_BYTES = 200
_BAD_ID_CHARS = re.compile(r"[/\x00-\x1f\x7f]")


class StoreError(Exception):
    """A shard is missing, of the wrong kind or schema, or holds inconsistent data."""


def check_video_id(video_id: str) -> str:
    """Return ``video_id`` if it is safe as an HDF5 name and a file name, else raise ValueError.

    Ids come from file names or list files; an id must not be able to address anything
    outside ``/videos`` (no ``/``, not ``.`` or ``..``) nor carry control characters.
    """
    if not isinstance(video_id, str) or not video_id:
        raise ValueError(f"video id {video_id!r} is empty or not a string")
    if video_id in (".", "..") or _BAD_ID_CHARS.search(video_id):
        raise ValueError(
            f"video id {video_id!r} is not allowed: ids may not be '.' or '..' nor contain "
            "'/' or control characters")
    if video_id != video_id.strip():
        raise ValueError(f"video id {video_id!r} has leading or trailing white space")
    if len(video_id.encode("utf-8")) > _MAX_ID_BYTES:
        raise ValueError(f"video id {video_id[:40]!r}... is longer than {_MAX_ID_BYTES} bytes")
    return video_id


@dataclass
class VideoRecord:
    """What a stage stores for one video.

    ``streams``: name -> list of encoded images (JPEG or PNG bytes), one per frame/field.
    ``arrays``: name -> numpy array stored as is. ``attrs``: JSON-able scalars/strings/lists.
    """

    video_id: str
    attrs: Dict[str, Any] = field(default_factory=dict)
    streams: Dict[str, List[bytes]] = field(default_factory=dict)
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        check_video_id(self.video_id)
        clash = set(self.streams) & set(self.arrays)
        if clash:
            raise ValueError(f"names used both as stream and array: {sorted(clash)}")


def frame_video(video_id: str, frames: List[bytes], *, width: int, height: int,
                label: int = -1, class_name: str = "", split: str = "",
                fps: Optional[float] = None, **extra: Any) -> VideoRecord:
    """The record of a frame-shard video (decode, rawframes import, tests): encoded frames as
    stream ``rgb`` and the attributes every reader relies on; ``extra`` adds stage facts
    (source, codec, decode_errors, ...)."""
    attrs = {"num_frames": len(frames), "width": int(width), "height": int(height),
             "label": int(label), "class_name": class_name, "split": split, **extra}
    if fps is not None:
        attrs["fps"] = float(fps)
    return VideoRecord(video_id, attrs=attrs, streams={"rgb": list(frames)})


def flow_video(video_id: str, *, num_frames: int, step: int, kinds: Sequence[str],
               encoding: str, bound: float, width: int, height: int,
               streams: Optional[Dict[str, List[bytes]]] = None,
               arrays: Optional[Dict[str, np.ndarray]] = None, label: int = -1,
               class_name: str = "", split: str = "", **extra: Any) -> VideoRecord:
    """The record of a flow-shard video (flow stage, rawframes import, tests):
    ``<kind>_x``/``<kind>_y`` streams of quantised images, or float16 ``<kind>`` arrays, with
    ``num_flows = num_frames - step`` fields; ``extra`` adds stage facts (fps, backend, ...)."""
    attrs = {"num_frames": int(num_frames), "num_flows": int(num_frames) - int(step),
             "step": int(step), "width": int(width), "height": int(height),
             "kinds": list(kinds), "encoding": encoding, "bound": float(bound),
             "label": int(label), "class_name": class_name, "split": split, **extra}
    return VideoRecord(video_id, attrs=attrs, streams=dict(streams or {}),
                       arrays=dict(arrays or {}))


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> List[str]:
    """``["size: [340, 256] -> [64, 48]", ...]``: the keys whose values differ."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _attr_value(value: Any) -> Any:
    """Map a Python value onto something h5py stores faithfully (lists/dicts as JSON)."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return "null"
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _read_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, str) and (value[:1] in ("[", "{") or value == "null"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _as_dict(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {} if value is None else {"value": value}


def read_attrs(obj) -> Dict[str, Any]:
    """All attributes of an h5py object, JSON strings decoded."""
    return {k: _read_attr(v) for k, v in obj.attrs.items()}


def _pack(payloads: Sequence[bytes]):
    offsets = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in payloads], out=offsets[1:])
    buf = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    return buf, offsets


def _canonical(attrs: Mapping[str, Any]) -> bytes:
    """Attributes as readers see them (``read_attrs``), serialised one way: sorted JSON."""
    return json.dumps(attrs, sort_keys=True, ensure_ascii=False, default=repr).encode("utf-8")


def _checksum(video_id: str, attrs: Mapping[str, Any], datasets: Mapping[str, np.ndarray],
              dataset_attrs: Mapping[str, Mapping[str, Any]]) -> str:
    """CRC-32 over a video's id, its attributes (but ``crc32``) and every dataset: name,
    dtype, shape, bytes and the dataset's own attributes."""
    crc = zlib.crc32(video_id.encode("utf-8"))
    crc = zlib.crc32(_canonical({k: v for k, v in attrs.items() if k != CHECKSUM}), crc)
    for name in sorted(datasets):
        arr = np.ascontiguousarray(datasets[name])
        crc = zlib.crc32(name.encode("utf-8"), crc)
        crc = zlib.crc32(arr.dtype.str.encode() + repr(arr.shape).encode(), crc)
        crc = zlib.crc32(memoryview(arr).cast("B"), crc)
        crc = zlib.crc32(_canonical(dataset_attrs.get(name, {})), crc)
    return f"{crc:08x}"


def record_datasets(record: VideoRecord) -> Dict[str, np.ndarray]:
    """The datasets a record becomes in its group, by name."""
    out: Dict[str, np.ndarray] = {}
    for name, payloads in record.streams.items():
        buf, offsets = _pack(payloads)
        out[name] = buf
        out[name + OFFSETS_SUFFIX] = offsets
    for name, arr in record.arrays.items():
        out[name] = np.asarray(arr)
    return out


def write_record(parent, record: VideoRecord) -> None:
    """Write ``record`` as group ``parent[record.video_id]`` (the group must not exist)."""
    group = parent.create_group(record.video_id)
    datasets = record_datasets(record)
    for name in sorted(datasets):
        group.create_dataset(name, data=datasets[name], track_times=False)
    for name in record.streams:
        group[name].attrs["count"] = len(record.streams[name])
    for key in sorted(record.attrs):
        group.attrs[key] = _attr_value(record.attrs[key])
    # the attributes as they read back, so the checksum covers exactly what readers get
    group.attrs[CHECKSUM] = _checksum(record.video_id, read_attrs(group), datasets,
                                      {name: read_attrs(group[name]) for name in datasets})


def read_record(group) -> VideoRecord:
    """Inverse of ``write_record``: load a whole video group into memory."""
    attrs = read_attrs(group)
    attrs.pop(CHECKSUM, None)
    streams, arrays = {}, {}
    names = set(group.keys())
    for name in sorted(names):
        if name.endswith(OFFSETS_SUFFIX) and name[: -len(OFFSETS_SUFFIX)] in names:
            continue
        if name + OFFSETS_SUFFIX in names:
            buf = group[name][()]
            off = group[name + OFFSETS_SUFFIX][()]
            streams[name] = [buf[off[i]:off[i + 1]].tobytes() for i in range(len(off) - 1)]
        else:
            arrays[name] = group[name][()]
    return VideoRecord(video_id=group.name.rsplit("/", 1)[-1], attrs=attrs,
                       streams=streams, arrays=arrays)


def verify_group(group) -> Optional[str]:
    """None when the group (id, attributes, datasets) matches its stored checksum, else why."""
    try:
        video_id = group.name.rsplit("/", 1)[-1]
        attrs = read_attrs(group)
        datasets = {name: group[name][()] for name in group.keys()}
        dataset_attrs = {name: read_attrs(group[name]) for name in datasets}
        stored = attrs.get(CHECKSUM)
        if stored is None:
            return "no crc32 attribute"
        actual = _checksum(video_id, attrs, datasets, dataset_attrs)
    except Exception as exc:  # h5py raises OSError/KeyError/RuntimeError/... on damaged files
        return f"cannot read the video group: {type(exc).__name__}: {exc}"
    if actual != str(stored):
        return f"checksum mismatch (stored {stored}, computed {actual})"
    for name in datasets:
        if name.endswith(OFFSETS_SUFFIX):
            base = name[: -len(OFFSETS_SUFFIX)]
            off = datasets[name]
            if base in datasets and (len(off) == 0 or off[0] != 0 or off[-1] != len(datasets[base])
                                     or np.any(np.diff(off) < 0)):
                return f"offsets of {base!r} do not cover its buffer"
    return None


def read_assigned(f) -> List[str]:
    """The ids a shard was assigned (stored and failed), sorted; [] if it records none."""
    if ASSIGNED not in f:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in f[ASSIGNED][()]]


def root_checksum(f) -> str:
    """CRC-32 over a shard's root attributes (but ``crc32``), its assigned ids, the names
    of its root objects and its video list (the names under ``/videos``)."""
    crc = zlib.crc32(_canonical({k: v for k, v in read_attrs(f).items() if k != CHECKSUM}))
    crc = zlib.crc32("\n".join(sorted(f.keys())).encode("utf-8"), crc)
    crc = zlib.crc32("\n".join(read_assigned(f)).encode("utf-8"), crc)
    crc = zlib.crc32("\n".join(sorted(f[VIDEOS].keys())).encode("utf-8"), crc)
    return f"{crc:08x}"


def write_root(f, kind: str, config: Mapping[str, Any], shard_index: int, num_shards: int,
               assigned: Sequence[str], extra: Optional[Mapping[str, Any]] = None) -> None:
    """Write a shard's root: attributes, assigned ids and, last, the root checksum
    (``/videos`` must be complete)."""
    import h5py

    f.create_dataset(ASSIGNED, data=np.array(sorted(assigned), dtype=h5py.string_dtype()),
                     track_times=False)
    for key, value in root_attrs(kind, config, shard_index, num_shards, extra).items():
        f.attrs[key] = value
    f.attrs[CHECKSUM] = root_checksum(f)


def root_attrs(kind: str, config: Mapping[str, Any], shard_index: int, num_shards: int,
               extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"unknown shard kind {kind!r}; expected one of {KINDS}")
    attrs = {
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "kind": kind,
        "config": json.dumps(dict(config), sort_keys=True),
        "shard_index": int(shard_index),
        "num_shards": int(num_shards),
    }
    attrs.update({k: _attr_value(v) for k, v in (extra or {}).items()})
    return attrs


def shard_name(kind: str, index: int, count: int) -> str:
    """``frames-0-of-4.h5``: the file name of shard ``index`` of ``count``."""
    return f"{kind}-{index}-of-{count}.h5"


_SHARD_RE = re.compile(r"^(?P<kind>[a-z]+)-(?P<i>\d+)-of-(?P<n>\d+)\.h5$")


def parse_shard_name(name: str):
    m = _SHARD_RE.match(name)
    if not m:
        return None
    return m.group("kind"), int(m.group("i")), int(m.group("n"))


def expand_shard_paths(paths: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]],
                       kind: Optional[str] = None) -> List[Path]:
    """Files and folders -> sorted shard files. A folder contributes ``<kind>-*-of-*.h5``.

    ``.tmp`` files are never returned: an unfinished shard is not a result.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: List[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if parse_shard_name(q.name)
                           and (kind is None or parse_shard_name(q.name)[0] == kind))
            if not found:
                raise StoreError(f"{p}: no {kind or 'shard'} files (*-<i>-of-<n>.h5) in this folder")
            out.extend(found)
        elif p.suffix == ".tmp" or p.name.endswith(".h5.tmp"):
            raise StoreError(f"{p}: unfinished shard (.tmp); rerun the stage to complete it")
        elif not p.exists():
            raise StoreError(f"{p}: no such shard file")
        else:
            out.append(p)
    return out


@dataclass(frozen=True)
class VideoEntry:
    """One video of a shard set, as the index knows it (no payload loaded)."""

    video_id: str
    shard: str          # path of the shard file
    length: int         # num_frames for frame shards, num_flows for flow shards, rows otherwise
    label: int
    attrs: Mapping[str, Any]


_ITEM_KEYS = {"frames": "num_frames", "flow": "num_flows", "scores": "num_snippets",
              "features": "num_snippets"}


def item_count(kind: str, attrs: Mapping[str, Any]) -> int:
    """A video's length in its shard's own unit: frames, flow fields or snippets.

    Flow groups also carry ``num_frames`` (N frames give N - step fields), so the key is
    chosen by the shard's kind first.
    """
    keys = [_ITEM_KEYS.get(kind, "num_frames"), "num_flows", "num_snippets", "num_frames"]
    for key in keys:
        if key in attrs:
            return int(attrs[key])
    return 0


class ShardSet:
    """Index over one or more shards of the same kind; payloads are read on demand.

    >>> shards = open_shards("out/frames")           # doctest: +SKIP
    >>> shards.ids[:2], shards["v_x_g01_c01"].length  # doctest: +SKIP
    >>> frames = shards.read_frames("v_x_g01_c01", [0, 5, 9])  # (3, H, W, 3) uint8 RGB

    The index is built once in the constructor, with where every stream's payloads lie in
    its file (``_locate_streams``), so a read is one ``os.pread`` per run of consecutive
    items and no HDF5 lookup. Files are opened lazily on first payload access, once per
    process (the pid is checked), so the object may be pickled into DataLoader workers or
    joblib processes.
    """

    def __init__(self, paths, kind: Optional[str] = None):
        self.paths = [str(p) for p in expand_shard_paths(paths, kind)]
        self.kind = kind
        self.root: Dict[str, Dict[str, Any]] = {}
        self._entries: Dict[str, VideoEntry] = {}
        self._handles: Dict[str, Any] = {}
        self._streams: Dict[Any, Any] = {}
        self._fds: Dict[str, int] = {}
        self._located: Dict[Any, Any] = {}     # (video_id, stream) -> (path, file offset, offsets)
        self._file_ids: Dict[str, Any] = {}    # path -> (dev, inode, size, mtime) at open
        self._pid = os.getpid()
        self._build_index()

    def _build_index(self):
        import h5py

        kinds = set()
        for path in self.paths:
            try:
                with h5py.File(path, "r") as f:
                    attrs = read_attrs(f)
                    self._check_root(path, attrs)
                    self._check_consistent(path, attrs)
                    kinds.add(attrs["kind"])
                    self.root[path] = attrs
                    self._file_ids[path] = _file_id(os.stat(path))
                    for vid, group in f[VIDEOS].items():
                        vattrs = read_attrs(group)
                        if vid in self._entries:
                            raise StoreError(
                                f"video {vid!r} is in two shards: {self._entries[vid].shard} "
                                f"and {path}")
                        self._entries[vid] = VideoEntry(
                            vid, path, item_count(attrs["kind"], vattrs),
                            int(vattrs.get("label", -1)), vattrs)
                        self._locate_streams(path, vid, group)
            except OSError as exc:
                raise StoreError(f"{path}: cannot open as HDF5 ({exc})") from exc
        if self.kind is None and kinds:
            self.kind = kinds.pop()

    def _check_consistent(self, path: str, b: Mapping[str, Any]):
        """All shards of a set must agree on what changes their content: kind, schema and
        stage config (size, encoding, flow kinds, bound, ...; for flow shards also the config
        of the frames they came from); the shards of one folder also on their count."""
        if not self.root:
            return
        first, a = next(iter(self.root.items()))
        diff = [f"kind: {a.get('kind')!r} -> {b.get('kind')!r}"] if a.get("kind") != b.get("kind") else []
        for key in ("config", "frames_config"):
            diff += [f"{key} {d}" for d in config_diff(_as_dict(a.get(key)), _as_dict(b.get(key)))]
        same_folder = [p for p in self.root if Path(p).parent == Path(path).parent]
        for other in same_folder[:1]:
            n, m = self.root[other].get("num_shards"), b.get("num_shards")
            if n != m:
                first = other
                diff.append(f"num_shards: {n!r} -> {m!r}")
        if diff:
            raise StoreError(
                f"shards {first} and {path} were made with different settings "
                f"({'; '.join(diff[:6])}); one set must share them: re-create the odd "
                "shards with the same settings (--overwrite) or read them separately")

    def missing_shards(self) -> List[int]:
        """Indices ``i`` of ``<kind>-<i>-of-<n>`` that the set lacks (by the shards' ``n``)."""
        have: Dict[int, set] = {}
        for attrs in self.root.values():
            have.setdefault(int(attrs.get("num_shards", 1)), set()).add(int(attrs.get("shard_index", 0)))
        return sorted({i for n, got in have.items() for i in range(n) if i not in got})

    def _locate_streams(self, path: str, video_id: str, group) -> None:
        """Record (shard path, byte offset in the file, item offsets) of each stream of a video group
        stored contiguously and uncompressed (how our writer stores them); other layouts
        are read through h5py."""
        names = set(group.keys())
        for name in names:
            if name + OFFSETS_SUFFIX not in names:
                continue
            data = group[name]
            base = data.id.get_offset()
            if base is not None and data.compression is None and data.chunks is None:
                off = group[name + OFFSETS_SUFFIX][()]
                self._located[(video_id, name)] = (path, int(base), off)

    def _check_root(self, path: str, attrs: Mapping[str, Any]):
        version = attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {version!r}, this tsn-pipeline reads "
                             f"version {SCHEMA_VERSION}; re-create the shard")
        if self.kind is not None and attrs.get("kind") != self.kind:
            raise StoreError(f"{path}: a {attrs.get('kind')!r} shard, expected {self.kind!r}")

    # -- index -------------------------------------------------------------------------
    @property
    def ids(self) -> List[str]:
        return sorted(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._entries

    def __getitem__(self, video_id: str) -> VideoEntry:
        try:
            return self._entries[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in shards {self.paths}") from None

    def entries(self) -> List[VideoEntry]:
        return [self._entries[v] for v in self.ids]

    def config(self) -> Dict[str, Any]:
        """The resolved stage config of the first shard (all shards of a run share it)."""
        first = next(iter(self.root.values()), {})
        return dict(first.get("config") or {})

    # -- payloads ------------------------------------------------------------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_streams"] = {}
        state["_fds"] = {}
        return state

    def _this_process(self) -> None:
        if self._pid != os.getpid():   # forked: never reuse the parent's handles
            self._handles, self._streams, self._fds, self._pid = {}, {}, {}, os.getpid()

    def _group(self, video_id: str):
        import h5py

        self._this_process()
        path = self[video_id].shard
        f = self._handles.get(path)
        if f is None:
            f = self._handles[path] = h5py.File(path, "r")
        return f[VIDEOS][video_id]

    def close(self):
        for f in self._handles.values():
            try:
                f.close()
            except Exception:
                pass
        for fd in self._fds.values():
            os.close(fd)
        self._handles = {}
        self._streams = {}
        self._fds = {}

    def _fd(self, path: str) -> int:
        """This process's descriptor of ``path``, checked to be the file that was indexed
        (a shard replaced since, e.g. by ``--overwrite``, would give other bytes)."""
        self._this_process()
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            if _file_id(os.fstat(fd)) != self._file_ids[path]:
                os.close(fd)
                raise StoreError(f"{path} changed after it was opened (rewritten?); open the "
                                 "shards again")
            self._fds[path] = fd
        return fd

    def _stream(self, video_id: str, stream: str):
        """(dataset, offsets) of a stream the index could not locate (chunked, compressed or
        empty), cached per process."""
        key = (video_id, stream)
        self._this_process()
        cached = self._streams.get(key)
        if cached is None:
            group = self._group(video_id)
            if stream not in group or stream + OFFSETS_SUFFIX not in group:
                raise StoreError(
                    f"video {video_id!r} has no stream {stream!r} "
                    f"(has {sorted(k for k in group if not k.endswith(OFFSETS_SUFFIX))})")
            if len(self._streams) > 4096:
                self._streams.clear()
            cached = self._streams[key] = (group[stream], group[stream + OFFSETS_SUFFIX][()])
        return cached

    def read_encoded(self, video_id: str, stream: str, indices: Sequence[int]) -> List[bytes]:
        """The stored payloads (JPEG/PNG bytes) of ``stream`` at ``indices`` (0-based).

        Located streams: one ``os.pread`` per run of consecutive indices ([4, 5, 6, 9] is
        two reads)."""
        located = self._located.get((video_id, stream))
        if located is None:
            data, off = self._stream(video_id, stream)
            idx = _checked_indices(indices, len(off) - 1, video_id, stream)
            return [data[int(off[i]):int(off[i + 1])].tobytes() for i in idx]
        path, base, off = located
        idx = _checked_indices(indices, len(off) - 1, video_id, stream)
        if self._pid != os.getpid():
            self._this_process()
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fd(path)
        out: List[bytes] = []
        pread = os.pread
        k, count = 0, len(idx)
        while k < count:
            j = k
            while j + 1 < count and idx[j + 1] == idx[j] + 1:
                j += 1
            a, b = int(off[idx[k]]), int(off[idx[j] + 1])
            buf = pread(fd, b - a, base + a)
            if len(buf) != b - a:
                raise StoreError(f"{path}: video {video_id!r} stream {stream!r} items "
                                 f"{idx[k]}..{idx[j]} are cut short (file truncated?)")
            if k == j:
                out.append(buf)
            else:
                out.extend(buf[int(off[i]) - a:int(off[i + 1]) - a] for i in idx[k:j + 1])
            k = j + 1
        return out

    def read_frames(self, video_id: str, indices: Sequence[int], stream: str = "rgb") -> np.ndarray:
        """Decoded RGB frames ``(len(indices), H, W, 3)`` uint8."""
        return decode_images(self.read_encoded(video_id, stream, indices), color=True)

    def read_gray(self, video_id: str, stream: str, indices: Sequence[int]) -> np.ndarray:
        """Decoded single-channel images ``(len(indices), H, W)`` uint8 (e.g. flow x or y)."""
        return decode_images(self.read_encoded(video_id, stream, indices), color=False)

    def check_video(self, video_id: str) -> None:
        """Raise ``StoreError`` naming shard and video unless the video's id, attributes and
        data match its checksum. Stages that read a whole video call it first."""
        reason = verify_group(self._group(video_id))
        if reason is not None:
            raise StoreError(f"{self[video_id].shard}: video {video_id!r} is damaged ({reason}); "
                             "`tsn verify` checks the whole shard; re-create it")

    def read_array(self, video_id: str, name: str, index=()) -> np.ndarray:
        return self._group(video_id)[name][index]


def open_shards(paths, kind: Optional[str] = None, warn_missing: bool = True) -> ShardSet:
    """Index the shards at ``paths`` (files or folders). See ``ShardSet``.

    Reading only some of the ``n`` shards of a set is allowed (a file given on purpose, an
    array job still running) but logged as a warning naming the missing ones. Stages that
    open one shard of a set on purpose (a flow worker reading its frame shard, a score
    shard's own accuracy) pass ``warn_missing=False``.
    """
    shards = ShardSet(paths, kind)
    missing = shards.missing_shards() if warn_missing else []
    if missing:
        given = [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        files = any(Path(p).is_file() for p in given)
        counts = sorted({int(r.get("num_shards", 1)) for r in shards.root.values()})
        log.warning("reading %d of the %s %s shards of %s: shard(s) %s %s", len(shards.paths),
                    "/".join(map(str, counts)), shards.kind, ", ".join(given),
                    ",".join(map(str, missing)),
                    "are not among the files given (reading those files only, as asked)"
                    if files else "are missing from the folder")
    return shards


def _checked_indices(indices, n: int, video_id: str, stream: str) -> List[int]:
    """``indices`` as ints, each checked to lie in ``0..n-1``."""
    idx = [int(i) for i in indices]
    if idx and (min(idx) < 0 or max(idx) >= n):
        bad = next(i for i in idx if not 0 <= i < n)
        raise IndexError(f"video {video_id!r} stream {stream!r}: index {bad} outside 0..{n - 1}")
    return idx


def _file_id(st: os.stat_result):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _imread_mode(color: bool):
    """(imdecode flag, BGR->RGB conversion needed): OpenCV >= 4.11's decoders write RGB
    themselves (IMREAD_COLOR_RGB, the same pixels without a conversion pass)."""
    import cv2

    if not color:
        return cv2.IMREAD_GRAYSCALE, False
    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)
    return (cv2.IMREAD_COLOR, True) if rgb is None else (rgb, False)


def decode_images(payloads: Sequence[bytes], color: bool = True) -> np.ndarray:
    """``decode_image`` of each payload, into one array (N, H, W, 3) or (N, H, W): no
    stacking copy (a conversion, where needed, writes straight into the array); one payload
    is the decoder's own array, not copied."""
    import cv2

    if not payloads:
        raise ValueError("no payloads to decode")
    flag, convert = _imread_mode(color)
    if len(payloads) == 1 and not convert:
        img = cv2.imdecode(np.frombuffer(payloads[0], dtype=np.uint8), flag)
        if img is None:
            raise StoreError(f"undecodable image payload ({len(payloads[0])} bytes)")
        return img[None]
    out = None
    for k, payload in enumerate(payloads):
        img = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), flag)
        if img is None:
            raise StoreError(f"undecodable image payload ({len(payload)} bytes)")
        if out is None:
            out = np.empty((len(payloads),) + img.shape, np.uint8)
        elif img.shape != out.shape[1:]:
            raise StoreError(f"image {k} is {img.shape[:2]}, image 0 {out.shape[1:3]}: the "
                             "payloads of one read must have one size")
        if convert:
            cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out[k])
        else:
            out[k] = img
        # free each decoded image before the next decode: with two alive, glibc returns and
        # re-faults their pages on every call (measured 2x slower for 340x256 frames)
        del img
    return out


def decode_image(payload: bytes, color: bool = True) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 RGB (H, W, 3) or gray (H, W) (``decode_images`` of one)."""
    return decode_images([payload], color)[0]


def encode_image(img: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """uint8 RGB (H, W, 3) or gray (H, W) -> JPEG (``quality`` 1..100) or PNG bytes."""
    import cv2

    if img.dtype != np.uint8:
        raise TypeError(f"encode_image needs uint8, got {img.dtype}")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected 'jpeg' or 'png'")
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {img.shape} image as {fmt}")
    return buf.tobytes()


def describe_shard(path) -> Dict[str, Any]:
    """Summary of one shard (for `tsn info`): root attributes, per-video entries, and
    ``items`` counted in the shard's unit (``unit``: frames, flow fields or snippets)."""
    import h5py

    with h5py.File(path, "r") as f:
        attrs = read_attrs(f)
        kind = str(attrs.get("kind"))
        videos = []
        total_bytes = 0
        items = 0
        for vid, group in f[VIDEOS].items():
            vattrs = read_attrs(group)
            nbytes = sum(group[n].id.get_storage_size() for n in group.keys())
            total_bytes += nbytes
            entry = {"video_id": vid, "shard": str(path), "label": vattrs.get("label", -1),
                     "bytes": int(nbytes)}
            entry.update({k: v for k, v in vattrs.items() if k not in entry and k != CHECKSUM})
            videos.append(entry)
            items += item_count(kind, vattrs)
        failed = attrs.get("failed") or []
    return {"path": str(path), "attrs": attrs, "videos": videos, "bytes": total_bytes,
            "items": items, "unit": {"frames": "frames", "flow": "flow fields"}.get(kind, "snippets"),
            "failed": len(failed) if isinstance(failed, list) else "unreadable"}


def _errno_of(exc: BaseException) -> Optional[int]:
    """The system error behind ``exc``: h5py raises OSError with ``errno`` set, or, when
    closing a file whose writes failed, RuntimeError naming ``errno = N`` in its text."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno
        found = re.search(r"errno = (\d+)", str(seen))
        if found and int(found.group(1)):
            return int(found.group(1))
        seen = seen.__cause__ or seen.__context__
    return None


def _child(conn, fn, args):
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)          # HDF5/h5py noise about a damaged or failing file: not ours
    try:
        conn.send((True, fn(*args), None))
    except BaseException as exc:
        conn.send((False, _errno_of(exc), f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def isolated(fn: Callable, *args) -> Any:
    """``fn(*args)`` run in a forked child process, its result sent back.

    A failure comes back as ``OSError`` (with the system's reason) when a system error is
    behind it, else as ``StoreError``. The HDF5 library can crash on some damaged files and
    cannot recover from failed writes (full disk): `tsn verify`, `tsn info` and the shard
    writer use this, so those are clean errors, never a crash or a traceback.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args))
    proc.start()
    send.close()
    try:
        ok, value, text = recv.recv()
    except EOFError:
        ok, value, text = False, None, None
    finally:
        recv.close()
        proc.join()
    if ok:
        return value
    if value is not None:
        raise OSError(value, os.strerror(value))
    raise StoreError(text or f"the HDF5 library crashed reading the file (exit code "
                             f"{proc.exitcode}): it is damaged")


def verify_shard(path) -> List[Dict[str, str]]:
    """Every problem of a shard: ``{"video_id": id or "*" for the shard, "reason": ...}``.

    Checks the schema version; the root checksum (root attributes and config, assigned ids,
    video list); that ``num_videos`` counts the groups and the assigned ids are exactly the
    stored plus the failed ones; and per video its checksum (id, attributes, datasets) and
    that every image decodes. Never raises for a damaged file.
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        return [{"video_id": "*", "reason": f"cannot open: {exc}"}]
    with f:
        try:
            attrs = read_attrs(f)
            if attrs.get("schema_version") != SCHEMA_VERSION:
                return [{"video_id": "*", "reason": f"schema version "
                         f"{attrs.get('schema_version')!r}, this tsn-pipeline reads version "
                         f"{SCHEMA_VERSION}; re-create the shard"}]
            names = sorted(f[VIDEOS].keys())
            root = _verify_root(f, attrs, names)
        except Exception as exc:
            return [{"video_id": "*", "reason": f"cannot read the shard's root: "
                     f"{type(exc).__name__}: {exc}"}]
        problems = [{"video_id": "*", "reason": r} for r in root]
        for vid in names:
            try:
                group = f[VIDEOS][vid]
                reason = verify_group(group) or _decode_all(group)
            except Exception as exc:
                reason = f"cannot read the video group: {type(exc).__name__}: {exc}"
            if reason is not None:
                problems.append({"video_id": vid, "reason": reason})
    return problems


def _verify_root(f, attrs: Mapping[str, Any], names: Sequence[str]) -> List[str]:
    reasons = []
    stored = attrs.get(CHECKSUM)
    actual = root_checksum(f)
    if stored != actual:
        reasons.append(f"root checksum mismatch (stored {stored}, computed {actual}): root "
                       "attributes, config, assigned ids or the video list changed")
    if attrs.get("num_videos") != len(names):
        reasons.append(f"num_videos is {attrs.get('num_videos')!r} but {len(names)} video "
                       "groups are present")
    failed = attrs.get("failed")
    failed_ids = ({d.get("video_id") for d in failed if isinstance(d, dict)}
                  if isinstance(failed, list) else set())
    if not isinstance(failed, list):
        reasons.append(f"the failed attribute is not a JSON list: {str(failed)[:80]!r}")
    assigned = set(read_assigned(f))
    if assigned != set(names) | failed_ids:
        extra = sorted((set(names) | failed_ids) - assigned)
        lost = sorted(assigned - set(names) - failed_ids)
        reasons.append(f"assigned ids differ from the stored and failed ones (not assigned: "
                       f"{extra[:5]}, assigned but neither stored nor failed: {lost[:5]})")
    return reasons


def _decode_all(group) -> Optional[str]:
    import cv2

    for name in group.keys():
        if name + OFFSETS_SUFFIX not in group:
            continue
        buf = group[name][()]
        off = group[name + OFFSETS_SUFFIX][()]
        for i in range(len(off) - 1):
            img = cv2.imdecode(buf[off[i]:off[i + 1]], cv2.IMREAD_UNCHANGED)
            if img is None:
                return f"stream {name!r} item {i} does not decode"
    return None
