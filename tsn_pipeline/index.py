"""Dataset-wide index of a stage folder, built after (array) jobs: what to resubmit.

Reads every ``<kind>-<i>-of-<n>.h5`` of one stage folder (root attributes and the video
group names only, no payload), the ``<kind>-<i>-of-<n>.failures.json`` files, and the traces
an unfinished run leaves (``<shard>.tmp``, ``.<shard>.parts/``). Writes nothing but the index
JSON the command asks for.

A shard is, in order of precedence:

- ``complete``   the ``.h5`` exists and its root says no video failed;
- ``failed``     the ``.h5`` exists and some videos failed (``failed`` root attribute, or the
                 failures file); rerun that shard with ``--retry-failed``;
- ``incomplete`` no ``.h5`` but a ``.tmp`` file or a ``.parts`` folder: a run was killed or
                 is still going; rerun the same command and it resumes;
- ``missing``    none of the above: the array task never ran (or wrote elsewhere);
- ``unreadable`` the ``.h5`` exists but is not a shard this version reads.

Example: ``flow-1-of-4.h5`` absent and ``.flow-1-of-4.h5.parts/`` present, ``flow-3-of-4.h5``
absent without trace -> ``incomplete: [1]``, ``missing: [3]``, ``resubmit: "1,3"`` (the value
for ``sbatch --array=``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from . import store

STATUSES = ("complete", "failed", "incomplete", "missing", "unreadable")


class StageIndexError(Exception):
    """The folder cannot be indexed as asked (no shards, kinds or shard counts mixed)."""


@dataclass
class ShardStatus:
    index: int
    path: str
    status: str                                   # one of STATUSES
    num_videos: int = 0
    num_items: int = 0
    failed: List[Dict[str, str]] = field(default_factory=list)
    reason: str = ""                              # for incomplete / unreadable
    config: Optional[Dict[str, Any]] = None

    def to_json(self) -> Dict[str, Any]:
        d = {"index": self.index, "path": self.path, "status": self.status,
             "num_videos": self.num_videos, "num_items": self.num_items,
             "failed": self.failed}
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass
class StageIndex:
    folder: str
    kind: str
    num_shards: int
    shards: List[ShardStatus]
    videos: Dict[str, Dict[str, Any]]             # video id -> {shard, length, label}
    problems: List[str]                           # folder-wide findings (config mixed, ...)
    expected_missing: List[str] = field(default_factory=list)   # ids of --list not found

    def by_status(self, status: str) -> List[int]:
        return [s.index for s in self.shards if s.status == status]

    @property
    def failed_videos(self) -> List[Dict[str, str]]:
        return [dict(f, shard=s.index) for s in self.shards for f in s.failed]

    @property
    def resubmit(self) -> List[int]:
        """Shard indices whose array task must run again (failed ones with --retry-failed)."""
        return sorted(s.index for s in self.shards if s.status != "complete")

    @property
    def ok(self) -> bool:
        return not self.resubmit and not self.problems and not self.expected_missing

    def to_json(self) -> Dict[str, Any]:
        return {
            "folder": self.folder,
            "kind": self.kind,
            "num_shards": self.num_shards,
            "ok": self.ok,
            "counts": {s: len(self.by_status(s)) for s in STATUSES},
            "num_videos": len(self.videos),
            "num_items": sum(s.num_items for s in self.shards),
            **{s: self.by_status(s) for s in STATUSES if s != "complete"},
            "resubmit": array_spec(self.resubmit),
            "failed_videos": self.failed_videos,
            "expected_missing": self.expected_missing,
            "problems": self.problems,
            "shards": [s.to_json() for s in self.shards],
            "videos": self.videos,
        }


def array_spec(indices: Sequence[int]) -> str:
    """Compact SLURM ``--array`` value: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    out: List[str] = []
    idx = sorted(set(int(i) for i in indices))
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        out.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ",".join(out)


def _scan(folder: Path, kind: Optional[str]):
    """Shard files and traces of unfinished runs found in ``folder``, by (kind, n)."""
    found: Dict[tuple, Dict[int, Dict[str, Path]]] = {}

    def note(name: str, what: str, path: Path):
        parsed = store.parse_shard_name(name)
        if parsed is None or (kind is not None and parsed[0] != kind):
            return
        k, i, n = parsed
        found.setdefault((k, n), {}).setdefault(i, {})[what] = path

    for p in folder.iterdir():
        name = p.name
        if name.endswith(".h5") and p.is_file():
            note(name, "final", p)
        elif name.endswith(".h5.tmp"):
            note(name[:-4], "tmp", p)
        elif name.startswith(".") and name.endswith(".h5.parts") and p.is_dir():
            note(name[1:-6], "parts", p)
        elif name.endswith(".failures.json"):
            note(name[: -len(".failures.json")] + ".h5", "failures", p)
    return found


def _read_failures(path: Optional[Path]) -> List[Dict[str, str]]:
    if path is None:
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return [{"video_id": "*", "reason": f"unreadable failures file {path.name}"}]
    return list(data) if isinstance(data, list) else []


def _shard_status(i: int, n: int, kind: str, folder: Path, files: Mapping[str, Path],
                  videos: Dict[str, Dict[str, Any]], problems: List[str]) -> ShardStatus:
    import h5py

    name = store.shard_name(kind, i, n)
    final = files.get("final")
    st = ShardStatus(index=i, path=str(folder / name), status="missing")
    if final is None:
        traces = [p.name for key, p in sorted(files.items()) if key in ("tmp", "parts")]
        if traces:
            st.status = "incomplete"
            done = 0
            if "parts" in files:
                done = sum(1 for p in files["parts"].iterdir() if p.suffix == ".h5")
            st.reason = f"unfinished run left {', '.join(traces)} ({done} videos done)"
        return st
    try:
        with h5py.File(final, "r") as f:
            root = store.read_attrs(f)
            if root.get("schema_version") != store.SCHEMA_VERSION:
                raise ValueError(f"schema version {root.get('schema_version')!r}, "
                                 f"expected {store.SCHEMA_VERSION}")
            if root.get("kind") != kind:
                raise ValueError(f"kind {root.get('kind')!r} in a file named {name}")
            for vid, group in f[store.VIDEOS].items():
                attrs = group.attrs
                length = store.item_count(kind, attrs)
                if vid in videos:
                    problems.append(f"video {vid!r} is in {videos[vid]['shard']} and {name}")
                videos[vid] = {"shard": name, "length": length,
                               "label": int(attrs.get("label", -1))}
    except (OSError, ValueError, KeyError) as exc:
        st.status = "unreadable"
        st.reason = f"{type(exc).__name__}: {exc}"
        return st
    st.config = root.get("config") or {}
    st.num_videos = int(root.get("num_videos", 0))
    st.num_items = int(root.get("num_items", 0))
    failed = root.get("failed") or []
    if not failed:
        failed = _read_failures(files.get("failures"))
    st.failed = [{"video_id": d.get("video_id", "?"), "reason": d.get("reason", "")}
                 for d in failed]
    st.status = "failed" if st.failed else "complete"
    return st


def build_index(folder, kind: Optional[str] = None, num_shards: Optional[int] = None,
                expected_ids: Optional[Iterable[str]] = None) -> StageIndex:
    """Index the shards of ``kind`` in ``folder`` (see the module docstring).

    ``num_shards`` is the array size the user submitted; by default it is read from the shard
    names (all must agree). ``expected_ids`` (e.g. the video list) adds the ids that are
    neither in a shard nor recorded as failed -- videos a stage silently dropped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StageIndexError(f"{folder}: no such folder; give the output folder of a stage "
                          "(the --out of decode/flow/score)")
    found = _scan(folder, kind)
    kinds = sorted({k for k, _ in found})
    if not kinds:
        what = f"{kind} shards" if kind else "shards"
        if num_shards is None or kind is None:
            raise StageIndexError(f"{folder}: no {what} (<kind>-<i>-of-<n>.h5, .tmp or .parts) "
                              "found; pass --kind and --num-shards to list them all as missing")
        kinds = [kind]
    if len(kinds) > 1:
        raise StageIndexError(f"{folder}: shards of several kinds {kinds}; choose one with --kind")
    kind = kinds[0]
    counts = sorted({n for k, n in found if k == kind})
    problems: List[str] = []
    if num_shards is None:
        if len(counts) > 1:
            raise StageIndexError(f"{folder}: {kind} shards of different counts {counts} "
                              "(e.g. -of-4 and -of-8); pass --num-shards to say which run counts")
        num_shards = counts[0]
    others = [n for n in counts if n != num_shards]
    if others:
        problems.append(f"{kind} shards of other counts {others} also present (ignored)")
    files = found.get((kind, num_shards), {})
    extra = sorted(i for i in files if i >= num_shards)
    if extra:
        problems.append(f"shard indices {extra} are >= num_shards {num_shards}")
    videos: Dict[str, Dict[str, Any]] = {}
    shards = [_shard_status(i, num_shards, kind, folder, files.get(i, {}), videos, problems)
              for i in range(num_shards)]
    configs = {json.dumps(s.config, sort_keys=True) for s in shards if s.config is not None}
    if len(configs) > 1:
        problems.append(f"shards were made with {len(configs)} different configs; "
                        "rerun the odd ones with the same settings (--overwrite)")
    index = StageIndex(folder=str(folder), kind=kind, num_shards=num_shards, shards=shards,
                       videos=dict(sorted(videos.items())), problems=problems)
    if expected_ids is not None:
        failed = {f["video_id"] for s in shards for f in s.failed}
        pending = {s.index for s in shards if s.status in ("missing", "incomplete", "unreadable")}
        from .batch import assign_shard

        expected = sorted(set(expected_ids))
        lost = []
        for i in range(num_shards):
            if i in pending:
                continue
            lost.extend(v for v in assign_shard(expected, i, num_shards)
                        if v not in videos and v not in failed)
        index.expected_missing = sorted(lost)
        unexpected = sorted(set(videos) - set(expected))
        if unexpected:
            problems.append(f"{len(unexpected)} videos in shards are not in the list "
                            f"(e.g. {unexpected[:3]})")
    return index
