"""Peak memory of `gptlab prepare hf` on a generated corpus: it must not grow with corpus size.

    python benchmarks/bench_prepare_memory.py [--size 2GB] [--format jsonl|parquet] [--num_proc 2] [--keep DIR]

Generates --size of text (random words, documents of 0.2-20 KB) as shards in a
temp dir (check `df -h /tmp`: the shards plus ~0.5x their size in bins), runs the
prepare as a subprocess and reports
  * peak RSS of the whole process tree (main + workers), sampled every 50 ms with psutil;
  * resource.getrusage(RUSAGE_CHILDREN).ru_maxrss: the largest single process.
Target: tree peak < 1.5 GB at any --size. Writes benchmarks/results/prepare_memory.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_size(s: str) -> int:
    s = s.strip().upper()
    for suf, m in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if s.endswith(suf):
            return int(float(s[: -len(suf)]) * m)
    return int(s)


def generate(d: Path, size: int, fmt: str, shard_bytes: int = 256 * 10**6, seed: int = 0) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    words = np.array([("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(1, 10)))))
                      for _ in range(20_000)] + [".", ",", "\n\n", "the", "of", "and"])
    total, docs, shard, buf, buf_bytes = 0, 0, 0, [], 0

    def flush():
        nonlocal shard, buf, buf_bytes
        if not buf:
            return
        name = d / f"train-{shard:05d}.{'jsonl' if fmt == 'jsonl' else 'parquet'}"
        if fmt == "jsonl":
            with open(name, "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": t}) + "\n" for t in buf)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"text": buf}), name, row_group_size=2000)
        shard, buf, buf_bytes = shard + 1, [], 0

    while total < size:
        n = int(rng.integers(40, 4000))
        t = " ".join(words[rng.integers(0, len(words), size=n)])
        buf.append(t)
        buf_bytes += len(t)
        total += len(t)
        docs += 1
        if buf_bytes >= shard_bytes:
            flush()
    flush()
    return total, docs


def run_measured(cmd: list[str], env: dict) -> tuple[float, int, float]:
    import psutil

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(p.pid)
    peak = 0
    while p.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out = p.stdout.read()
    if p.returncode:
        raise SystemExit(f"prepare failed ({p.returncode}):\n{out[-3000:]}")
    print(out.strip().splitlines()[-1])
    return time.perf_counter() - t0, peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2GB")
    ap.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    ap.add_argument("--num_proc", type=int, default=2)
    ap.add_argument("--keep", help="generate into this dir and keep it (default: a temp dir, removed)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prepare_memory.json"))
    a = ap.parse_args()
    size = parse_size(a.size)
    base = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="gptlab-mem-"))
    try:
        src = base / "corpus"
        src.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(base).free
        if free < size * 2:
            raise SystemExit(f"{base}: {free / 1e9:.1f} GB free, need about {size * 2 / 1e9:.1f} GB: use a smaller --size")
        t = time.perf_counter()
        nbytes, ndocs = generate(src, size, a.format)
        gen_s = time.perf_counter() - t
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "gptlab", "prepare", "hf", "--dataset", str(src), "--out", str(base / "out"),
               "--num_proc", str(a.num_proc), "--overwrite", "--no_progress"]
        secs, peak_tree, peak_child = run_measured(cmd, env)
        meta = json.loads((base / "out" / "meta.json").read_text())
        tokens = sum(s["tokens"] for s in meta["splits"].values())
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    res = {
        "benchmark": "prepare_memory", "command": "python benchmarks/bench_prepare_memory.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": platform.machine(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "corpus": {"format": a.format, "bytes": nbytes, "documents": ndocs, "generate_s": round(gen_s, 1)},
        "num_proc": a.num_proc, "tokens": tokens, "prepare_s": round(secs, 1), "MB_per_s": round(nbytes / secs / 1e6, 2),
        "peak_rss_tree_MB": round(peak_tree / 1e6, 1), "peak_rss_largest_process_MB": round(peak_child / 1e6, 1),
        "target_MB": 1500, "ok": peak_tree < 1.5e9,
        "note": "tree peak = max over 50 ms samples of the summed RSS of prepare and its workers (shared pages counted per process, so an over-estimate)",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
