"""The CPU kernels in C (tsn_pipeline.flow.native): the same numbers as the eager torch
functions, built once per machine into the kernel cache and loaded from it, rebuilt when
damaged, the uncompiled solver (with a warning) where nothing can be built, and equal bytes
from one process and from worker processes."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import textured_frames
from shards import summaries, write_frames
from tsn_pipeline import store
from tsn_pipeline.flow import native
from tsn_pipeline.flow import tvl1_torch as T
from tsn_pipeline.flow.tvl1_torch import TVL1Params, tvl1

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gray():
    import cv2

    return np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
                     for x in textured_frames(3, 40, 56, seed=3, dx=0.8)])


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache, and no kernels loaded in this process nor in the reusable
    worker processes (shut down before and after: they keep the environment they started
    with, and what they loaded)."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_LOADED", {})
    monkeypatch.setattr(native, "_FAILED", {})
    yield tmp_path / "cache"
    get_reusable_executor().shutdown(wait=True)


@pytest.fixture
def without_compiler(fresh_cache, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")


@pytest.fixture(scope="module")
def kernels():
    k = native.cpu_kernels()
    assert k is not None, "the C kernels cannot be built here (see the warning above)"
    return k


def _ulps(a, b) -> int:
    """Largest distance in float32 units in the last place between two arrays."""
    ia, ib = (np.ascontiguousarray(x, np.float32).view(np.int32).astype(np.int64) for x in (a, b))
    return int(np.abs(ia - ib).max())


@pytest.mark.parametrize("shape", [(3, 37, 53), (2, 1, 9), (1, 6, 1), (1, 2, 2), (1, 1, 1)])
def test_step_computes_what_the_torch_step_computes(kernels, shape):
    """u's update equals torch's bit for bit; the dual variables differ by a few units in the
    last place at most (torch's CPU square root is not correctly rounded); the stopping test's
    sums agree to float rounding."""
    import torch

    g = torch.Generator().manual_seed(7)
    args = [torch.randn(*shape, generator=g) for _ in range(10)]
    args[8] = args[8].abs() * 2                    # |grad I1w|^2 >= 0, some near zero
    args[8][..., 0] = 0.0
    consts = T.step_constants(TVL1Params())
    ref = T.tvl1_step(*args, *consts)
    out = kernels.step(*args, *consts)
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
    assert max(_ulps(r.numpy(), o.numpy()) for r, o in zip(ref[2:6], out[2:6])) <= 4
    np.testing.assert_allclose(out[6].numpy(), ref[6].double().numpy(), rtol=1e-5)


@pytest.mark.skipif(__import__("platform").machine() != "x86_64",
                    reason="compares this CPU's vector width with the x86-64 baseline (SSE2)")
def test_same_bits_whatever_the_vector_width(kernels, fresh_cache, monkeypatch):
    """Built for this CPU (-march=native: AVX2 or AVX-512 here) and for the x86-64 baseline
    (SSE2, 4 lanes): the same bits, the stopping test's sums included, so nodes of different
    CPUs store the same flow."""
    import torch

    monkeypatch.setattr(native, "FLAGS", tuple("-march=x86-64" if f == "-march=native" else f
                                               for f in native.FLAGS))
    baseline = native.cpu_kernels()
    assert baseline is not None and baseline.path != kernels.path
    g = torch.Generator().manual_seed(11)
    args = [torch.randn(2, 9, 53, generator=g) for _ in range(10)]
    args[8] = args[8].abs()
    consts = T.step_constants(TVL1Params())
    for a, b in zip(kernels.step(*args, *consts), baseline.step(*args, *consts)):
        assert torch.equal(a, b)
    stack, u = torch.rand(2, 3, 9, 53, generator=g) * 255, args[0] * 3
    for interp in ("cuda", "cpu"):
        for a, b in zip(kernels.terms(stack, args[1], u, -u, interp),
                        baseline.terms(stack, args[1], u, -u, interp)):
            assert torch.equal(a, b)


def test_empty_and_mismatched_arrays(kernels):
    import torch

    empty = [torch.zeros(1, 3, 0) for _ in range(10)]
    out = kernels.step(*empty, *T.step_constants(TVL1Params()))
    assert [tuple(o.shape) for o in out] == [(1, 3, 0)] * 6 + [(1,)] and out[6][0] == 0
    args = [torch.zeros(1, 4, 5) for _ in range(9)] + [torch.zeros(1, 4, 4)]
    with pytest.raises(ValueError, match="differ"):
        kernels.step(*args, *T.step_constants(TVL1Params()))
    with pytest.raises(TypeError, match="float32"):
        kernels.step(*[a.double() for a in args], *T.step_constants(TVL1Params()))


@pytest.mark.parametrize("interp", ["cuda", "cpu"])
@pytest.mark.parametrize("shape", [(2, 29, 41), (1, 1, 6), (1, 5, 1), (1, 1, 1)])
def test_warp_terms_equal_the_torch_ones(kernels, interp, shape):
    """Bicubic warp of both kinds, flows that point off the image included, a non-contiguous
    input: the same bits."""
    import torch

    g = torch.Generator().manual_seed(3)
    n, h, w = shape
    stack = torch.rand(n, 3, h, w, generator=g) * 255
    i0 = torch.rand(n, h, w, generator=g) * 255
    u1 = torch.randn(n, h, w, generator=g) * 4
    u2 = torch.randn(n, w, h, generator=g).transpose(1, 2) * 4     # not contiguous
    u1[0, :4] += 60.0                              # far off the right edge
    u2[-1, -3:] -= 1e6                             # far above the top
    assert not u2.is_contiguous() or h == 1 or w == 1
    ref = T.warp_terms(stack, i0, u1, u2, interp)
    out = kernels.terms(stack, i0, u1, u2, interp)
    for r, o in zip(ref, out):
        assert torch.equal(r, o)


def test_damaged_library_is_rebuilt_then_loaded_without_building(fresh_cache, monkeypatch,
                                                                 caplog):
    builds = []
    build = native._build

    def counted(cc, path):
        builds.append(path)
        return build(cc, path)

    monkeypatch.setattr(native, "_build", counted)
    path = native.library_path(native.library_key(native.compiler()))
    assert path.parent == fresh_cache / "native"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a library")                 # damaged (a truncated copy, say)
    with caplog.at_level(logging.WARNING):
        kernels = native.cpu_kernels()
    assert kernels is not None and kernels.path == path and builds == [path]
    assert "do not load or check" in caplog.text
    assert not list(path.parent.glob("*.tmp*"))        # no partial file left behind
    # a later process loads it from disk and builds nothing
    later = subprocess.run(
        [sys.executable, "-c", "from tsn_pipeline.flow import native\n"
         "def no(*a): raise SystemExit('built again')\n"
         "native._build = no\nprint(native.cpu_kernels().path)"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(fresh_cache)})
    assert later.returncode == 0 and later.stdout.strip() == str(path), later.stderr[-2000:]


def test_key_follows_source_and_compiler_command(tmp_path, monkeypatch):
    cc = native.compiler()
    key = native.library_key(cc)
    assert native.library_key([*cc, "-O2"]) != key
    edited = tmp_path / "tvl1_cpu.c"
    edited.write_text(native.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(native, "SOURCE", edited)
    assert native.library_key(cc) != key


def test_cc_may_carry_arguments(fresh_cache, monkeypatch):
    cc = native.compiler()[0]
    monkeypatch.setenv("CC", f"{cc} -O1")
    assert native.compiler() == [cc, "-O1"]
    kernels = native.cpu_kernels()
    assert kernels is not None and kernels.path.parent == fresh_cache / "native"


def test_a_compiler_that_reassociates_float_arithmetic_is_refused(fresh_cache, monkeypatch,
                                                                  caplog):
    """-ffast-math (a wrapper's default, say) gives other numbers: the check after the build
    finds them, nothing is kept in the cache, and the solver runs uncompiled."""
    monkeypatch.setenv("CC", f"{native.compiler()[0]} -ffast-math")
    assert native._subnormals_kept()
    with caplog.at_level(logging.WARNING):
        assert native.cpu_kernels() is None
    assert ("computes other numbers than the torch functions" in caplog.text
            or "flush subnormal floats to zero" in caplog.text), caplog.text
    assert not (fresh_cache / "native").exists() or not list((fresh_cache / "native").iterdir())
    # the build was checked in a child process: this one's float mode is untouched
    assert native._subnormals_kept()


def test_a_cc_that_is_not_a_command_line(fresh_cache, monkeypatch, caplog):
    monkeypatch.setenv("CC", 'gcc "-O2')
    with caplog.at_level(logging.WARNING):
        assert native.compiler() is None and native.cpu_kernels() is None
    assert "is not a command line" in caplog.text and "no C compiler found" in caplog.text


@pytest.mark.parametrize("cc, reason", [("no-such-compiler-anywhere", "no C compiler found"),
                                        ("false", "failed (exit 1)")])
def test_without_a_working_compiler_the_solver_runs_uncompiled(fresh_cache, monkeypatch,
                                                               caplog, gray, cc, reason):
    monkeypatch.setenv("CC", cc)
    with caplog.at_level(logging.WARNING):
        assert native.cpu_kernels() is None
        assert native.cpu_kernels() is None            # tried once per process
        flow = tvl1(gray[:2], gray[1:], TVL1Params(nscales=2, warps=2), compile=True).numpy()
    assert caplog.text.count("cannot build the TV-L1 CPU kernels") == 1
    assert reason in caplog.text
    eager = tvl1(gray[:2], gray[1:], TVL1Params(nscales=2, warps=2), compile=False).numpy()
    assert flow.tobytes() == eager.tobytes()


def test_flow_command_without_kernels_runs_uncompiled(without_compiler, monkeypatch,
                                                      cli_runner, tmp_path):
    frames = write_frames(tmp_path / "frames", {"a": textured_frames(3, 40, 56, seed=1),
                                                "b": textured_frames(3, 40, 56, seed=2)})
    args = ["--no-progress", "--nscales", "3", "--warps", "3"]
    r = cli_runner("flow", frames, "--out", tmp_path / "flow", "--backend", "torch", *args,
                   "--workers", "2")
    assert r.exit_code == 0, r.output
    assert summaries(r.output)[0]["ok"] == 2
    shards = store.open_shards(tmp_path / "flow", kind="flow")
    assert shards.root[shards.paths[0]]["runtime"]["compile"] is False
    # a finished shard is only reported: nothing is built for it
    builds = []
    monkeypatch.delenv("CC")
    monkeypatch.setattr(native, "_FAILED", {})
    monkeypatch.setattr(native, "_build", lambda cc, path: builds.append(path))
    r = cli_runner("flow", frames, "--out", tmp_path / "flow", "--backend", "torch", *args)
    assert r.exit_code == 0 and summaries(r.output)[0]["status"] == "complete", r.output
    assert builds == []


@pytest.mark.slow
def test_compiled_workers_give_the_bytes_of_one_process(fresh_cache, cli_runner, tmp_path):
    """Default settings: worker processes (--workers 2, each loading the library the main
    process built) store the very bytes of one process."""
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
    assert [p.name for p in (fresh_cache / "native").iterdir()] == [
        native.library_path(native.library_key(native.compiler())).name]
