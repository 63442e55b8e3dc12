"""TV-L1's two hot functions compiled ahead of time for CPU, once per machine, kept on disk.

``torch.compile`` caches its kernels on disk, but every new process still imports
torch._dynamo/_inductor and traces the functions again before it can use them: ~10-15 s per
worker process on a 2-core machine (docs/FLOW.md), the same order as a whole shard's solving.
Here ``tvl1_step`` and ``warp_terms`` are exported (``torch.export``, dynamic batch, height and
width) and compiled by AOTInductor into a package per settings; a process loads a package in
~0.1-0.4 s without tracing or importing the compiler. The packages live in
``compile_cache_dir()/aoti/<key>``, where the key covers torch's version, the CPU's
instruction-set flags, the solver's source and the settings baked into the kernels
(lambda*theta, theta, tau/theta, the warp's interpolation), so a change of any of them
compiles anew and nothing stale is loaded. Loading takes no lock (a read-only cache serves);
the first process to need a package compiles it (~1-3 min) under a file lock, and the others
wait and load it. A package that does not load (damaged) is compiled again, with a warning;
a freshly compiled one that does not load is remembered (``<key>.unloadable``) and not
compiled again; where nothing can be compiled (no C++ compiler) ``cpu_kernels`` returns None,
with a warning, and the solver runs uncompiled.
"""
from __future__ import annotations

import fcntl
import hashlib
import inspect
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Dict, Optional

log = logging.getLogger(__name__)

NAMES = ("step", "warp")
# Inductor bakes the compiling process's thread count into CPU kernels (an OpenMP clause);
# the kernels are built single-threaded, as each flow worker process runs on one core
THREADS = 1
_LOADED: Dict[str, "CpuKernels"] = {}
_FAILED: Dict[str, str] = {}


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def package_key(params) -> str:
    """What the compiled kernels depend on, hashed: torch, CPU, solver source, settings."""
    import torch

    from . import tvl1_torch as T

    src = "".join(inspect.getsource(f) for f in (T.tvl1_step, T.warp_terms, T.warp_bicubic,
                                                  T._cubic_weights))
    parts = [torch.__version__, platform.machine(), _cpu_flags(), src,
             repr(T.step_constants(params)), params.interp, f"cpp.threads={THREADS}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def package_dir(params, key: Optional[str] = None) -> Path:
    """Where the packages of ``params`` (of ``key``, when computed already) live."""
    from .tvl1_torch import compile_cache_dir

    return Path(compile_cache_dir()) / "aoti" / (key or package_key(params))


class CpuKernels:
    """The loaded packages: ``step(*state, *consts, l_t, theta, taut)`` and
    ``terms(stack, i0, u1, u2, interp)`` with ``tvl1_step``'s and ``warp_terms``' signatures
    (the float settings are baked in: the package key covers them)."""

    def __init__(self, folder: Path, params):
        import torch

        from . import tvl1_torch as T

        self.folder, self.params = folder, params
        self._run = {name: torch._C._aoti.AOTIModelPackageLoader(
            str(folder / f"{name}.pt2"), "model", False, 1, -1) for name in NAMES}
        self._eager = {"step": T.tvl1_step, "warp": T.warp_terms}

    def _call(self, name, args):
        tensors = [a.contiguous() for a in args if not isinstance(a, (int, float, str))]
        h, w = tensors[-1].shape[-2:]
        if h < 3 or w < 3:          # outside the exported shapes (frames under 3 px)
            return self._eager[name](*args)
        return tuple(self._run[name].boxed_run(tensors))

    def step(self, *args):
        return self._call("step", args)

    def terms(self, *args):
        return self._call("warp", args)


def _build(folder: Path, params) -> None:
    """Export and compile both functions into ``folder`` (written whole or not at all)."""
    import torch
    import torch._inductor
    from torch.export import Dim

    from . import tvl1_torch as T

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = T.compile_cache_dir()   # the compiler's own caches
    l_t, theta, taut = T.step_constants(params)
    interp = params.interp

    class Step(torch.nn.Module):
        def forward(self, u1, u2, p11, p12, p21, p22, I1wx, I1wy, grad, rho_c):
            return T.tvl1_step(u1, u2, p11, p12, p21, p22, I1wx, I1wy, grad, rho_c,
                               l_t, theta, taut)

    class Warp(torch.nn.Module):
        def forward(self, stack, i0, u1, u2):
            return T.warp_terms(stack, i0, u1, u2, interp)

    n, h, w = Dim("n", min=1), Dim("h", min=3), Dim("w", min=3)
    nhw = {0: n, 1: h, 2: w}
    x = [torch.rand(4, 40, 48) for _ in range(10)]
    models = {"step": (Step(), tuple(x), (nhw,) * 10),
              "warp": (Warp(), (torch.rand(4, 3, 40, 48), *x[:3]),
                       ({0: n, 2: h, 3: w}, nhw, nhw, nhw))}
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with torch.no_grad(), torch._inductor.config.patch({"cpp.threads": THREADS}):
            for name, (model, args, dims) in models.items():
                ep = torch.export.export(model, args, dynamic_shapes=dims)
                torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp / f"{name}.pt2"))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(folder: Path, params) -> Optional[CpuKernels]:
    """The packages in ``folder``, or None when they are not there (raises if they do not
    load)."""
    if not all((folder / f"{n}.pt2").is_file() for n in NAMES):
        return None
    return CpuKernels(folder, params)


def _load_or_build(folder: Path, key: str, params) -> CpuKernels:
    try:               # no lock to load: a read-only or shared cache serves as it is
        kernels = _load(folder, params)
    except Exception:  # damaged, or being replaced: looked at again under the lock
        kernels = None
    if kernels is not None:
        return kernels
    unloadable = folder.parent / f"{key}.unloadable"
    if unloadable.is_file():
        raise RuntimeError(f"kernels compiled here did not load before ("
                           f"{unloadable.read_text().strip()}); remove {unloadable} to try again")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{key}.lock", "a") as lock:
        try:                                  # one process compiles, others wait
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another process is compiling the TV-L1 kernels into %s; waiting for "
                        "it (once per machine, ~1-3 min)", folder)
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            kernels = _load(folder, params)
        except Exception as exc:
            log.warning("compiled TV-L1 kernels in %s do not load (%s: %s); compiling them "
                        "again", folder, type(exc).__name__, exc)
        if kernels is not None:
            return kernels
        log.warning("compiling the TV-L1 kernels for this machine into %s (once; ~1-3 min)",
                    folder)
        _build(folder, params)
        try:
            return CpuKernels(folder, params)
        except Exception as exc:   # not damage: never rebuild it on every run
            unloadable.write_text(f"{type(exc).__name__}: {exc}\n")
            raise


def cpu_kernels(params) -> Optional[CpuKernels]:
    """The compiled CPU kernels for ``params``: loaded from the disk cache, compiled into it
    first when missing or damaged. None (warned once per process) when they cannot be
    compiled here; the caller then runs the functions eagerly."""
    try:
        key = package_key(params)
    except Exception as exc:      # no source to hash (a frozen install): never compiled
        key = f"unkeyed {exc}"
    if key in _LOADED or key in _FAILED:
        return _LOADED.get(key)
    try:
        if key.startswith("unkeyed"):
            raise RuntimeError(f"cannot key the kernel cache ({key[8:]})")
        kernels = _load_or_build(package_dir(params, key), key, params)
    except Exception as exc:
        _FAILED[key] = f"{type(exc).__name__}: {exc}"
        log.warning("cannot compile the TV-L1 kernels (%s); running the solver uncompiled "
                    "(2-4x slower)", _FAILED[key])
        log.debug("TV-L1 kernel compilation failed", exc_info=True)
        return None
    _LOADED[key] = kernels
    return kernels
