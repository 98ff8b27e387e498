"""Whole training runs timed from the command, for benchmarks/peers.py: gptlab's own `gptlab train`
process (cold compile cache, then warm) next to nanoGPT's `train.py` for the same recipe.

A run is stopped (killed) as soon as its target is logged; wall time counts from the command, so it
holds interpreter start, imports, data checks and compilation. Each gptlab run gets its compile cache
folder through TORCHINDUCTOR_CACHE_DIR (and TRITON_CACHE_DIR inside it): "cold" is a fresh folder,
"warm" the same folder again. nanoGPT's run gets a fresh folder too (cold, like gptlab's first run).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
H_ZERO_ONE = -(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3)  # 0.6365 nats per word token
# zero_one's all-token floor (the <eot> after each 1,000 words costs about ln 1001 once): nanoGPT's
# loss counts every token, so its bound is this one (BENCHMARKS.md, "zero_one: time to the
# entropy bound").
ZERO_ONE_ALL_TOKEN_FLOOR = 0.6430
FIRST_STEP = re.compile(r"time to first step: ([\d.]+) s \(compile ([\d.]+) s\)")
NANOGPT_EVAL = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
NANOGPT_ITER = re.compile(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms")


def _records(out_dir: Path) -> list[dict]:
    """metrics.jsonl records written so far anywhere under out_dir (any run folder name)."""
    recs = []
    for p in sorted(Path(out_dir).glob("**/metrics.jsonl")):
        for line in p.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass  # a line being written
    return recs


def watch_run(
    cmd: list[str],
    cwd: Path,
    log: Path,
    timeout_s: float,
    done,
    out_dir: Path | None = None,
    env_extra: dict | None = None,
) -> dict:
    """Start cmd, poll its output and metrics every 0.2 s; kill it as soon as done(lines, records)."""
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.update(env_extra or {})
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        reached, wall = False, None
        while time.perf_counter() - t0 < timeout_s:
            time.sleep(0.2)
            lines = log.read_text(errors="replace").splitlines()
            if done(lines, _records(out_dir) if out_dir else []):
                reached, wall = True, time.perf_counter() - t0
                break
            if proc.poll() is not None:
                break
        if proc.poll() is None:  # reached (or out of time): the rest of the run is not needed
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lines = log.read_text(errors="replace").splitlines()
    return {
        "reached": reached,
        "wall_s": wall,
        "rc": proc.returncode,
        "lines": lines,
        "records": _records(out_dir) if out_dir else [],
        "elapsed_s": time.perf_counter() - t0,
    }


def median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def loop_rates(recs: list[dict]) -> dict:
    """Median ms/step and tokens/s between consecutive train records (the first interval, which
    holds the compile, left out)."""
    tr = [r for r in recs if r.get("kind") == "train" and "time_s" in r]
    ms, tps = [], []
    for a, b in list(zip(tr, tr[1:]))[1:]:
        dt_s, ds = b["time_s"] - a["time_s"], b["step"] - a["step"]
        if dt_s > 0 and ds > 0:
            ms.append(1000 * dt_s / ds)
            tps.append((b["tokens"] - a["tokens"]) / dt_s)
    return {"ms_per_step": median(ms), "tokens_per_s": median(tps), "intervals": len(ms)}


def val_at_most(limit: float, key: str = "loss"):
    def done(lines, recs):
        return any(
            r.get("kind") == "eval"
            and r.get("split", "val") == "val"
            and r.get(key, r.get("loss")) is not None
            and r.get(key, r.get("loss")) <= limit
            for r in recs
        )

    return done


def cache_env(folder: Path) -> dict:
    """A compile cache folder of its own (inductor's FX-graph/AOTAutograd caches, Triton's kernels)."""
    return {"TORCHINDUCTOR_CACHE_DIR": str(folder), "TRITON_CACHE_DIR": str(folder / "triton")}


def gptlab_run(
    preset: str,
    extra: list[str],
    work: Path,
    timeout_s: float,
    done,
    tag: str = "",
    env_extra: dict | None = None,
) -> dict:
    """`gptlab train PRESET EXTRA` as a whole process, stopped when done(lines, records)."""
    name = f"{preset}{'_' + tag if tag else ''}"
    out = work / f"run_{name}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "gptlab",
        "train",
        preset,
        "--out_dir",
        str(out),
        "--progress",
        "off",
        *extra,
    ]
    r = watch_run(cmd, work, work / f"log_{name}.txt", timeout_s, done, out, env_extra)
    evals = [r2 for r2 in r["records"] if r2.get("kind") == "eval"]
    first = next((m for line in r["lines"] if (m := FIRST_STEP.search(line))), None)
    return dict(
        loop_rates(r["records"]),
        reached=r["reached"],
        wall_s=r["wall_s"],
        rc=r["rc"],
        elapsed_s=round(r["elapsed_s"], 1),
        first_step_s=float(first.group(1)) if first else None,
        compile_s=float(first.group(2)) if first else None,
        last_eval=evals[-1] if evals else None,
        log_tail=r["lines"][-12:],
    )


def gptlab_cold_warm(
    preset: str,
    extra: list[str],
    work: Path,
    timeout_s: float,
    done,
    env_extra: dict | None = None,
    tag: str = "",
) -> tuple[dict, dict]:
    """The same command twice on one fresh compile cache: (cold, warm)."""
    env = dict(cache_env(Path(tempfile.mkdtemp(prefix="inductor_", dir=work))), **(env_extra or {}))
    cold = gptlab_run(preset, extra, work, timeout_s, done, f"cold{tag}", env)
    warm = gptlab_run(preset, extra, work, timeout_s, done, f"warm{tag}", env)
    return cold, warm


# ------------------------------------------------------------------ nanoGPT's train.py


def _nanogpt_scratch(path: Path, work: Path, name: str) -> Path:
    """A scratch copy of nanoGPT's train.py, model.py, configurator.py and config/ (it runs from
    its folder)."""
    w = work / f"nanogpt_{name}"
    w.mkdir(parents=True, exist_ok=True)
    for item in ("train.py", "model.py", "configurator.py", "config"):
        src = Path(path) / item
        if not src.exists():
            raise SystemExit(f"--nanogpt {path}: no {item} there (a checkout of karpathy/nanoGPT)")
        (
            shutil.copytree(src, w / item, dirs_exist_ok=True)
            if src.is_dir()
            else shutil.copy(src, w / item)
        )
    return w


def nanogpt_shakespeare_data(root: Path) -> None:
    """nanoGPT's shakespeare_char files (train.bin, val.bin, meta.pkl) made from the same verified text:
    sorted characters as ids, first 90% train - what its own prepare.py writes."""
    import pickle

    import numpy as np

    from gptlab.data.prepare import get_tinyshakespeare

    text, _ = get_tinyshakespeare(verbose=False)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    root.mkdir(parents=True, exist_ok=True)
    ids[:n].tofile(root / "train.bin")
    ids[n:].tofile(root / "val.bin")
    with open(root / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)


def nanogpt_bins_from_gptlab(data_dir: Path, root: Path) -> None:
    """nanoGPT's train.bin/val.bin (raw uint16, GPT-2 ids; no meta.pkl: its default vocab 50304)
    from a prepared gptlab dataset: the same tokens, read through gptlab's checked loader."""
    import numpy as np

    from gptlab.data import tokens as tk

    meta = tk.read_meta(data_dir)
    held_out = "val" if "val" in meta["splits"] else "test"
    root.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train"), (held_out, "val")):
        np.asarray(tk.load_split(data_dir, split, meta), dtype=np.uint16).tofile(
            root / f"{name}.bin"
        )


# nanoGPT config for gptlab's zero_one preset (config.PRESETS["zero_one"] and the defaults it keeps).
NANOGPT_ZERO_ONE = """
dataset = 'zero_one'
n_layer, n_head, n_embd, block_size, dropout, bias = 1, 12, 768, 512, 0.0, True
batch_size, gradient_accumulation_steps = 64, 1
learning_rate, min_lr, max_iters, lr_decay_iters, warmup_iters = 2e-3, 2e-4, 200, 200, 10
beta2, weight_decay, grad_clip = 0.95, 0.1, 1.0
eval_interval, eval_iters, log_interval = 10, 4, 10
always_save_checkpoint = False
"""


def nanogpt_train_run(
    path: Path,
    work: Path,
    timeout_s: float,
    recipe: str,
    limit: float,
    data_dir: Path | None = None,
) -> dict:
    """nanoGPT's train.py (compile on, its defaults) for `recipe` (shakespeare_char: its own
    config/train_shakespeare_char.py; zero_one: NANOGPT_ZERO_ONE), timed to val <= limit, cold
    compile cache."""
    w = _nanogpt_scratch(path, work, recipe)
    if recipe == "shakespeare_char":
        nanogpt_shakespeare_data(w / "data" / "shakespeare_char")
        config = "config/train_shakespeare_char.py"
    else:
        nanogpt_bins_from_gptlab(Path(data_dir), w / "data" / "zero_one")
        config = "config/train_zero_one.py"
        (w / config).write_text(NANOGPT_ZERO_ONE)

    def done(lines, _):
        return any(
            (m := NANOGPT_EVAL.search(line)) and float(m.group(3)) <= limit for line in lines
        )

    cmd = [sys.executable, "train.py", config, f"--out_dir={w / 'out'}"]
    env = cache_env(Path(tempfile.mkdtemp(prefix="inductor_nanogpt_", dir=work)))
    r = watch_run(cmd, w, work / f"log_nanogpt_{recipe}.txt", timeout_s, done, env_extra=env)
    ms = [
        float(m.group(2))
        for line in r["lines"]
        if (m := NANOGPT_ITER.search(line)) and int(m.group(1)) > 10
    ]
    vals = [
        (int(m.group(1)), float(m.group(3)))
        for line in r["lines"]
        if (m := NANOGPT_EVAL.search(line))
    ]
    return {
        "reached": r["reached"],
        "wall_s": r["wall_s"],
        "rc": r["rc"],
        "elapsed_s": round(r["elapsed_s"], 1),
        "ms_per_step": median(ms),
        "last_eval": vals[-1] if vals else None,
        "log_tail": r["lines"][-12:],
    }


def wall_rows(
    case: str, cold: dict, warm: dict, peer: dict | None, target_s: float, note: str
) -> list[dict]:
    """Rows for a wall-time case: gptlab cold vs nanoGPT (cold), and gptlab warm."""

    def row(run, tag, theirs):
        mine, peer_wall = run.get("wall_s"), (theirs or {}).get("wall_s")
        return {
            "case": f"{case}_{tag}",
            "gptlab_tokens_per_s": run.get("tokens_per_s"),
            "peer": "nanoGPT train.py (cold compile cache)" if theirs else None,
            "peer_tokens_per_s": None,
            "ratio": None,
            "peak_mem_gib_gptlab": None,
            "peak_mem_gib_peer": None,
            "gptlab_wall_s": mine,
            "peer_wall_s": peer_wall,
            "target_s": target_s,
            "wall_ratio": peer_wall / mine if mine and peer_wall else None,
            "gptlab_reached": run.get("reached"),
            "gptlab_elapsed_s": run.get("elapsed_s"),
            "gptlab_first_step_s": run.get("first_step_s"),
            "gptlab_compile_s": run.get("compile_s"),
            "gptlab_ms_per_step": run.get("ms_per_step"),
            "gptlab_last_eval": run.get("last_eval"),
            "gptlab_log_tail": run.get("log_tail"),
            "note": note,
            **(
                {
                    "peer_reached": theirs.get("reached"),
                    "peer_elapsed_s": theirs.get("elapsed_s"),
                    "peer_ms_per_step": theirs.get("ms_per_step"),
                    "peer_last_eval": theirs.get("last_eval"),
                    "peer_log_tail": theirs.get("log_tail"),
                }
                if theirs
                else {}
            ),
        }

    return [row(cold, "cold", peer), row(warm, "warm", None)]
