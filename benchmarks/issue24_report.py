"""Helpers of benchmarks/issue24_multigpu.sh: random-token data, one JSON row per run, checkpoint checks, loss
comparison after a resume, waiting for a step, and the summary. `python benchmarks/issue24_report.py CMD ...`."""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def device() -> str:
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=20).stdout.split("\n")
        names = [n.strip() for n in names if n.strip()]
        if names:
            return f"{len(names)}x {names[0]}"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"cpu ({os.cpu_count()} cores, gloo)"


def data(out: str, n: str) -> None:
    """Random tokens (vocab 50257) through gptlab's token-file writer, as bench_multigpu.sh / bench_ddp.sh do."""
    import numpy as np

    from gptlab.data import tokens as T

    out_p, m = Path(out), int(n)
    if (out_p / "meta.json").is_file():
        print(f"random data already in {out_p}")
        return
    out_p.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def split(s, k):  # one document per split
        w = T.SplitWriter(out_p, s, np.uint16)
        w.append(rng.integers(0, 50257, size=k), np.array([k]))
        return w.finish()

    splits = {s: split(s, k) for s, k in (("train", m), ("val", 100_000))}
    T.write_meta(out_p, {"tokenizer": {"kind": "gpt2"}, "vocab_size": 50257, "dtype": "uint16", "eot_id": None,
                         "splits": splits, "source": {"kind": "random", "seed": 0}})
    print(f"random data: {m:,} train tokens in {out_p}")


def _train(run: str) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return [r for r in rows if r.get("kind") == "train"]


def _losses(run: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _train(run)}


def row(results: str, fields: str) -> None:
    """Append one row: FIELDS is a JSON object (name, case, run, rc, wall_s, world, command, ...)."""
    r = json.loads(fields)
    r.update(device=DEVICE, date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    train = _train(r.get("run", "")) if r.get("run") else []
    timed = train[1:] or train  # the first interval holds compilation and warm-up
    if timed and "tokens_per_sec" in timed[0]:
        tps = statistics.median(x["tokens_per_sec"] for x in timed)
        r.update(tokens_per_sec=tps, tokens_per_sec_per_gpu=tps / r.get("world", 1), intervals=len(timed),
                 ms_per_step=statistics.median(x["ms_per_step"] for x in timed), last_step=train[-1]["step"],
                 peak_mem_gb=train[-1].get("peak_mem_gb"), mfu=train[-1].get("mfu"))
    with open(results, "a") as f:
        f.write(json.dumps(r) + "\n")
    keys = ("name", "rc", "wall_s", "tokens_per_sec_per_gpu", "ok", "error")
    print("ROW " + json.dumps({k: r[k] for k in keys if k in r}))


def ckpts(run: str, expect: str = "") -> None:
    """JSON: every numbered checkpoint verified, its DCP folder whole; the expected steps all present."""
    from gptlab import checkpoint as ck

    found, problems = [], []
    for p in ck.list_checkpoints(Path(run)):
        step = ck.ckpt_step(p)
        found.append(step)
        bad = ck.verify(p)
        if bad:
            problems.append(f"{p.name}: {bad}")
            continue
        state = ck.load_checkpoint(p, check=False)
        sharded = state.get("sharded")
        if sharded:
            name = sharded["name"] if isinstance(sharded, dict) else sharded
            folder = ck.checkpoint_dir(Path(run)) / name
            if not (folder / ".metadata").is_file():
                problems.append(f"{p.name}: DCP folder {folder.name} incomplete or missing")
    want = sorted(int(s) for s in expect.split(",") if s)
    lost = [s for s in want if s not in found]
    latest = ck.load_latest_valid(Path(run), warn=lambda m: None)
    print(json.dumps({"steps": sorted(found), "problems": problems, "lost": lost,
                      "newest_valid": latest[0]["step"] if latest else None,
                      "ok": not problems and not lost and latest is not None}))


def compare(ref: str, run: str, after: str, tol: str = "0") -> None:
    """JSON: losses of RUN at steps > AFTER against REF (an uninterrupted run): bit-identical or not; ok when
    there are such steps and every difference is at most TOL (0: bit-identical)."""
    a, b = _losses(ref), _losses(run)
    steps = sorted(s for s in b if s > int(after) and s in a)
    diffs = [abs(a[s] - b[s]) for s in steps]
    print(json.dumps({"steps": steps, "max_abs_diff": max(diffs) if diffs else None,
                      "bit_identical": bool(steps) and all(a[s] == b[s] for s in steps),
                      "tolerance": None if float(tol) == float("inf") else float(tol),
                      "ok": bool(steps) and max(diffs) <= float(tol)}))


def wait_step(run: str, step: str, timeout: str) -> None:
    end = time.time() + float(timeout)
    while time.time() < end:
        train = _train(run)
        if train and train[-1]["step"] >= int(step):
            print(train[-1]["step"])
            return
        time.sleep(0.5)
    print(-1)


def summary(results: str, out: str) -> None:
    rows = [json.loads(x) for x in Path(results).read_text().splitlines() if x.strip()]
    base = {r["accum"]: r["tokens_per_sec_per_gpu"] for r in rows
            if r.get("case") == "ddp" and r.get("world") == 1 and "tokens_per_sec_per_gpu" in r}
    lines = []
    for r in rows:
        if r.get("case") == "ddp" and r.get("world", 1) > 1 and r.get("accum") in base and "tokens_per_sec_per_gpu" in r:
            r["per_gpu_vs_1gpu"] = r["tokens_per_sec_per_gpu"] / base[r["accum"]]
        extra = (f" {100 * r['per_gpu_vs_1gpu']:.1f}% of 1 GPU" if "per_gpu_vs_1gpu" in r else "")
        tps = f" {r['tokens_per_sec_per_gpu']:,.0f} tok/s/gpu" if "tokens_per_sec_per_gpu" in r else ""
        ok = "" if "ok" not in r else (" ok" if r["ok"] else " NOT OK")
        lines.append(f"{r['case']:7s} {r['name']:28s} rc={r.get('rc')} {r.get('wall_s', '?')}s{tps}{extra}{ok}"
                     + (f" ({r['note']})" if r.get("note") else ""))
    checks = [r for r in rows if "ok" in r]
    res = {"device": DEVICE, "rows": rows, "checks_ok": sum(bool(r["ok"]) for r in checks),
           "checks": len(checks), "not_available": {
               "static_graph": "no config key (gptlab/config.py, gptlab/distributed.py have none)",
               "compiled_autograd": "no config key"}}
    Path(out, "summary.json").write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(lines))
    print(f"checks passed: {res['checks_ok']}/{res['checks']}")


DEVICE = os.environ.get("ISSUE24_DEVICE") or ""
if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "device":
        print(device())
    else:
        DEVICE = DEVICE or device()
        {"data": data, "row": row, "ckpts": ckpts, "compare": compare, "wait_step": wait_step,
         "summary": summary}[cmd](*args)
