"""The one meaning of a ``--device`` string (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

Reads and writes nothing. Train, score, features and flow resolve devices here, so ``auto``
means the same everywhere: the first CUDA device when torch sees one, else the CPU.
"""
from __future__ import annotations


def resolve_device(name: str = "auto"):
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names as given (a CUDA name
    without CUDA is a ValueError saying so). Returns a ``torch.device``."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return dev
