"""Fixtures shared by the test suite: the real clips, synthetic videos, CLI runners."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "tests" / "data"   # real clips shipped with the repo (tests/data/README.md)

# What each real clip decodes to (tests/data/README.md): file -> frames that decode.
CLIP_FRAMES = {
    "v_SoccerJuggling_g23_c01.avi": 240,
    "SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi": 74,
    "TrumanShow_wave_f_nm_np1_fr_med_26.avi": 48,
    "RATRACE_wave_f_nm_np1_fr_goo_37.avi": 72,
    "bikes.mp4": 250,
}


@pytest.fixture(scope="session")
def real_clips() -> Path:
    """The folder of real clips in the repository (never skipped: they ship with it)."""
    assert CLIPS.is_dir(), f"{CLIPS} is missing: the repository ships its test clips"
    return CLIPS


def textured_frames(n: int, height: int, width: int, seed: int = 0, dx: float = 1.0,
                    dy: float = 0.0) -> np.ndarray:
    """``n`` frames (n, H, W, 3) uint8 of a smooth random texture translating by (dx, dy)/frame.

    Smooth (low-pass) so JPEG keeps it well and optical flow has gradients to follow.
    """
    rng = np.random.default_rng(seed)
    big_h, big_w = height + int(abs(dy) * n) + 16, width + int(abs(dx) * n) + 16
    noise = rng.random((big_h // 4 + 2, big_w // 4 + 2, 3)).astype(np.float32)
    import cv2

    tex = cv2.resize(noise, (big_w, big_h), interpolation=cv2.INTER_CUBIC)
    tex = cv2.GaussianBlur(tex, (0, 0), 1.5)
    tex = (255 * (tex - tex.min()) / (tex.max() - tex.min() + 1e-6)).astype(np.float32)
    frames = []
    for t in range(n):
        m = np.float32([[1, 0, -8 - dx * t if dx >= 0 else -8 + dx * (n - t)],
                        [0, 1, -8 - dy * t if dy >= 0 else -8 + dy * (n - t)]])
        frames.append(cv2.warpAffine(tex, m, (width, height), flags=cv2.INTER_LINEAR))
    return np.clip(np.stack(frames) + 0.5, 0, 255).astype(np.uint8)


@pytest.fixture
def make_video(tmp_path):
    """make_video(name, n=8, size=(64, 48), codec="ffv1", seed=0) -> (path, frames)."""
    from tsn_pipeline.videoio import write_video

    def make(name: str, n: int = 8, size=(64, 48), codec: str = "ffv1", seed: int = 0,
             fps: float = 25.0, folder: Path = None):
        frames = textured_frames(n, size[1], size[0], seed=seed)
        path = Path(folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, frames, fps=fps, codec=codec)
        return path, frames

    return make


def run_tsn(*args, check=None, env=None, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """Run the real ``tsn`` command line in a subprocess (``python -m tsn_pipeline.cli``)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "tsn_pipeline.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=full_env, timeout=timeout, **kwargs)
    if check is not None and proc.returncode != check:
        raise AssertionError(f"tsn {' '.join(map(str, args))} exited {proc.returncode}, "
                             f"expected {check}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def cli_runner():
    """invoke(args) -> click Result, running ``cli.main`` in-process."""
    from click.testing import CliRunner

    from tsn_pipeline import cli

    runner = CliRunner()

    def invoke(*args, **kwargs):
        return runner.invoke(cli.main, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return invoke


@pytest.fixture
def small_fs():
    """mount(size, read_only) -> a folder on a fresh tmpfs of that size (root only)."""
    mounts = []

    def mount(size: str, read_only: bool = False) -> Path:
        where = Path(tempfile.mkdtemp(prefix="tsn-fs-"))
        opts = f"size={size}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            where.rmdir()
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); "
                        "test_write_error_via_file_size_limit covers the same path")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", str(where)], check=False)
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def one_torch_thread():
    """Tiny models and kernels run fastest on one torch thread, above all on a busy 2-core
    machine; the thread count is restored afterwards. Modules use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
