"""Time `gptlab prepare` recipes on one CPU core; print JSON and write
benchmarks/results/prepare_cpu.json.

    python benchmarks/bench_prepare.py [--shakespeare PATH] [--repeats 3] [--openbooks DIR]

Each run is a fresh subprocess pinned to core 0 (taskset where available)
with one thread for numpy/torch/tiktoken, so the numbers are single-core
figures including interpreter start-up and imports, as a user sees them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def run_once(args: list[str], workdir: Path, one_core: bool = True) -> tuple[float, float | None]:
    """(wall seconds of the process, seconds the recipe itself reports)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RAYON_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "gptlab.data.prepare", *args]
    if one_core:
        cmd += ["--num_threads", "1"]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", "0", *cmd]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=workdir, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    m = re.search(r" in ([0-9.]+)s:", r.stdout)
    return wall, (float(m.group(1)) if m else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shakespeare", default=str(DEFAULT_SHAKESPEARE), help="path of tinyshakespeare.txt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--openbooks", default=None, help="also time `prepare openbooks --input DIR` once, on all cores")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prepare_cpu.json"))
    a = ap.parse_args()
    recipes = [("zero_one", [])]
    if Path(a.shakespeare).is_file():
        recipes += [("shakespeare_char", ["--input", a.shakespeare]), ("shakespeare", ["--input", a.shakespeare])]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, extra in recipes:
            runs = [run_once([name, *extra, "--out", str(tmp / f"{name}{i}")], tmp) for i in range(a.repeats)]
            results[name] = {"cores": 1, "wall_seconds_min": round(min(w for w, _ in runs), 3),
                             "recipe_seconds_min": min((r for _, r in runs if r is not None), default=None),
                             "wall_seconds_all": [round(w, 3) for w, _ in runs]}
        if a.openbooks and Path(a.openbooks).is_dir():
            w, r = run_once(["openbooks", "--input", a.openbooks, "--out", str(tmp / "ob")], tmp, one_core=False)
            results["openbooks"] = {"cores": os.cpu_count(), "wall_seconds": round(w, 3), "recipe_seconds": r}
    report = {
        "benchmark": "prepare",
        "command": "python benchmarks/bench_prepare.py",
        "note": "wall: `python -m gptlab.data.prepare NAME` incl. interpreter start and imports, pinned to one core; "
                "recipe: the time prepare itself reports (generate/read, tokenise, write)",
        "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
        "python": platform.python_version(),
        "results": results,
    }
    print(json.dumps(report, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
