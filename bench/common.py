"""Helpers shared by the benchmark scripts: machine facts and result files."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d"),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}
    try:
        import cv2
        info["opencv"] = cv2.__version__
    except ImportError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **result}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def report(name: str, result: dict) -> Path:
    """``write_result`` and print each figure, then where they were written."""
    path = write_result(name, result)
    for k, v in result.items():
        print(f"{k}: {v}")
    print(f"written {path}")
    return path


def repeated_clips(videos: Path, repeat: int, folder: Path) -> list:
    """Links ``<stem>_r<k><suffix>`` in ``folder`` to every clip in ``videos``, ``repeat``
    times (more videos without more disk); exits naming ``videos`` when it has no clip."""
    import sys

    clips = sorted(p for p in Path(videos).iterdir()
                   if p.is_file() and p.suffix in (".avi", ".mp4", ".mkv"))
    if not clips:
        sys.exit(f"no clips in {videos}")
    folder.mkdir(parents=True)
    for r in range(repeat):
        for c in clips:
            (folder / f"{c.stem}_r{r}{c.suffix}").symlink_to(c.resolve())
    return clips
