"""Golden shards: `tsn decode` and `tsn flow` (OpenCV TV-L1 and warped flow) on two real clips
write the same shard contents as when tests/data/golden/ was made, so a refactor that changes
one stored byte is caught.

What is compared (the input paths, the package version and the checksums
that cover them are left out; everything else a reader can see is in):
- root and per-video attributes, every dataset's name, dtype, shape and a SHA-256 of its
  bytes (JPEG payloads, offsets, homographies). Exact when this machine's libraries and CPU
  are the ones the golden file was made with (its ``environment``): byte-identical shards;
- with other libraries or another CPU (a newer ffmpeg or OpenCV encodes other JPEG bytes and
  rounds flow differently), the same attributes and dataset names, and the decoded frames and
  flow codes within a small mean difference of the stored golden arrays.

Regenerate only when a change of output is intended, and say why in the commit:
    python tests/test_golden.py --update
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import CLIPS, run_tsn
from tsn_pipeline import store
from tsn_pipeline.flow.reader import read_flow

GOLDEN = CLIPS / "golden"
CLASSES = {"wave_a": "TrumanShow_wave_f_nm_np1_fr_med_26.avi",
           "wave_b": "RATRACE_wave_f_nm_np1_fr_goo_37.avi"}
DECODE = ["--size", "64x48", "--fps", "6", "--workers", "1"]
FLOW = ["--backend", "opencv", "--kind", "both", "--workers", "2"]
VOLATILE = {"source", "frames_source", "package_version", store.CHECKSUM}   # paths, version
EVERY = 3                     # golden arrays keep every 3rd frame and flow field
MEAN_TOLERANCE = 2.0          # grey levels / flow codes, other libraries only


def environment() -> dict:
    """What the shard bytes depend on besides this package."""
    import cv2
    from imageio_ffmpeg import get_ffmpeg_exe

    ffmpeg = subprocess.run([get_ffmpeg_exe(), "-version"], capture_output=True, text=True)
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"ffmpeg": ffmpeg.stdout.splitlines()[0], "opencv": cv2.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version, "cpu": cpu, "machine": platform.machine()}


def make_shards(work: Path):
    """Decode the two clips (class folders) and compute both flows, as a user types it."""
    for cls, clip in CLASSES.items():
        (work / "videos" / cls).mkdir(parents=True)
        shutil.copy(CLIPS / clip, work / "videos" / cls / clip)
    run_tsn("decode", work / "videos", "--out", work / "frames", *DECODE, "--no-progress",
            check=0)
    run_tsn("flow", work / "frames", "--out", work / "flow", *FLOW, "--no-progress", check=0)
    return (work / "frames" / store.shard_name("frames", 0, 1),
            work / "flow" / store.shard_name("flow", 0, 1))


def contents(path: Path) -> dict:
    """Root and video attributes and a digest of every dataset's dtype, shape and bytes."""
    def attrs(obj):
        return {k: v for k, v in store.read_attrs(obj).items() if k not in VOLATILE}

    def digest(ds):
        arr = np.ascontiguousarray(ds[()])
        head = f"{arr.dtype.str}{arr.shape}".encode()
        return hashlib.sha256(head + memoryview(arr).cast("B").tobytes()).hexdigest()

    with h5py.File(path, "r") as f:
        videos = f[store.VIDEOS]
        return {"root": json.loads(json.dumps(attrs(f))),
                "videos": {v: {"attrs": json.loads(json.dumps(attrs(videos[v]))),
                               "datasets": {n: digest(videos[v][n]) for n in sorted(videos[v])},
                               "counts": {n: int(videos[v][n].attrs["count"])
                                          for n in sorted(videos[v])
                                          if "count" in videos[v][n].attrs}}
                           for v in sorted(videos)}}


def arrays(frames_path: Path, flow_path: Path) -> dict:
    """Every EVERY-th decoded frame and flow field (codes) of each video."""
    out = {}
    frames, flow = store.open_shards(frames_path), store.open_shards(flow_path)
    for vid in frames.ids:
        out[f"frames/{vid}"] = frames.read_frames(vid, range(0, frames[vid].length, EVERY))
        n = flow[vid].length
        for kind in ("tvl1", "warped"):
            out[f"{kind}/{vid}"] = read_flow(flow, vid, kind, range(0, n, EVERY))
    frames.close()
    flow.close()
    return out


def update() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        frames_path, flow_path = make_shards(Path(tmp))
        GOLDEN.mkdir(exist_ok=True)
        golden = {"environment": environment(), "decode": DECODE, "flow": FLOW,
                  "frames": contents(frames_path), "flow_shard": contents(flow_path)}
        (GOLDEN / "golden.json").write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        np.savez_compressed(GOLDEN / "arrays.npz", **arrays(frames_path, flow_path))
    print(f"wrote {GOLDEN}/golden.json and arrays.npz")


def without_digests(c: dict) -> dict:
    return {"root": c["root"], "videos": {v: {"attrs": e["attrs"], "counts": e["counts"],
                                              "datasets": sorted(e["datasets"])}
                                          for v, e in c["videos"].items()}}


@pytest.mark.slow
def test_decode_and_flow_shards_equal_the_golden_ones(tmp_path):
    golden = json.loads((GOLDEN / "golden.json").read_text())
    assert (golden["decode"], golden["flow"]) == (DECODE, FLOW), "settings changed: --update"
    frames_path, flow_path = make_shards(tmp_path)
    got = {"frames": contents(frames_path), "flow_shard": contents(flow_path)}
    same_environment = golden["environment"] == environment()
    with np.load(GOLDEN / "arrays.npz") as stored:
        expected = {k: stored[k] for k in stored.files}
    decoded = arrays(frames_path, flow_path)
    assert sorted(decoded) == sorted(expected)
    for kind in ("frames", "flow_shard"):
        if same_environment:     # byte-identical contents
            assert got[kind] == golden[kind], kind
        else:
            assert without_digests(got[kind]) == without_digests(golden[kind]), kind
    for name, want in expected.items():
        have = decoded[name]
        assert have.shape == want.shape and have.dtype == want.dtype, name
        diff = np.abs(have.astype(np.int16) - want.astype(np.int16))
        if same_environment:
            assert not diff.any(), f"{name}: {int((diff > 0).sum())} values differ"
        else:
            assert diff.mean() <= MEAN_TOLERANCE, (name, float(diff.mean()),
                                                  golden["environment"], environment())


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(__doc__)
    update()
