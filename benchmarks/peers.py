"""gptlab side by side with its peers, on one device, in one process call.

How to run (normally through benchmarks/gpu_session.sh, which also runs the GPU tests first):
    python benchmarks/peers.py --nanogpt benchmarks/peers/nanoGPT \
        --languini benchmarks/peers/languini-kitchen --zero_one_data benchmarks/peers/data/zero_one \
        [--cases zero_one,shakespeare_char,gpt2_b16] [--levers cuda_graphs,cdt,foreach,eval_separate]
Cases run in CASES order (wall-time first) until --budget_s; each lever of --levers is measured alone
against the plain path in the same call (bench levers on the step cases, run levers on the wall cases).

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
import contextlib
import datetime as dt
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_runs import (  # noqa: E402
    H_ZERO_ONE,
    REPO,
    ZERO_ONE_ALL_TOKEN_FLOOR,
    cache_env,
    gptlab_cold_warm,
    gptlab_run,
    nanogpt_train_run,
    val_at_most,
    wall_rows,
)

from gptlab.optim import build_optimizer  # noqa: E402

# Per-step levers, each measured alone against the plain path in the same call (--levers a,b).
# where: "bench" (in-process `gptlab bench`), "run" (a whole `gptlab train` process).
LEVERS = {
    # CUDA graphs through torch.compile's cudagraph trees: same kernels, same numbers
    "cuda_graphs": {"compile": "reduce-overhead", "where": ("bench", "run")},
    # inductor tunes each Triton kernel's launch config: same math, reduction order may differ (fp rounding)
    "cdt": {"inductor": {"coordinate_descent_tuning": True},
            "env": {"TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1"}, "where": ("bench", "run")},
    # AdamW's foreach path instead of fused (fused also skips a non-finite step without a host sync)
    "foreach": {"optimizer": "foreach", "where": ("bench",)},
    # in-training evaluation as before issue 23 (compiled module in eval mode: a second graph)
    "eval_separate": {"env": {"GPTLAB_EVAL_GRAPH": "separate"}, "where": ("run",)},
    # the plain loss in the model's graph instead of the chunked one (whose chunk step compiles apart on
    # CUDA): one compile less for a short run; same loss, gradients within bf16 rounding
    "plain_loss": {"args": ["--ce_chunk", "0"], "where": ("run",)},
}
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


def _foreach_adamw(model, cfg, device_type):
    """gptlab's optimiser (same groups and hyper-parameters) on torch's foreach path instead of fused."""
    fused = build_optimizer(model, cfg, device_type)
    d = fused.defaults
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in fused.param_groups]
    return type(fused)(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], foreach=True)


def _with_compile(args: list[str], mode: str) -> list[str]:
    """args with `--compile MODE` (replacing any --compile given)."""
    out, skip = [], False
    for x in args:
        if skip or x == "--compile":
            skip = not skip
            continue
        out.append(x)
    return [*out, "--compile", mode]


@contextlib.contextmanager
def lever_applied(name: str | None, args: list[str]):
    """(args) with lever `name` on (LEVERS) for an in-process `gptlab bench`; the plain args for None."""
    lever = LEVERS.get(name or "", {})
    if "bench" not in lever.get("where", ("bench",)) and name:
        raise ValueError(f"lever {name} does not apply to gptlab bench")
    with contextlib.ExitStack() as stack:
        if lever.get("inductor"):
            import torch._inductor.config as inductor_config

            stack.enter_context(inductor_config.patch(**lever["inductor"]))
        if lever.get("optimizer") == "foreach":
            from gptlab import bench

            stack.callback(setattr, bench, "build_optimizer", bench.build_optimizer)
            bench.build_optimizer = _foreach_adamw
        yield _with_compile(args, lever["compile"]) if lever.get("compile") else args


def gptlab_bench(preset: str, args: list[str], a, lever: str | None = None) -> dict:
    with lever_applied(lever, args) as args:
        timing = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--no_matmul"]
        r = _gptlab_json("bench", [preset, *args, *timing])
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


# ------------------------------------------------------------------ the cases

def _row(case: str, ours: dict, peer: str | None, theirs: dict | None, **extra) -> dict:
    g, p = ours.get("tokens_per_s"), (theirs or {}).get("tokens_per_s")
    return {"case": case, "gptlab_tokens_per_s": g, "peer": peer, "peer_tokens_per_s": p,
            "ratio": g / p if g and p else None, "peak_mem_gib_gptlab": ours.get("peak_mem_gib"),
            "peak_mem_gib_peer": (theirs or {}).get("peak_mem_gib"), **extra}


def bench_lever_rows(case: str, preset: str, args: list[str], plain: dict, a) -> list[dict]:
    """gptlab bench with each asked lever (--levers) on alone, against the plain run of the same call."""
    rows = []
    for name in a.levers:
        if "bench" in LEVERS[name]["where"]:
            mine = gptlab_bench(preset, args, a, lever=name)
            rows.append(_row(f"{case}_lever_{name}", mine, "gptlab plain (same call)", plain, lever=name,
                             gptlab_mfu=mine["mfu"], peer_mfu=plain["mfu"]))
    return rows


def case_gpt2(batch: int, with_hf: bool):
    """with_hf: transformers' GPT2LMHeadModel too, when --hf is given (issue 23 targets nanoGPT only)."""
    def run(a, work):
        args = ["--batch_size", str(batch), *B16]
        ours = gptlab_bench("gpt2", args, a)
        rows = [_row(f"gpt2_b{batch}", ours, "nanoGPT", nanogpt_rate(a.nanogpt, GPT2, batch, a),
                     gptlab_mfu=ours["mfu"], note="bf16, compiled, fused AdamW, clip 1.0; nanoGPT model.py compiled")]
        if with_hf and a.hf:
            rows.append(_row(f"gpt2_b{batch}", ours, "transformers GPT2LMHeadModel", hf_rate(GPT2, batch, a),
                             note="sdpa attention, compiled"))
        return rows + bench_lever_rows(f"gpt2_b{batch}", "gpt2", args, ours, a)
    return run


def case_small_b32(a, work):
    args = ["--batch_size", "32", "--gradient_accumulation_steps", "1", "--dtype", "bfloat16",
            "--compile", "default"]
    ours = gptlab_bench("small", args, a)
    theirs = nanogpt_rate(a.nanogpt, SMALL, 32, a)
    return [_row("languini_small_b32", ours, "nanoGPT (same shape: fused QKV, tied)", theirs, gptlab_mfu=ours["mfu"],
                 note="gptlab: the Languini model (separate Q/K/V weights, untied, scaled embeddings), bf16")
            ] + bench_lever_rows("languini_small_b32", "small", args, ours, a)


def case_small_b128_fp16(a, work):
    ours = gptlab_throughput("small", 128, 128, a)
    theirs = languini_rate(a.languini, 128, flash=True)
    args = ["--batch_size", "128", "--gradient_accumulation_steps", "1", "--dtype", "float16"]
    return [_row("languini_small_b128_fp16", ours, "Languini GPT (own throughput test, use_flash)", theirs,
                 gptlab_mfu=ours["mfu"], note="fp16 + GradScaler, compiled, both sides")
            ] + bench_lever_rows("languini_small_b128_fp16", "small", args, ours, a)


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


def run_lever_rows(case: str, preset: str, extra: list[str], work: Path, timeout_s: float, done,
                   cold: dict, a) -> list[dict]:
    """A whole `gptlab train` process (fresh compile cache) with each asked run lever on alone,
    against the plain cold run of the same call: wall time and the loop's ms/step."""
    rows = []
    for name in a.levers:
        lever = LEVERS[name]
        if "run" not in lever["where"]:
            continue
        mode = ["--compile", lever["compile"]] if lever.get("compile") else []
        args = [*extra, *lever.get("args", []), *mode]
        fresh = cache_env(Path(tempfile.mkdtemp(prefix="inductor_", dir=work)))
        mine = gptlab_run(preset, args, work, timeout_s, done, f"lever_{name}",
                          dict(fresh, **lever.get("env", {})))
        both = mine["wall_s"] and cold["wall_s"]
        rows.append(_row(
            f"{case}_lever_{name}", mine, "gptlab plain cold run (same call)", cold, lever=name,
            gptlab_wall_s=mine["wall_s"], peer_wall_s=cold["wall_s"],
            wall_ratio=cold["wall_s"] / mine["wall_s"] if both else None,
            gptlab_reached=mine["reached"], gptlab_ms_per_step=mine["ms_per_step"],
            peer_ms_per_step=cold["ms_per_step"], gptlab_first_step_s=mine["first_step_s"],
            gptlab_compile_s=mine["compile_s"], gptlab_last_eval=mine["last_eval"],
            gptlab_log_tail=mine["log_tail"]))
    return rows


def case_shakespeare(a, work):
    """`gptlab train shakespeare_char` as whole processes (cold compile cache, then warm) to
    val <= 1.47, and nanoGPT's train.py with its config/train_shakespeare_char.py, cold."""
    extra, done = ["--dataset", str(_prepare_shakespeare(work))], val_at_most(1.47)
    limit_s = a.shakespeare_timeout_s
    cold, warm = gptlab_cold_warm("shakespeare_char", extra, work, limit_s, done)
    peer = nanogpt_train_run(a.nanogpt, work, limit_s, "shakespeare_char", 1.47)
    note = (f"wall time from the command to val <= 1.47, compile included; each run stopped at "
            f"{limit_s:.0f} s (reached false: not there by then)")
    rows = wall_rows("shakespeare_char", cold, warm, peer, 30.0, note)
    return rows + run_lever_rows("shakespeare_char", "shakespeare_char", extra, work, limit_s, done,
                                 cold, a)


def case_shakespeare_step(a, work):
    """gptlab's loop ms/step on the shakespeare_char recipe vs nanoGPT's model at its shape (6x384,
    b64 x 256, dropout 0.2, vocab 65) timed in-process: the step alone."""
    extra = ["--dataset", str(_prepare_shakespeare(work)), "--eval_interval", "0", "--max_iters", "400"]
    ours = gptlab_run("shakespeare_char", extra, work, a.run_timeout_s, lambda lines, recs: False)
    shape = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65)
    theirs = nanogpt_rate(a.nanogpt, shape, 64, a, dropout=0.2)
    return [_row("shakespeare_char_step", ours, "nanoGPT model.py, the recipe's step", theirs,
                 gptlab_ms_per_step=ours["ms_per_step"], peer_ms_per_step=theirs["ms_per_step"],
                 note="gptlab: median ms/step of its loop (400 steps, no evaluation); nanoGPT: the "
                      "step on random tokens, no data loader")]


def case_zero_one(a, work):
    """`gptlab train zero_one` as whole processes (cold, warm) to word loss <= 1.01 H(1/3), and
    nanoGPT's train.py on the same tokens with the same recipe (NANOGPT_ZERO_ONE) to all-token
    loss <= 1.01 x 0.6430."""
    if not a.zero_one_data:
        raise SystemExit("zero_one needs --zero_one_data (a prepared zero_one folder)")
    data = Path(a.zero_one_data).resolve()
    extra, done = ["--dataset", str(data)], val_at_most(1.01 * H_ZERO_ONE, "loss_excl_eot")
    limit_s = a.zero_one_timeout_s
    cold, warm = gptlab_cold_warm("zero_one", extra, work, limit_s, done)
    peer_bound = 1.01 * ZERO_ONE_ALL_TOKEN_FLOOR
    peer = nanogpt_train_run(a.nanogpt, work, limit_s, "zero_one", peer_bound, data)
    note = (f"wall time from the command to word loss <= 1.01 x H(1/3) = {1.01 * H_ZERO_ONE:.4f} "
            f"(nanoGPT: all-token loss <= {peer_bound:.4f}, its eval of 4 random batches; it also "
            "writes a checkpoint at each better val loss)")
    rows = wall_rows("zero_one", cold, warm, peer, 15.0, note)
    return rows + run_lever_rows("zero_one", "zero_one", extra, work, limit_s, done, cold, a)


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


CASES = {  # in priority order (issue 23): the wall-time cases, then the step against the peers
    "zero_one": case_zero_one,
    "shakespeare_char": case_shakespeare,
    "gpt2_b16": case_gpt2(16, with_hf=True),
    "gpt2_b32": case_gpt2(32, with_hf=False),
    "languini_small_b32": case_small_b32,
    "languini_small_b128_fp16": case_small_b128_fp16,
    "gpt2_loop": case_gpt2_loop,
    "languini_small_best": case_small_best,
    "shakespeare_char_step": case_shakespeare_step,
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
    p.add_argument("--zero_one_timeout_s", type=float, default=40,
                   help="limit of one zero_one run (target 15 s)")
    p.add_argument("--shakespeare_timeout_s", type=float, default=60,
                   help="limit of one shakespeare_char run (target 30 s)")
    p.add_argument("--hf", action="store_true", help="gpt2_b16 also times transformers' GPT2LMHeadModel")
    p.add_argument("--levers", default="",
                   help=f"comma list of per-step levers, each measured alone: {', '.join(LEVERS)}")
    p.add_argument("--loop_records", type=int, default=6, help="train records of the gpt2 loop before it stops")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no_compile", dest="compile", action="store_false", help="peers eager (CPU smoke runs)")
    a = p.parse_args(argv)
    unknown = [c for c in a.cases.split(",") if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}: choose from {', '.join(CASES)}")
    a.levers = [x for x in a.levers.split(",") if x]
    if set(a.levers) - set(LEVERS):
        p.error(f"unknown lever(s) {sorted(set(a.levers) - set(LEVERS))}: choose from {', '.join(LEVERS)}")
    run_cases(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
