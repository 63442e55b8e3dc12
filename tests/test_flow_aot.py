"""The CPU kernels compiled ahead of time (tsn_pipeline.flow.aot): cache key, fallback to the
uncompiled solver with a warning when the cache is damaged and nothing can be compiled, and
(with TSN_TEST_COMPILE=1, or kernels already in this machine's cache) equal bytes from one
process and from worker processes."""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest

from conftest import textured_frames
from shards import summaries, write_frames
from tsn_pipeline import store
from tsn_pipeline.flow import aot
from tsn_pipeline.flow.tvl1_torch import TVL1Params, tvl1


@pytest.fixture
def gray():
    import cv2

    return np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
                     for x in textured_frames(3, 40, 56, seed=3, dx=0.8)])


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache, and no kernels loaded in this process."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(aot, "_LOADED", {})
    monkeypatch.setattr(aot, "_FAILED", {})
    return tmp_path / "cache"


def test_key_follows_the_baked_settings_only():
    base = TVL1Params()
    assert aot.package_key(base) == aot.package_key(dataclasses.replace(base, nscales=3, warps=2,
                                                                        iterations=50))
    for change in (dict(tau=0.2), dict(lambda_=0.1), dict(theta=0.25), dict(interp="cpu")):
        assert aot.package_key(dataclasses.replace(base, **change)) != aot.package_key(base)


def test_damaged_cache_without_a_compiler_falls_back_with_warnings(fresh_cache, monkeypatch,
                                                                   caplog, gray):
    params = TVL1Params(nscales=2, warps=2)
    folder = aot.package_dir(params)
    folder.mkdir(parents=True)
    for name in aot.NAMES:
        (folder / f"{name}.pt2").write_bytes(b"not a package")

    def no_compiler(folder, params):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(aot, "_build", no_compiler)
    with caplog.at_level(logging.WARNING):
        assert aot.cpu_kernels(params) is None
        assert aot.cpu_kernels(params) is None          # tried once per process
        flow = tvl1(gray[:2], gray[1:], params, compile=True).numpy()
    text = caplog.text
    assert "do not load" in text and "cannot compile" in text and "no C++ compiler" in text
    assert text.count("cannot compile") == 1
    eager = tvl1(gray[:2], gray[1:], params, compile=False).numpy()
    assert flow.tobytes() == eager.tobytes()


def test_built_kernels_load_without_the_lock_and_unloadable_builds_are_not_redone(
        fresh_cache, monkeypatch, caplog):
    """Kernels already in the cache load without creating the lock file (a read-only or
    shared cache serves); a freshly built package that does not load is remembered, so that
    later runs fall back at once instead of compiling for minutes every time."""
    params = TVL1Params(nscales=2, warps=2)
    folder = aot.package_dir(params)
    builds = []

    def garbage_build(folder, params):
        builds.append(1)
        folder.mkdir(parents=True)
        for name in aot.NAMES:
            (folder / f"{name}.pt2").write_bytes(b"not a package")

    monkeypatch.setattr(aot, "_build", garbage_build)
    with caplog.at_level(logging.WARNING):
        assert aot.cpu_kernels(params) is None
        monkeypatch.setattr(aot, "_FAILED", {})          # a later run (a new process)
        assert aot.cpu_kernels(params) is None
    assert len(builds) == 1 and "remove" in caplog.text and ".unloadable" in caplog.text

    class Loaded:                                       # stands for a package that loads
        def __init__(self, folder, params):
            self.folder = folder

    monkeypatch.setattr(aot, "CpuKernels", Loaded)
    monkeypatch.setattr(aot, "_FAILED", {})
    lock = folder.parent / f"{aot.package_key(params)}.lock"
    lock.unlink()
    assert aot.cpu_kernels(params).folder == folder and not lock.exists()


def test_flow_command_without_kernels_runs_uncompiled(fresh_cache, monkeypatch, cli_runner,
                                                      tmp_path):

    def no_compiler(folder, params):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(aot, "_build", no_compiler)
    frames = write_frames(tmp_path / "frames", {"a": textured_frames(3, 40, 56, seed=1),
                                                "b": textured_frames(3, 40, 56, seed=2)})
    args = ["--no-progress", "--nscales", "3", "--warps", "3", "--workers", "1"]
    r = cli_runner("flow", frames, "--out", tmp_path / "flow", "--backend", "torch", *args,
                   "--workers", "2")
    assert r.exit_code == 0, r.output
    assert summaries(r.output)[0]["ok"] == 2
    shards = store.open_shards(tmp_path / "flow", kind="flow")
    assert shards.root[shards.paths[0]]["runtime"]["compile"] is False
    # a finished shard is only reported: nothing is compiled for it (minutes on a new machine)
    builds = []
    monkeypatch.setattr(aot, "_FAILED", {})
    monkeypatch.setattr(aot, "_build", lambda folder, params: builds.append(folder))
    r = cli_runner("flow", frames, "--out", tmp_path / "flow", "--backend", "torch", *args)
    assert r.exit_code == 0 and summaries(r.output)[0]["status"] == "complete", r.output
    assert builds == []


def _kernels_ready() -> bool:
    return os.environ.get("TSN_TEST_COMPILE") == "1" or all(
        (aot.package_dir(TVL1Params()) / f"{n}.pt2").is_file() for n in aot.NAMES)


@pytest.mark.slow
@pytest.mark.skipif(not _kernels_ready(), reason="compiling the CPU kernels takes ~2 min; set "
                    "TSN_TEST_COMPILE=1 (or run `tsn flow` once on this machine)")
def test_compiled_workers_give_the_bytes_of_one_process(cli_runner, tmp_path, gray):
    """Default settings compiled: worker processes (--workers 2) store the very bytes of one
    process, and the compiled kernels agree with the eager solver up to float rounding."""
    import h5py


    frames = write_frames(tmp_path / "frames", {f"v{i}": textured_frames(4, 40, 56, seed=i)
                                                for i in range(3)})
    records = {}
    for workers in ("1", "2"):
        r = cli_runner("flow", frames, "--out", tmp_path / f"w{workers}", "--backend", "torch",
                       "--encoding", "float16", "--no-progress", "--workers", workers)
        assert r.exit_code == 0, r.output
        assert summaries(r.output)[0]["ok"] == 3
        shards = store.open_shards(tmp_path / f"w{workers}", kind="flow")
        assert shards.root[shards.paths[0]]["runtime"]["compile"] is True
        with h5py.File(shards.paths[0], "r") as f:
            records[workers] = {v: store.read_record(f[store.VIDEOS][v]).arrays["tvl1"]
                                for v in shards.ids}
    assert sorted(records["1"]) == sorted(records["2"]) == ["v0", "v1", "v2"]
    for vid, one in records["1"].items():
        assert one.tobytes() == records["2"][vid].tobytes(), vid
    compiled = tvl1(gray[:2], gray[1:], compile=True).numpy()
    eager = tvl1(gray[:2], gray[1:], compile=False).numpy()
    d = np.sqrt(((compiled - eager) ** 2).sum(1))
    assert d.mean() < 1e-3 and np.percentile(d, 99) < 0.01
