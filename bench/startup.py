"""Benchmark: start-up of the torch commands, from process start to first work.

Each command is the real CLI (`python -m tsn_pipeline.cli ...`, a new process) on a tiny
prepared input (2 test clips decoded at 64x48; 1 clip at 2 fps for flow; random-weight
checkpoints written by the training code), timed from outside, nothing instrumented:
- first_line: until its first stderr line: the progress bar's label, printed when the shard's
  first video starts (score, features, flow: the model or flow backend is ready); for
  `tsn train` the plan line it prints once data, model and optimiser are ready, just before
  the first step;
- total: until the process exits (for `tsn train`: 1 step of resnet18 at 32 px, its
  checkpoint and metrics plot).
The median of --reps runs, the commands interleaved; one untimed warm-up run per command
under `python -X importtime` says which heavy modules it imported and what they cost.
For reference, `python -c "import torch"` (the floor of every torch command here) and
torch's compiler (`import torch._dynamo`, imported by torchvision and torch.optim).
`tsn flow --backend torch` runs its compiled loop (C kernels, built at the warm-up if this
machine has none, then loaded: no compiler is imported either).
Goal: first work under 3 s. Prints and writes bench/results/startup.json.

    python bench/startup.py                # 5 runs per command
    python bench/startup.py --quick        # 2 runs, no torch flow
    python bench/startup.py --repo DIR     # time another checkout's CLI (same input)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import report  # noqa: E402

GOAL_S = 3.0
HEAVY = ("torch", "torchvision", "torch._dynamo", "torch._inductor", "matplotlib", "cv2",
         "h5py", "numpy", "click")


def timed_run(cmd, cwd: Path, env) -> dict:
    """Seconds to the first stderr line and to exit of ``cmd`` (stdout discarded)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first, lines = None, []
    for line in proc.stderr:
        if first is None:
            first = time.perf_counter() - t0
        lines.append(line)
    rc = proc.wait()
    total = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({rc}):\n{''.join(lines)[-3000:]}")
    return {"first_line": first, "total": total, "lines": lines}


def import_costs(lines) -> dict:
    """``-X importtime`` lines -> cumulative seconds of the HEAVY modules imported."""
    out = {}
    for line in lines:
        if line.startswith("import time:") and line.count("|") == 2:
            _, cum, name = line.split("|")
            if name.strip() in HEAVY and cum.strip().isdigit():
                out[name.strip()] = round(int(cum) / 1e6, 2)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 runs, no `tsn flow --backend torch`")
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose CLI is timed")
    ap.add_argument("--out-name", default="startup", help="results file bench/results/NAME.json")
    args = ap.parse_args()
    reps = 2 if args.quick else args.reps
    repo = args.repo.resolve()
    env = {**os.environ, "PYTHONPATH": str(repo)}
    tsn = [sys.executable, "-m", "tsn_pipeline.cli"]

    from bench.score import save_random_checkpoint

    work = Path(tempfile.mkdtemp(prefix="tsn-bench-startup-"))
    clips = [REPO / "tests" / "data" / n for n in ("TrumanShow_wave_f_nm_np1_fr_med_26.avi",
                                                   "v_SoccerJuggling_g23_c01.avi")]
    head = "video_id,path,label,class_name,split\n"
    (work / "list.csv").write_text(head + "".join(f"v{i},{c},{i},c{i},train\n"
                                                  for i, c in enumerate(clips)))
    (work / "list1.csv").write_text(head + f"v0,{clips[0]},0,c0,train\n")
    for lst, out, extra in (("list.csv", "frames", []), ("list1.csv", "frames1", ["--fps", "2"])):
        subprocess.run([*tsn, "decode", work / lst, "--out", work / out, "--size", "64x48",
                        "--no-progress", "--workers", "1", *extra], cwd=repo, env=env,
                       check=True, stdout=subprocess.DEVNULL)
    for arch in ("resnet18", "bninception"):
        save_random_checkpoint(work / f"{arch}.pt", arch, num_classes=2)
    frames = work / "frames"
    commands = {
        "train_resnet18": ["train", "--frames", frames, "--arch", "resnet18", "--input-size",
                           "32", "--iterations", "1", "--batch-size", "2", "--num-segments",
                           "1", "--workers", "0", "--out", work / "run", "--overwrite"],
        **{f"score_{a}": ["score", work / f"{a}.pt", "--frames", frames, "--out",
                          work / f"scores-{a}", "--num-snippets", "1", "--crops", "1",
                          "--overwrite"] for a in ("resnet18", "bninception")},
        "features_resnet18": ["features", work / "resnet18.pt", "--frames", frames, "--out",
                              work / "features", "--num-snippets", "1", "--overwrite"],
        "flow_opencv": ["flow", work / "frames1", "--out", work / "flow-cv", "--backend",
                        "opencv", "--workers", "1", "--overwrite"],
    }
    if not args.quick:
        commands["flow_torch_compiled"] = ["flow", work / "frames1", "--out", work / "flow-torch",
                                           "--backend", "torch", "--workers", "1", "--overwrite"]
    imports, runs = {}, {name: [] for name in commands}
    for name, cmd in commands.items():        # warm-up (page cache, compiled kernels)
        r = timed_run([sys.executable, "-X", "importtime", *tsn[1:], *cmd], repo, env)
        imports[name] = import_costs(r["lines"])
    base = {"import_torch": [], "import_torch_dynamo_after_torch": []}
    probe = ("import time; t = time.perf_counter(); import torch; "
             "a = time.perf_counter(); import torch._dynamo; "
             "print(a - t, time.perf_counter() - a)")
    names = list(commands)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            runs[name].append(timed_run([*tsn, *commands[name]], repo, env))
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True).stdout.split()
        base["import_torch"].append(float(out[0]))
        base["import_torch_dynamo_after_torch"].append(float(out[1]))

    def med(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 2) if values else None

    figures = {}
    for name, rs in runs.items():
        first_work = med([r["first_line"] for r in rs])
        figures[name] = {"first_work_s": first_work,
                         "first_line_s": med([r["first_line"] for r in rs]),
                         "total_s": med([r["total"] for r in rs]),
                         "runs_total_s": [round(r["total"], 2) for r in rs],
                         "first_line": (rs[0]["lines"] or [""])[0].strip()[:80],
                         "imports_s (warm-up, -X importtime)": imports[name]}
        figures[name]["goal_met"] = first_work is not None and first_work < GOAL_S
    result = {
        "goal": f"first work < {GOAL_S} s for the commands that need not import torch's "
                "compiler (train, score, features, flow: all of them now)",
        "first_work": "the first stderr line: score/features/flow the progress label, shown "
                      "when the first video starts; train its plan line, printed just before "
                      "the first step",
        "repo": "this checkout" if repo == REPO else repo.name,
        "reps": reps, "quick": args.quick,
        "input": "2 test clips at 64x48 (flow: 1 clip at 2 fps); random-weight checkpoints, "
                 "score --num-snippets 1 --crops 1, features --num-snippets 1",
        "commands": figures,
        "reference_s": {k: med(v) for k, v in base.items()},
    }
    report(args.out_name, result)


if __name__ == "__main__":
    main()
