"""TV-L1's two hot loops in C for the CPU (``tvl1_cpu.c``), compiled once per machine.

``tvl1_step`` and ``warp_terms`` of ``tvl1_torch`` are written out in C, operation for
operation in the same order, and built with the system's C compiler (``$CC``, else cc, gcc or
clang) for this machine's CPU (``-O3 -march=native``, no fused multiply-adds). The warp terms
and the update of u equal the eager functions' to the bit; the dual variables differ in the
last bit where torch's CPU square root is not correctly rounded, and the stopping test's sum
is added up in another order. The build takes well under a second; the library is kept in
``compile_cache_dir()/native/tvl1-<key>.so``, where the key covers the source, the compiler,
its flags and the CPU's instruction-set flags (a cluster's nodes of different CPUs each get
their own). Every process (the flow workers, array tasks) loads it through ctypes in
milliseconds, without importing torch's compiler. A library that does not load is built
again, with a warning; where nothing can be built (no C compiler) ``cpu_kernels`` returns
None, with a warning, and the solver runs uncompiled.

Measured on an AMD EPYC core (AVX2; bench/flow.py, docs/FLOW.md): a batch of 8 pairs at
340x256 in 1.17 s against 5.14 s with the same functions compiled by TorchInductor (whose
loops load every shifted difference under a mask); the solver 7.5x OpenCV's CPU TV-L1 with
the same parameters.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Tuple

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("tvl1_cpu.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-fopenmp-simd", "-fPIC", "-shared")
_LOADED: Dict[str, "CpuKernels"] = {}
_FAILED: Dict[str, str] = {}

_F, _I64, _P = ctypes.c_float, ctypes.c_int64, ctypes.c_void_p


def compiler() -> Optional[str]:
    """The C compiler to build with: ``$CC`` when set, else the first of cc, gcc, clang."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in names:
        path = shutil.which(name)
        if path:
            return path
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


def library_key(cc: str) -> str:
    """What the built library depends on, hashed: source, compiler, flags, CPU."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"C compiler {cc} does not run: {exc}") from None
    parts = [SOURCE.read_text(), cc, version, " ".join(FLAGS), platform.machine(), _cpu_flags()]
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


def _build(cc: str, path: Path) -> None:
    """Compile the library into ``path`` (written whole, then renamed: concurrent builds of
    the same key each write their own file and the last rename wins)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        proc = subprocess.run([cc, *FLAGS, "-o", str(tmp), str(SOURCE), "-lm"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-1000:]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_or_build(cc: str, path: Path) -> CpuKernels:
    if path.is_file():
        try:
            return CpuKernels(path)
        except OSError as exc:
            log.warning("the compiled TV-L1 kernels in %s do not load (%s); building them "
                        "again", path, exc)
    log.info("building the TV-L1 CPU kernels for this machine into %s", path)
    _build(cc, path)
    return CpuKernels(path)


def cpu_kernels() -> Optional[CpuKernels]:
    """The C kernels, built first when this machine has none yet. None (warned once per
    process) when they cannot be built or loaded here; the caller then runs the eager torch
    functions."""
    cc = compiler()
    key = cc or "no compiler"
    if key in _LOADED or key in _FAILED:
        return _LOADED.get(key)
    try:
        if cc is None:
            raise RuntimeError("no C compiler found (set CC, or install cc, gcc or clang)")
        kernels = _load_or_build(cc, library_path(library_key(cc)))
    except Exception as exc:
        _FAILED[key] = f"{type(exc).__name__}: {exc}"
        log.warning("cannot build the TV-L1 CPU kernels (%s); running the solver uncompiled "
                    "(~4x slower)", _FAILED[key])
        return None
    _LOADED[key] = kernels
    return kernels
