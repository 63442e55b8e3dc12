"""Benchmark: `make demo` end to end, time per stage, and the accuracy table it prints.

Runs exactly the commands `make demo` runs (taken from `make -n demo` on a fresh OUT), one at
a time, and records each stage's wall time and CPU time (user + system of the child
processes). The goal of the demo is <= 10 minutes wall on 2 CPU cores; CPU time / cores is a
lower bound on the wall time a quiet machine of that size would need, so both are reported.
Prints and writes bench/results/demo.json (with --quick: demo_quick.json).

    python bench/demo.py              # the real demo (pipelines/demo.toml)
    python bench/demo.py --quick      # the small end-to-end test's settings (18 videos)
    python bench/demo.py --keep out/bench-demo
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import write_result  # noqa: E402

def stage_of(cmd: str) -> str:
    """`... bin/tsn --config X train --modality flow ...` -> "train-flow"."""
    m = re.search(r"bin/tsn (?:--config \S+ )?(\S+)", cmd)
    stage = m.group(1) if m else "other"
    if stage == "train":
        return "train-" + re.search(r"--modality (\w+)", cmd).group(1)
    if stage == "score":
        return "score-" + re.search(r"train-(\w+)/checkpoint", cmd).group(1)
    return stage


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the e2e test's 18-video settings")
    ap.add_argument("--keep", type=Path, default=None, help="output folder to keep (default: temp)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    out = args.keep or tmp / "out"
    if out.exists():
        shutil.rmtree(out)
    make = ["make", "-o", ".venv/bin/tsn", f"OUT={out}", "WORKERS=2"]
    if args.quick:
        sys.path.insert(0, str(REPO / "tests"))
        from test_demo import SMALL_DEMO_TOML

        cfg = tmp / "small.toml"
        cfg.write_text(SMALL_DEMO_TOML)
        make.append(f"demo_CFG={cfg}")
    plan = subprocess.run(make + ["-n", "demo"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.splitlines()
    commands = [c for c in plan if "bin/tsn" in c]
    rows, table = [], ""
    t_all, cpu_all = time.monotonic(), children_cpu()
    for cmd in commands:
        t0, c0 = time.monotonic(), children_cpu()
        proc = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True)
        wall, cpu = time.monotonic() - t0, children_cpu() - c0
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        rows.append({"stage": stage_of(cmd), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)})
        print(f"{rows[-1]['stage']:16s} wall {wall:7.1f} s   cpu {cpu:7.1f} s", flush=True)
        if " fuse " in cmd:
            table = proc.stdout
    total_wall, total_cpu = time.monotonic() - t_all, children_cpu() - cpu_all
    fused = json.loads((out / "split1" / "fused" / "fused.json").read_text())
    cores = os.cpu_count() or 1
    print(table)
    print(f"total wall {total_wall:.0f} s, cpu {total_cpu:.0f} s "
          f"(cpu / {cores} cores = {total_cpu / cores:.0f} s)")
    load = os.getloadavg()
    # the results file names no paths of the machine it ran on
    fused.pop("inputs", None)
    table = table.replace(str(out), "<out>")
    path = write_result("demo_quick" if args.quick else "demo", {
        "settings": "tests/test_demo.py SMALL_DEMO_TOML" if args.quick else "pipelines/demo.toml",
        "stages": rows, "total_wall_s": round(total_wall, 1), "total_cpu_s": round(total_cpu, 1),
        "cpu_over_cores_s": round(total_cpu / cores, 1), "load_average_after": load,
        "table": table, "fused": fused})
    print(f"wrote {path}")
    if args.keep is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
