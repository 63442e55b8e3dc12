"""TV-L1's two hot loops in C for the CPU (``tvl1_cpu.c``), compiled once per machine.

``tvl1_step`` and ``warp_terms`` of ``tvl1_torch`` are written out in C, operation for
operation in the same order, and built with the system's C compiler (``$CC``, which may carry
arguments, else cc, gcc or clang) for this machine's CPU (``-O3 -march=native``, no fused
multiply-adds). The warp terms and the update of u equal the eager functions' to the bit; the
dual variables differ in the last bits (a few units at most) where torch's CPU square root is
not correctly rounded, and the stopping test's sum is added up in another order (which can
move a test by an iteration), the same on every CPU whatever its vector width. The compile takes well under a second, the first build ~2 s
with its check in a child process (which imports torch); the library is kept in
``compile_cache_dir()/native/tvl1-<key>.so``, where the key covers the source, the compiler,
its flags, the C library and the CPU's instruction-set flags (a cluster's nodes of different
CPUs each get their own). Every process (the flow workers, array tasks) loads it through
ctypes in milliseconds, without importing torch's compiler, and checks it on a small input
against the eager functions before using it (a compiler that ignores the flags above and
reassociates or contracts float arithmetic, or a damaged file, fails that check). A library
that does not load or fails the check is built again, with a warning; where nothing can be
built or checked (no C compiler) ``cpu_kernels`` returns None, with a warning, and the solver
runs uncompiled.

Measured on an AMD EPYC core (AVX2; bench/flow.py, docs/FLOW.md): a batch of 8 pairs at
340x256 in 1.1-1.4 s against 3.7-4.0 s with the same functions compiled by TorchInductor
(whose loops load every shifted difference under a mask); the solver 7.5-8.1x OpenCV's CPU
TV-L1 with the same parameters.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("tvl1_cpu.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-fopenmp-simd", "-fPIC", "-shared")
_LOADED: Dict[str, "CpuKernels"] = {}
_FAILED: Dict[str, str] = {}

_F, _I64, _P = ctypes.c_float, ctypes.c_int64, ctypes.c_void_p


def compiler() -> Optional[List[str]]:
    """The C compiler to build with, as a command (``$CC`` may be ``ccache gcc`` or carry
    flags): ``$CC`` when set, else the first of cc, gcc, clang; None when there is none."""
    cc = os.environ.get("CC", "").strip()
    try:
        commands = [shlex.split(cc)] if cc else [["cc"], ["gcc"], ["clang"]]
    except ValueError as exc:
        log.warning("CC=%s is not a command line (%s)", cc, exc)
        return None
    for cmd in commands:
        path = shutil.which(cmd[0])
        if path:
            return [path, *cmd[1:]]
    return None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def library_key(cc: List[str]) -> str:
    """What the built library depends on, hashed: source, compiler, flags, C library, CPU."""
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"C compiler {shlex.join(cc)} does not run: {exc}") from None
    parts = [SOURCE.read_text(), shlex.join(cc), version, " ".join(FLAGS), platform.machine(),
             " ".join(platform.libc_ver()), _cpu_flags()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def library_path(key: str) -> Path:
    from .tvl1_torch import compile_cache_dir

    return Path(compile_cache_dir()) / "native" / f"tvl1-{key}.so"


def _ptr(t) -> ctypes.c_void_p:
    return _P(t.data_ptr())


class CpuKernels:
    """The loaded library: ``step`` and ``terms`` with the signatures of ``tvl1_step`` and
    ``warp_terms`` (CPU tensors; float32, made contiguous)."""

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        self._step, self._terms = lib.tvl1_step, lib.tvl1_warp_terms
        self._step.argtypes = [_I64] * 3 + [_P] * 10 + [_F] * 3 + [_P] * 7
        self._step.restype = ctypes.c_int
        self._terms.argtypes = [_I64] * 3 + [_P] * 4 + [ctypes.c_int] + [_P] * 4
        self._terms.restype = None

    @staticmethod
    def _inputs(tensors) -> list:
        import torch

        out = []
        for t in tensors:
            if t.dtype != torch.float32 or t.device.type != "cpu":
                raise TypeError(f"the C TV-L1 kernels take float32 CPU tensors, not "
                                f"{t.dtype} on {t.device}")
            out.append(t.contiguous())
        return out

    def step(self, u1, u2, p11, p12, p21, p22, I1wx, I1wy, grad, rho_c,
             l_t: float, theta: float, taut: float) -> Tuple:
        import torch

        ins = self._inputs((u1, u2, p11, p12, p21, p22, I1wx, I1wy, grad, rho_c))
        n, h, w = ins[0].shape
        if any(t.shape != ins[0].shape for t in ins[1:]):
            raise ValueError(f"TV-L1 step: arrays of shapes {[tuple(t.shape) for t in ins]} "
                             "differ")
        outs = [torch.empty_like(ins[0]) for _ in range(6)]
        err = torch.empty(n, dtype=torch.float64)
        if self._step(n, h, w, *map(_ptr, ins), l_t, theta, taut, *map(_ptr, outs),
                      _ptr(err)):
            raise MemoryError("TV-L1 step: out of memory")
        return (*outs, err)

    def terms(self, stack, i0, u1, u2, interp: str) -> Tuple:
        import torch

        ins = self._inputs((stack, i0, u1, u2))
        n, h, w = ins[1].shape
        if tuple(ins[0].shape) != (n, 3, h, w) or any(t.shape != (n, h, w) for t in ins[2:]):
            raise ValueError(f"warp terms: stack {tuple(ins[0].shape)} and images "
                             f"{tuple(ins[1].shape)} do not match")
        outs = [torch.empty_like(ins[1]) for _ in range(4)]
        self._terms(n, h, w, *map(_ptr, ins), int(interp == "cpu"), *map(_ptr, outs))
        return tuple(outs)


def self_check(kernels: CpuKernels) -> None:
    """Raise unless ``kernels`` compute what the eager functions compute on a small input:
    u's update and both warps to the bit, the dual variables within a few units in the last
    place (torch's CPU square root), the stopping test's sum to float rounding."""
    import torch

    from . import tvl1_torch as T

    g = torch.Generator().manual_seed(0)        # rows of 37: the vector loops and their tails
    args = [torch.randn(2, 5, 37, generator=g) for _ in range(10)]
    args[8] = args[8].abs()
    consts = T.step_constants(T.TVL1Params())
    ref, out = T.tvl1_step(*args, *consts), kernels.step(*args, *consts)
    bad = [name for name, r, o in zip(("u1", "u2"), ref, out) if not torch.equal(r, o)]
    bad += [f"p{i}" for i, (r, o) in enumerate(zip(ref[2:6], out[2:6]))
            if not torch.allclose(r, o, rtol=1e-6, atol=1e-7)]
    if not torch.allclose(ref[6].double(), out[6], rtol=1e-5):
        bad.append("err")
    stack = torch.rand(2, 3, 5, 37, generator=g) * 255
    u1, u2 = torch.randn(2, 5, 37, generator=g) * 3, torch.randn(2, 5, 37, generator=g) * 3
    for interp in ("cuda", "cpu"):
        pairs = zip(T.warp_terms(stack, args[0], u1, u2, interp),
                    kernels.terms(stack, args[0], u1, u2, interp))
        bad += [f"warp({interp})" for r, o in pairs if not torch.equal(r, o)][:1]
    if bad:
        raise RuntimeError(f"{kernels.path} computes other numbers than the torch functions "
                           f"({', '.join(bad)}): a compiler that reassociates or contracts "
                           "float arithmetic, a damaged file, or torch's arithmetic changed")


def _subnormals_kept() -> bool:
    """False when this thread flushes subnormal floats to zero (what a library linked with
    -ffast-math switches on when it is loaded)."""
    import numpy as np

    return bool(np.float32(1e-38) * np.float32(1e-3) != 0)


def _checked(path: Path) -> CpuKernels:
    kept = _subnormals_kept()
    kernels = CpuKernels(path)
    if kept and not _subnormals_kept():
        raise RuntimeError(f"loading {path} made this process flush subnormal floats to zero "
                           "(it was linked with -ffast-math)")
    self_check(kernels)
    return kernels


_CHILD_CHECK = ("import sys; from pathlib import Path; from tsn_pipeline.flow import native; "
                "native._checked(Path(sys.argv[1]))")


def _check_in_child(path: Path) -> None:
    """``_checked(path)`` in a child process: a build is loaded here only once it passed (a
    library linked with -ffast-math changes the float mode of the process that loads it)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", _CHILD_CHECK, str(path)], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"]
        raise RuntimeError(lines[-1])


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _remove_stale_builds(folder: Path, older_than_s: float = 3600) -> None:
    """Temporary files of builds that were killed (a scheduler's time limit, say)."""
    for tmp in folder.glob("tvl1-*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
        except OSError:
            pass


def _build(cc: List[str], path: Path) -> CpuKernels:
    """Compile the library under a unique temporary name next to ``path``, check it in a
    child process, load it here under that name, then rename it to ``path`` (so a library that
    fails the check is neither loaded nor kept, and concurrent builds, from other processes or
    hosts sharing the folder, each write their own file; the last rename wins). Loading it
    under the temporary name also gives this process the new library when a stale one was
    loaded from ``path`` before: the dynamic loader reuses a loaded library by its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(path.parent)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        proc = subprocess.run([*cc, *FLAGS, "-o", str(tmp), str(SOURCE), "-lm"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cc)} failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-1000:]}")
        _check_in_child(tmp)
        os.chmod(tmp, 0o755 & ~_umask())   # readable as the cache folder's files are
        kernels = _checked(tmp)        # loaded under its own name: the file keeps its mapping
        os.replace(tmp, path)
        kernels.path = path
        return kernels
    finally:
        tmp.unlink(missing_ok=True)


def _load_or_build(cc: List[str], path: Path) -> CpuKernels:
    if path.is_file():
        try:
            return _checked(path)
        except Exception as exc:
            log.warning("the compiled TV-L1 kernels in %s do not load or check (%s); building "
                        "them again", path, exc)
    log.info("building the TV-L1 CPU kernels for this machine into %s", path)
    return _build(cc, path)


def cpu_kernels() -> Optional[CpuKernels]:
    """The C kernels, built first when this machine has none yet. None (warned once per
    process) when they cannot be built or loaded here; the caller then runs the eager torch
    functions."""
    cc = compiler()
    key = shlex.join(cc) if cc else "no compiler"
    if key in _LOADED or key in _FAILED:
        return _LOADED.get(key)
    try:
        if cc is None:
            raise RuntimeError("no C compiler found (set CC, or install cc, gcc or clang)")
        kernels = _load_or_build(cc, library_path(library_key(cc)))
    except Exception as exc:
        _FAILED[key] = f"{type(exc).__name__}: {exc}"
        log.warning("cannot build the TV-L1 CPU kernels (%s); running the solver uncompiled "
                    "(~5x slower)", _FAILED[key])
        return None
    _LOADED[key] = kernels
    return kernels
