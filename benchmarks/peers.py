"""gptlab side by side with its peers, on one device, in one process call.

    python benchmarks/peers.py --nanogpt benchmarks/peers/nanoGPT \
        --languini benchmarks/peers/languini-kitchen --zero_one_data benchmarks/peers/data/zero_one

Peers are read from local checkouts whose paths are given (never copied into gptlab):
nanoGPT's model.py and train.py, Languini's GPT model and throughput test, and
transformers' GPT2LMHeadModel. gptlab's side always goes through `gptlab bench` /
`gptlab throughput` / `gptlab train` (the real training step and loop). Writes
<out>/<device>_peers.json after every case, rows:
  {case, gptlab_tokens_per_s, peer, peer_tokens_per_s, ratio, peak_mem_gib_gptlab,
   peak_mem_gib_peer, date, torch, ...}
ratio = gptlab / peer for rates; for wall-time cases (extra fields gptlab_wall_s,
peer_wall_s) ratio = peer_wall_s / gptlab_wall_s, so > 1 always means gptlab is faster.
Cases run in the order given until --budget_s is spent; the rest are listed as skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
H_ZERO_ONE = -(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3)  # 0.6365 nats per word token
GPT2 = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=16384)  # Languini small
B16 = ["--seq_len", "1024", "--vocab_size", "50257", "--gradient_accumulation_steps", "1",
       "--dtype", "bfloat16", "--compile", "default"]


# ------------------------------------------------------------------ peers' step timing

def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_mem():
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib():
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def time_peer_step(model, loss_of, opt, batch: int, seq: int, vocab: int, steps: int, warmup: int,
                   dtype=torch.bfloat16, accum: int = 1, clip: float = 1.0) -> dict:
    """nanoGPT train.py's step (autocast forward, backward, clip, AdamW) on random tokens on the device."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(1)
    # (B, T+1) random ids -> inputs (B, T), targets (B, T), contiguous; four batches rotated
    data = [torch.randint(0, vocab, (batch, seq + 1), generator=g) for _ in range(4)]
    data = [(d[:, :-1].contiguous().to(dev), d[:, 1:].contiguous().to(dev)) for d in data]
    ctx = torch.autocast(dev, dtype=dtype, enabled=dtype != torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(i):
        for k in range(accum):
            x, y = data[(i + k) % len(data)]
            with ctx:
                loss = loss_of(model, x, y) / accum
            loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for i in range(max(1, warmup)):  # the first step compiles
        step(i)
    _sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync()
    ms = (time.perf_counter() - t0) * 1000 / steps
    return {"tokens_per_s": batch * seq * accum / (ms / 1000), "ms_per_step": ms, "warmup_s": warm_s,
            "peak_mem_gib": _peak_gib()}


def load_nanogpt(path: Path):
    """nanoGPT's model.py as a module, from the checkout at path."""
    spec = importlib.util.spec_from_file_location("peer_nanogpt_model", Path(path) / "model.py")
    if spec is None or not (Path(path) / "model.py").is_file():
        raise SystemExit(f"--nanogpt {path}: no model.py there (a checkout of karpathy/nanoGPT)")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def nanogpt_rate(path: Path, shape: dict, batch: int, a, dropout: float = 0.0, accum: int = 1) -> dict:
    """nanoGPT's GPT of this shape, compiled, with its own fused-AdamW optimiser setup."""
    mod = load_nanogpt(path)
    _reset_mem()
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    conf = mod.GPTConfig(block_size=shape["block_size"], vocab_size=shape["vocab_size"], n_layer=shape["n_layer"],
                         n_head=shape["n_head"], n_embd=shape["n_embd"], dropout=dropout, bias=True)
    model = mod.GPT(conf).to(dev)
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), dev)
    cm = torch.compile(model) if a.compile else model
    r = time_peer_step(cm, lambda m, x, y: m(x, y)[1], opt, batch, shape["block_size"], shape["vocab_size"],
                       a.steps, a.warmup, accum=accum)
    del model, cm, opt
    return r


def hf_rate(shape: dict, batch: int, a) -> dict:
    """transformers' GPT2LMHeadModel (sdpa attention), compiled, fused AdamW."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _reset_mem()
    torch.manual_seed(0)
    conf = GPT2Config(vocab_size=shape["vocab_size"], n_positions=shape["block_size"], n_embd=shape["n_embd"],
                      n_layer=shape["n_layer"], n_head=shape["n_head"], activation_function="gelu_new",
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT2LMHeadModel(conf).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=dev == "cuda")
    cm = torch.compile(model) if a.compile else model
    # HF shifts the labels itself: the inputs are the labels (the same loss work)
    r = time_peer_step(cm, lambda m, x, y: m(input_ids=x, labels=x).loss, opt, batch, shape["block_size"],
                       shape["vocab_size"], a.steps, a.warmup)
    del model, cm, opt
    return r


def _munch_stub():
    """Languini's configs use munch.Munch (attribute dict); a stand-in when munch is not installed."""
    try:
        import munch  # noqa: F401
        return
    except ImportError:
        pass

    class Munch(dict):
        __getattr__ = dict.__getitem__
        __setattr__ = dict.__setitem__

        @property
        def __dict__(self):
            return dict(self)

    sys.modules["munch"] = types.SimpleNamespace(Munch=Munch)


def languini_rate(path: Path, batch: int, flash: bool, compile_mode: str = "default") -> dict:
    """Languini's own GPT and its own throughput test (fp16 autocast + GradScaler, Adam), small config."""
    root = Path(path).resolve()
    if not (root / "languini" / "projects" / "gpt" / "model.py").is_file():
        raise SystemExit(f"--languini {path}: no languini/projects/gpt/model.py there (a languini-kitchen checkout)")
    _munch_stub()
    # its model imports `lib` from the project folder and `languini` from the checkout
    sys.path[:0] = [str(root), str(root / "languini" / "projects" / "gpt")]
    from languini.common_lib import throughput_utils
    from languini.projects.gpt import configs
    from languini.projects.gpt import model as lmodel

    c = configs.load_config(name="small")
    c.train_batch_size, c.device, c.use_flash = batch, "cuda", flash
    _reset_mem()
    torch.manual_seed(0)
    m = lmodel.Model(config=c)
    if compile_mode != "None":
        m = torch.compile(m, mode=compile_mode)
    res = throughput_utils.throughput_test(config=c, model=m)
    return {"tokens_per_s": float(res["tokens per second"]), "ms_per_step": float(res["avg step duration in ms"]),
            "peak_mem_gib": _peak_gib()}


# ------------------------------------------------------------------ gptlab's side (its own CLI)

def _gptlab_json(cmd: str, argv: list[str]) -> dict:
    """`gptlab bench|throughput ARGV --json F` in this process; its JSON result."""
    from gptlab import bench

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        fn = bench.main if cmd == "bench" else bench.throughput_main
        _reset_mem()
        fn([*argv, "--json", str(out)])
        return json.loads(out.read_text())


def gptlab_bench(preset: str, args: list[str], a) -> dict:
    r = _gptlab_json("bench", [preset, *args, "--steps", str(a.steps), "--warmup", str(a.warmup), "--no_matmul"])
    return {"tokens_per_s": r["tokens_per_sec"], "ms_per_step": r["ms_per_step"], "peak_mem_gib": r.get("peak_mem_gb"),
            "mfu": r.get("mfu_table"), "compile_s": r.get("compile_s")}


def gptlab_throughput(preset: str, lo: int, hi: int, a) -> dict:
    """One batch (lo == hi): `gptlab bench` at that batch in the preset's fp16 recipe; a range: `gptlab throughput`
    (the benchmark's grid 1, 8, 16, ... then bisection) capped at `hi`."""
    if lo == hi:
        r = gptlab_bench(preset, ["--batch_size", str(lo), "--gradient_accumulation_steps", "1", "--dtype", "float16"], a)
        return dict(r, batch=lo, rows=[])
    r = _gptlab_json("throughput", [preset, "--max_batch", str(hi), "--warmup", str(a.warmup), "--rounds", str(a.steps)])
    b = r["best"]
    return {"tokens_per_s": b["tokens_per_sec"], "ms_per_step": b["ms_per_step"], "peak_mem_gib": b.get("peak_mem_gb"),
            "mfu": b.get("mfu_table"), "batch": b["batch"], "rows": r["rows"]}


# ------------------------------------------------------------------ whole runs, timed from the command

def _records(out_dir: Path) -> list[dict]:
    """metrics.jsonl records written so far anywhere under out_dir (the run folder's name may vary)."""
    recs = []
    for p in sorted(Path(out_dir).glob("**/metrics.jsonl")):
        for line in p.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass  # a line being written
    return recs


def watch_run(cmd: list[str], cwd: Path, log: Path, timeout_s: float, done, out_dir: Path | None = None) -> dict:
    """Start cmd, poll its output and metrics every 0.2 s; stop it (kill) as soon as done(lines, records).

    Wall time counts from the start of the command (interpreter start and compile included).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        reached, wall = False, None
        while time.perf_counter() - t0 < timeout_s:
            time.sleep(0.2)
            lines = log.read_text(errors="replace").splitlines()
            recs = _records(out_dir) if out_dir else []
            if done(lines, recs):
                reached, wall = True, time.perf_counter() - t0
                break
            if proc.poll() is not None:
                break
        if proc.poll() is None:  # reached (or out of time): the rest of the run is not needed
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lines = log.read_text(errors="replace").splitlines()
    return {"reached": reached, "wall_s": wall, "rc": proc.returncode, "lines": lines,
            "records": _records(out_dir) if out_dir else [], "elapsed_s": time.perf_counter() - t0}


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def loop_rates(recs: list[dict]) -> dict:
    """Median ms/step and tokens/s between consecutive train records (the first interval holds the compile)."""
    tr = [r for r in recs if r.get("kind") == "train" and "time_s" in r]
    ms, tps = [], []
    for a, b in list(zip(tr, tr[1:]))[1:]:
        dt_s, ds = b["time_s"] - a["time_s"], b["step"] - a["step"]
        if dt_s > 0 and ds > 0:
            ms.append(1000 * dt_s / ds)
            tps.append((b["tokens"] - a["tokens"]) / dt_s)
    return {"ms_per_step": _median(ms), "tokens_per_s": _median(tps), "intervals": len(ms)}


def _val_at_most(limit: float, key: str = "loss"):
    def done(lines, recs):
        return any(r.get("kind") == "eval" and r.get("split", "val") == "val" and r.get(key, r.get("loss")) is not None
                   and r.get(key, r.get("loss")) <= limit for r in recs)
    return done


def gptlab_run(preset: str, extra: list[str], work: Path, timeout_s: float, done) -> dict:
    out = work / f"run_{preset}"
    cmd = [sys.executable, "-m", "gptlab", "train", preset, "--out_dir", str(out), "--progress", "off", *extra]
    r = watch_run(cmd, work, work / f"log_{preset}.txt", timeout_s, done, out)
    evals = [r2 for r2 in r["records"] if r2.get("kind") == "eval"]
    return dict(loop_rates(r["records"]), reached=r["reached"], wall_s=r["wall_s"], rc=r["rc"],
                last_eval=evals[-1] if evals else None, log_tail=r["lines"][-12:])


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


def nanogpt_train_run(path: Path, work: Path, timeout_s: float, limit: float, extra: list[str]) -> dict:
    """nanoGPT's train.py with config/train_shakespeare_char.py (its defaults: compile on), timed to val <= limit."""
    import shutil

    w = work / "nanogpt"
    w.mkdir(parents=True, exist_ok=True)
    for name in ("train.py", "model.py", "configurator.py", "config"):  # a scratch copy: it runs from its folder
        src = Path(path) / name
        (shutil.copytree(src, w / name, dirs_exist_ok=True) if src.is_dir() else shutil.copy(src, w / name))
    nanogpt_shakespeare_data(w / "data" / "shakespeare_char")
    pat = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")

    def done(lines, _):
        return any((m := pat.search(l)) and float(m.group(3)) <= limit for l in lines)
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", f"--out_dir={w / 'out'}", *extra]
    r = watch_run(cmd, w, work / "log_nanogpt_shakespeare.txt", timeout_s, done)
    ms = []
    for line in r["lines"]:  # "iter N: loss X, time Yms, mfu Z%"; the first iterations compile
        m = re.search(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", line)
        if m and int(m.group(1)) > 10:
            ms.append(float(m.group(2)))
    vals = [(int(m.group(1)), float(m.group(3))) for l in r["lines"] if (m := pat.search(l))]
    return {"reached": r["reached"], "wall_s": r["wall_s"], "rc": r["rc"], "ms_per_step": _median(ms),
            "last_eval": vals[-1] if vals else None, "log_tail": r["lines"][-12:]}


# ------------------------------------------------------------------ the cases

def _row(case: str, ours: dict, peer: str | None, theirs: dict | None, **extra) -> dict:
    g, p = ours.get("tokens_per_s"), (theirs or {}).get("tokens_per_s")
    return {"case": case, "gptlab_tokens_per_s": g, "peer": peer, "peer_tokens_per_s": p,
            "ratio": g / p if g and p else None, "peak_mem_gib_gptlab": ours.get("peak_mem_gib"),
            "peak_mem_gib_peer": (theirs or {}).get("peak_mem_gib"), **extra}


def case_gpt2(batch: int, with_hf: bool):
    def run(a, work):
        ours = gptlab_bench("gpt2", ["--batch_size", str(batch), *B16], a)
        rows = [_row(f"gpt2_b{batch}", ours, "nanoGPT", nanogpt_rate(a.nanogpt, GPT2, batch, a),
                     gptlab_mfu=ours["mfu"], note="bf16, compiled, fused AdamW, clip 1.0; nanoGPT model.py compiled")]
        if with_hf:
            rows.append(_row(f"gpt2_b{batch}", ours, "transformers GPT2LMHeadModel", hf_rate(GPT2, batch, a),
                             note="sdpa attention, compiled"))
        return rows
    return run


def case_small_b32(a, work):
    ours = gptlab_bench("small", ["--batch_size", "32", "--gradient_accumulation_steps", "1", "--dtype", "bfloat16",
                                  "--compile", "default"], a)
    theirs = nanogpt_rate(a.nanogpt, SMALL, 32, a)
    return [_row("languini_small_b32", ours, "nanoGPT (same shape: fused QKV, tied)", theirs, gptlab_mfu=ours["mfu"],
                 note="gptlab: the Languini model (separate Q/K/V weights, untied, scaled embeddings), bf16")]


def case_small_b128_fp16(a, work):
    ours = gptlab_throughput("small", 128, 128, a)
    theirs = languini_rate(a.languini, 128, flash=True)
    return [_row("languini_small_b128_fp16", ours, "Languini GPT (own throughput test, use_flash)", theirs,
                 gptlab_mfu=ours["mfu"], note="fp16 + GradScaler, compiled, both sides")]


def case_small_best(a, work):
    ours = gptlab_throughput("small", 32, 512, a)
    return [_row("languini_small_best_batch", ours, None, None, gptlab_mfu=ours["mfu"], batch=ours["batch"],
                 sweep=[{k: r.get(k) for k in ("batch", "tokens_per_sec", "peak_mem_gb")} for r in ours["rows"]])]


def _prepare_shakespeare(work: Path) -> Path:
    """gptlab's shakespeare_char data, prepared untimed (the device has no network: the bundled text)."""
    data = work / "data" / "shakespeare_char"
    if not (data / "meta.json").is_file():
        env = dict(os.environ, GPTLAB_OFFLINE="1", PYTHONPATH=str(REPO))
        subprocess.run([sys.executable, "-m", "gptlab", "prepare", "shakespeare_char", "--out", str(data)], cwd=work,
                       env=env, check=True, capture_output=True, timeout=120)
    return data


def case_shakespeare(a, work):
    """`gptlab train shakespeare_char` timed from the command to val <= 1.47; nanoGPT's model at the recipe's
    shape (6x384, b64 x 256, dropout 0.2, vocab 65) timed in-process for the step rate."""
    ours = gptlab_run("shakespeare_char", ["--dataset", str(_prepare_shakespeare(work))], work, a.run_timeout_s,
                      _val_at_most(1.47))
    theirs = nanogpt_rate(a.nanogpt, dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65), 64, a,
                          dropout=0.2)
    return [_row("shakespeare_char", ours, "nanoGPT model.py, the recipe's step", theirs,
                 gptlab_wall_s=ours["wall_s"], gptlab_ms_per_step=ours["ms_per_step"],
                 peer_ms_per_step=theirs["ms_per_step"], gptlab_last_eval=ours["last_eval"],
                 gptlab_log_tail=ours["log_tail"],
                 note="gptlab: whole run, wall time from the command to val <= 1.47 (target 30 s), median ms/step "
                      "of its loop; nanoGPT: step on random tokens, no data loader or evaluation")]


def case_shakespeare_nanogpt(a, work):
    """Both recipes as whole runs: nanoGPT's train.py (config/train_shakespeare_char.py) vs `gptlab train`."""
    ours = gptlab_run("shakespeare_char", ["--dataset", str(_prepare_shakespeare(work))], work, a.run_timeout_s,
                      _val_at_most(1.47))
    theirs = nanogpt_train_run(a.nanogpt, work, a.run_timeout_s, 1.47, [])
    tok = 64 * 256  # the recipe's batch x block, both sides
    theirs["tokens_per_s"] = tok / (theirs["ms_per_step"] / 1000) if theirs.get("ms_per_step") else None
    return [_row("shakespeare_char_runs", ours, "nanoGPT train.py (config/train_shakespeare_char.py)", theirs,
                 gptlab_wall_s=ours["wall_s"], peer_wall_s=theirs["wall_s"],
                 gptlab_ms_per_step=ours["ms_per_step"], peer_ms_per_step=theirs["ms_per_step"],
                 wall_ratio=theirs["wall_s"] / ours["wall_s"] if ours["wall_s"] and theirs["wall_s"] else None,
                 gptlab_last_eval=ours["last_eval"], peer_last_eval=theirs["last_eval"],
                 gptlab_log_tail=ours["log_tail"], peer_log_tail=theirs["log_tail"],
                 note="wall time from the command to val <= 1.47 (compile included) on both sides")]


def case_zero_one(a, work):
    if not a.zero_one_data:
        raise SystemExit("zero_one needs --zero_one_data (a prepared zero_one folder)")
    ours = gptlab_run("zero_one", ["--dataset", str(Path(a.zero_one_data).resolve())], work, a.run_timeout_s,
                      _val_at_most(1.01 * H_ZERO_ONE, "loss_excl_eot"))
    return [_row("zero_one", ours, None, None, gptlab_wall_s=ours["wall_s"], gptlab_last_eval=ours["last_eval"],
                 gptlab_log_tail=ours["log_tail"],
                 note=f"wall time from the command to word loss <= 1.01 x H(1/3) = {1.01 * H_ZERO_ONE:.4f}; target 15 s")]


def case_gpt2_loop(a, work):
    """`gptlab train gpt2` as the preset stands (batch 12 x accumulation 40) vs `gptlab bench gpt2` and nanoGPT."""
    if not a.zero_one_data:
        raise SystemExit("gpt2_loop needs --zero_one_data (any prepared GPT-2 BPE folder)")
    n = a.loop_records

    def done(lines, recs):
        return sum(r.get("kind") == "train" for r in recs) >= n
    loop = gptlab_run("gpt2", ["--dataset", str(Path(a.zero_one_data).resolve()), "--log_interval", "1",
                               "--log_metrics_every", "1", "--eval_interval", "0", "--max_iters", "100000"],
                      work, a.run_timeout_s, done)
    steps, warm = a.steps, a.warmup
    a.steps, a.warmup = 3, 1  # 40 micro-batches a step
    try:
        bench = gptlab_bench("gpt2", ["--vocab_size", "50257"], a)
        theirs = nanogpt_rate(a.nanogpt, GPT2, 12, a, accum=40)
    finally:
        a.steps, a.warmup = steps, warm
    return [_row("gpt2_train_loop_vs_bench", loop, "gptlab bench (same preset)", bench, gptlab_log_tail=loop["log_tail"],
                 note="ratio >= 0.97 wanted: the loop within 3% of bench"),
            _row("gpt2_train_loop_vs_nanogpt", loop, "nanoGPT model.py, train.py defaults (b12 x accum 40)", theirs,
                 note="nanoGPT timed in-process on random tokens (no data loader); target >= 1.20")]


def case_lever_sdpa(a, work):
    """gptlab against itself, same call: SDPA pinned to flash vs cuDNN (gpt2 b16)."""
    flash = gptlab_bench("gpt2", ["--batch_size", "16", *B16, "--sdpa", "flash"], a)
    cudnn = gptlab_bench("gpt2", ["--batch_size", "16", *B16, "--sdpa", "cudnn"], a)
    return [_row("lever_sdpa_flash", flash, "gptlab --sdpa cudnn", cudnn, note="gpt2 b16 bf16 compiled")]


def case_lever_cuda_graphs(a, work):
    """gptlab against itself, same call: compile reduce-overhead (CUDA graphs) on the shakespeare_char shape."""
    char = ["--vocab_size", "65", "--dtype", "bfloat16"]
    graphs = gptlab_bench("shakespeare_char", [*char, "--compile", "reduce-overhead"], a)
    plain = gptlab_bench("shakespeare_char", [*char, "--compile", "default"], a)
    return [_row("lever_cuda_graphs_shakespeare_char", graphs, "gptlab --compile default", plain,
                 gptlab_ms_per_step=graphs["ms_per_step"], peer_ms_per_step=plain["ms_per_step"],
                 note="b64 x 256, 6x384, dropout 0.2, bf16")]


CASES = {
    "gpt2_b16": case_gpt2(16, with_hf=True),
    "languini_small_b32": case_small_b32,
    "languini_small_b128_fp16": case_small_b128_fp16,
    "zero_one": case_zero_one,
    "shakespeare_char": case_shakespeare,
    "gpt2_loop": case_gpt2_loop,
    "gpt2_b32": case_gpt2(32, with_hf=False),
    "languini_small_best": case_small_best,
    "shakespeare_char_runs": case_shakespeare_nanogpt,
    "lever_cuda_graphs": case_lever_cuda_graphs,
    "lever_sdpa": case_lever_sdpa,
}


def _device_slug() -> str:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _write(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def run_cases(a) -> dict:
    """Every asked case in order while the budget lasts; the JSON is rewritten after each."""
    out = Path(a.out) / f"{_device_slug()}_peers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="peers_"))
    doc = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
           "command": " ".join(sys.argv), "rows": [], "skipped": [], "errors": {}, "case_s": {}}
    t0 = time.perf_counter()
    for name in a.cases.split(","):
        if time.perf_counter() - t0 > a.budget_s:
            doc["skipped"].append(name)
            continue
        t = time.perf_counter()
        print(f"=== {name}", flush=True)
        try:
            for r in CASES[name](a, work):
                r.update(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), torch=torch.__version__)
                doc["rows"].append(r)
        except (Exception, SystemExit) as e:  # one broken case must not cost the others
            doc["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"case {name} failed: {type(e).__name__}: {e}", flush=True)
        doc["case_s"][name] = round(time.perf_counter() - t, 1)
        _write(out, doc)
    print_table(doc)
    print(f"wrote {out}")
    return doc


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(doc: dict) -> None:
    print(f"\n{doc['device']}, torch {doc['torch']}")
    print(f"{'case':<28} {'gptlab tok/s':>13} {'peer tok/s':>12} {'ratio':>6} {'GiB':>5} {'peer GiB':>8}  peer")
    for r in doc["rows"]:
        print(f"{r['case']:<28} {_fmt(r['gptlab_tokens_per_s'], ',.0f'):>13} {_fmt(r['peer_tokens_per_s'], ',.0f'):>12} "
              f"{_fmt(r['ratio'], '.2f'):>6} {_fmt(r['peak_mem_gib_gptlab'], '.1f'):>5} "
              f"{_fmt(r['peak_mem_gib_peer'], '.1f'):>8}  {r['peer'] or ''}"
              + (f"  wall {_fmt(r.get('gptlab_wall_s'), '.1f')}s vs {_fmt(r.get('peer_wall_s'), '.1f')}s"
                 if "gptlab_wall_s" in r else ""))
    for k, v in doc["errors"].items():
        print(f"ERROR {k}: {v[:300]}")
    if doc["skipped"]:
        print("skipped (budget): " + ", ".join(doc["skipped"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt", type=Path, required=True, help="checkout of karpathy/nanoGPT (model.py, train.py)")
    p.add_argument("--languini", type=Path, required=True, help="checkout of languini-kitchen")
    p.add_argument("--zero_one_data", default="", help="a prepared zero_one folder (GPT-2 BPE)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--cases", default=",".join(CASES), help="comma list, run in this order")
    p.add_argument("--budget_s", type=float, default=480, help="start no case after this many seconds")
    p.add_argument("--run_timeout_s", type=float, default=150, help="limit of one whole training run")
    p.add_argument("--loop_records", type=int, default=6, help="train records of the gpt2 loop before it stops")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no_compile", dest="compile", action="store_false", help="peers eager (CPU smoke runs)")
    a = p.parse_args(argv)
    unknown = [c for c in a.cases.split(",") if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}: choose from {', '.join(CASES)}")
    run_cases(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
