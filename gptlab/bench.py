"""`gptlab bench` (time the real training step) and `gptlab throughput` (Languini sweep), on random
batches already on the device, CUDA events after warm-up (the first step compiles: reported apart);
MFU from model.flops_per_token against the datasheet peak and a measured bf16 8192^3 matmul.
The timing pieces live in gptlab.bench_timing (importable from here as before)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import sys
import time
from pathlib import Path

import torch

from gptlab.args import ArgParser
from gptlab.bench_timing import (  # the timing pieces, importable from here as before
    KERNELS_HEADER,  # noqa: F401
    MAX_STEPS,
    THROUGHPUT_HEADER,
    _free,
    _peak_mem_gb,
    _random_batches,
    _rates,
    _sdpa_ctx,
    _sync,  # noqa: F401
    check_outputs,
    make_train_step,
    matmul_tflops,
    profile_step,
    time_steps,
)
from gptlab.budget import steps_for_budget, token_budget
from gptlab.config import COMPILE_MODES
from gptlab.config_files import build_config, parse_overrides
from gptlab.data.tokens import read_meta
from gptlab.distributed import pick_device
from gptlab.errors import UserError
from gptlab.files import atomic_write_json
from gptlab.loss import resolve_ce_chunk
from gptlab.metrics import device_peak_flops, fmt_mfu
from gptlab.model import derived_shape, padded_vocab
from gptlab.optim import build_optimizer
from gptlab.preflight import prepare_command
from gptlab.registry import build_model, flops_note, flops_per_token, init_weights, parameter_count
from gptlab.resolve import resolve
from gptlab.runtime import autocast_ctx, compile_model, resolve_data_dir

DEFAULT_VOCAB = 50257  # GPT-2 BPE, for presets that read their vocab from a dataset


def _build_for_timing(make_model, cfg, device, dtype):
    """Model (seeded, train mode), optimiser and (fp16 only) GradScaler, as training builds them."""
    torch.manual_seed(0)
    model = make_model().to(device).train()
    return (model, build_optimizer(model, cfg, device.type),
            torch.amp.GradScaler(device.type, enabled=dtype == torch.float16))


def run_hf_peer(cfg, shape, batch, seq, accum, device, dtype, compile_mode, steps, warmup, fpt, peak,
                mm) -> dict:
    """transformers' GPT2LMHeadModel on the same shapes, optimiser and step; eager and compiled."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise UserError("--peer hf needs transformers: pip install 'gptlab[hf]'") from None
    conf = GPT2Config(vocab_size=padded_vocab(shape.vocab_size, shape.pad_vocab_multiple),
                      n_positions=seq, n_embd=shape.n_embd, n_layer=shape.n_layer, n_head=shape.n_head,
                      n_inner=shape.mlp_dim, activation_function="gelu_new", resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=shape.tie_embeddings,
                      attn_implementation="sdpa")
    out = {}
    for label, mode in (("hf_eager", "none"),
                        ("hf_compiled", compile_mode if compile_mode != "none" else "default")):
        if mode != "none" and device.type == "cpu" and compile_mode == "none":
            continue  # CPU tests: skip the (slow) compiled peer unless asked for
        _free(device)
        model, opt, scaler = _build_for_timing(lambda: GPT2LMHeadModel(conf), cfg, device, dtype)
        # HF shifts labels itself: give it the inputs as labels (same loss work).
        step = make_train_step(compile_model(model, mode, dynamic=False), opt,
                               autocast_ctx(device, dtype), scaler, cfg.optim.grad_clip,
                               loss_of=lambda m, x, y: m(input_ids=x, labels=x).loss)
        batches = _random_batches(4, batch, seq, shape.vocab_size, accum, device, gen_seed=1)
        t = time_steps(step, batches, device, warmup, steps)
        out[label] = dict(t, **_rates(fpt, batch * seq * accum, t["ms_per_step"], peak, mm),
                          compile=mode, peak_mem_gb=_peak_mem_gb(device), params=parameter_count(model))
        del model, opt, step, batches
    _free(device)
    return out


def train_vocab(cfg) -> tuple[int, str]:
    """(vocabulary, where it comes from) as `gptlab train` with the same arguments has it: the
    config's, else the prepared dataset's; GPT-2's only when the dataset is not prepared here."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "set in the config"
    try:
        data_dir = resolve_data_dir(cfg.data.dataset, cfg.data.data_root)
    except UserError:
        return DEFAULT_VOCAB, (f"GPT-2 BPE assumed: dataset {cfg.data.dataset!r} is not prepared here; "
                               f"`{prepare_command(cfg.data.dataset, cfg.data.data_root)}` to time "
                               "train's vocab")
    return (int(read_meta(data_dir)["vocab_size"]),
            f"{cfg.data.dataset}'s, as train uses ({data_dir}/meta.json)")


def _setup(args, rest: list[str]):
    """(config, device, shape, FLOPs per token, datasheet peak, device name) of a bench/throughput call;
    the shape has the vocabulary training would use (train_vocab)."""
    cfg = build_config(args.preset or "gpt2", None, parse_overrides(rest, options=True))
    device = pick_device(args.device)
    shape = derived_shape(dataclasses.replace(cfg.model, vocab_size=train_vocab(cfg)[0]))
    with torch.device("meta"):  # the count needs the shape only
        fpt = flops_per_token(build_model(shape), shape.block_size)
    return cfg, device, shape, fpt, *device_peak_flops(device)


def bench(args, rest: list[str]) -> dict:
    cfg, device, shape, fpt, peak, dev_name = _setup(args, rest)
    # dtype and compile as training resolves them on this device (auto: compiled on CUDA only)
    resolved = resolve(cfg, world_size=1, device=device, data_meta=None)
    compile_mode, dtype = resolved.system.compile, getattr(torch, resolved.system.dtype)
    vocab, seq = shape.vocab_size, shape.block_size
    accum = cfg.train.gradient_accumulation_steps
    batch = cfg.train.batch_size or max(1, cfg.train.train_batch_size // max(1, accum))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    mm = matmul_tflops(device) if not args.no_matmul else None

    # --ce_chunk resolved as training does; per-block compile leaves the loss eager (plain is faster
    # there).
    ce_chunk = resolve_ce_chunk(cfg.system.ce_chunk,
                                compile_mode if args.compile_scope == "model" else "none",
                                padded_vocab(shape.vocab_size, shape.pad_vocab_multiple))
    model, opt, scaler = _build_for_timing(lambda: init_weights(build_model(shape)), cfg, device, dtype)
    _free(device)
    cm = compile_model(model, compile_mode, args.compile_scope, dynamic=False)
    step = make_train_step(cm, opt, autocast_ctx(device, dtype), scaler, cfg.optim.grad_clip, ce_chunk)
    batches = _random_batches(4, batch, seq, vocab, accum, device)
    with _sdpa_ctx(args.sdpa):
        t = time_steps(step, batches, device, args.warmup, args.steps)
        mem = _peak_mem_gb(device)  # before profiling
        prof = profile_step(step, batches, device, Path(args.profile)) if args.profile else None
    tokens_per_step = batch * seq * accum
    res = {
        "kind": "bench", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "gptlab bench " + " ".join(args.argv), "device": dev_name, "torch": torch.__version__,
        "preset": cfg.preset, "shape": dataclasses.asdict(shape), "vocab_source": train_vocab(cfg)[1],
        "params": parameter_count(model), "batch_size": batch, "seq_len": seq, "accum": accum,
        "tokens_per_step": tokens_per_step, "dtype": str(dtype).replace("torch.", ""),
        "compile": compile_mode, "compile_scope": args.compile_scope, "ce_chunk": ce_chunk,
        "sdpa": args.sdpa, "steps": args.steps, "warmup": args.warmup, "flops_per_token": fpt,
        "flops_formula": flops_note(model),
        "peak_table_tflops": peak / 1e12 if peak else None, "matmul_tflops": mm,
        **t, **_rates(fpt, tokens_per_step, t["ms_per_step"], peak, mm),
        "compile_s": t["first_step_s"] if compile_mode != "none" else 0.0,
        "peak_mem_gb": mem, **({"profile": prof} if prof else {}),
    }
    del model, cm, opt, step, batches
    _free(device)
    if args.peer == "hf":
        with _sdpa_ctx(args.sdpa):
            res["peer"] = run_hf_peer(cfg, shape, batch, seq, accum, device, dtype, compile_mode,
                                      args.steps, args.warmup, fpt, peak, mm)
        res["ratio"] = {f"vs_{k}": res["tokens_per_sec"] / v["tokens_per_sec"]
                        for k, v in res["peer"].items()}
    return res


def _line(label: str, r: dict) -> str:
    mem = f"{r['peak_mem_gb']:.2f} GiB" if r.get("peak_mem_gb") is not None else "n/a"
    return (f"{label:<12} {r['tokens_per_sec']:>12,.0f} tok/s  {r['ms_per_step']:8.2f} ms/step  "
            f"{r['tflops']:7.1f} TFLOP/s  MFU {fmt_mfu(r['mfu_table'])} (table) "
            f"{fmt_mfu(r.get('mfu_matmul'))} (matmul)  mem {mem}  first step {r['first_step_s']:.1f}s")


def format_bench(res: dict) -> str:
    mm = f"{res['matmul_tflops']:.0f} TFLOP/s" if res["matmul_tflops"] else "n/a"
    pk = f"{res['peak_table_tflops']:.1f} TFLOP/s" if res["peak_table_tflops"] else "n/a"
    out = [f"bench {res['preset']} on {res['device']} (torch {res['torch']}): batch {res['batch_size']} "
           f"x seq {res['seq_len']} x accum {res['accum']} = {res['tokens_per_step']:,} tokens/step, "
           f"{res['dtype']}, compile {res['compile']} ({res['compile_scope']}), ce_chunk "
           f"{res['ce_chunk']}, sdpa {res['sdpa']}",
           f"FLOPs/token {res['flops_per_token'] / 1e9:.3f} G ({res['flops_formula']}); peak {pk} "
           f"(table), bf16 8192^3 matmul measured {mm}",
           f"vocab {res['shape']['vocab_size']:,}: {res.get('vocab_source', 'set in the config')}",
           _line("gptlab", res)]
    out += [_line(k, v) for k, v in res.get("peer", {}).items()]
    out += [f"ratio gptlab/{k[3:]}: {v:.2f}x" for k, v in res.get("ratio", {}).items()]
    if "profile" in res:
        p = res["profile"]
        out += [f"profile: {p['trace']} | {p['kernels_csv']}", p["table"]]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    p = ArgParser(prog="gptlab bench", description="time the training step on random batches; any other "
                "--key value is a config override (batch_size, seq_len, dtype, compile, "
                "gradient_accumulation_steps...)")
    p.add_argument("preset", nargs="?", default="gpt2")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (the first compiles)")
    p.add_argument("--peer", choices=("none", "hf"), default="none",
                   help="hf: also time transformers' GPT2LMHeadModel")
    p.add_argument("--profile", default="",
                   help="path prefix: writes PREFIX_trace.json.gz and PREFIX_kernels.csv")
    p.add_argument("--json", default="", help="write the result as JSON here")
    p.add_argument("--device", default="auto")
    p.add_argument("--sdpa", choices=("auto", "cudnn", "flash", "efficient", "math"), default="auto")
    p.add_argument("--compile_scope", choices=("model", "blocks"), default="model")
    p.add_argument("--no_matmul", action="store_true", help="skip the 8192^3 matmul reference")
    args, rest = p.parse_known_args(argv)
    args.argv = list(argv)
    if not (1 <= args.steps <= MAX_STEPS and 1 <= args.warmup <= MAX_STEPS):
        raise UserError(f"--steps and --warmup must be from 1 to {MAX_STEPS:,}")
    check_outputs(args, "bench")
    res = bench(args, rest)
    print(format_bench(res), flush=True)
    _write_json(args.json, res)
    return 0


def _write_json(path: str, res: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(path), res)


# ---------------------------------------------------------------- throughput (Languini way)

COMPUTE_CLASS_HOURS = (6, 12, 24, 48, 96)


def languini_batch_sweep(measure, step: int = 8, max_batch: int = 0) -> dict[int, dict]:
    """{batch: measure(batch)} of the batches that fit (measure returns None for one that does
    not; above max_batch > 0 counts as not fitting), tried in the benchmark's order: 1, step,
    2*step, ... then the step halves whenever the next try would reach the smallest failure."""
    first = measure(1)
    if first is None:
        return {}  # not even one sequence fits
    rows, lo, hi, b = {1: first}, 1, float("inf"), step
    while step:
        r = None if max_batch and b > max_batch else measure(b)
        if r is None:
            hi = b
        else:
            lo, rows[b] = b, r
        if lo + step >= hi:
            step //= 2
        b = lo + step
    return rows


def throughput(args, rest: list[str]) -> dict:
    """The reference throughput of a config, swept as the benchmark does (languini_batch_sweep)."""
    cfg, device, shape, fpt, peak, dev_name = _setup(args, rest)
    on_gpu = device.type == "cuda"
    # The benchmark's way: fp16 + GradScaler, compiled. CPU: fp32 and eager (tests only).
    dtype = torch.float16 if on_gpu else torch.float32
    compile_mode = args.compile if on_gpu else "none"
    vocab, seq = shape.vocab_size, shape.block_size
    # Plain loss unless --ce_chunk N: the chunked one recompiles at every batch size, the plain one once.
    ce_chunk = max(cfg.system.ce_chunk, 0)
    model, opt, scaler = _build_for_timing(lambda: init_weights(build_model(shape)), cfg, device, dtype)
    cm = compile_model(model, compile_mode, dynamic=None)
    step = make_train_step(cm, opt, autocast_ctx(device, dtype), scaler, cfg.optim.grad_clip, ce_chunk)

    def measure(b):  # the timing row of one batch size, or None when it runs out of memory
        _free(device)
        try:
            batches = _random_batches(2, b, seq, vocab, 1, device)
            if compile_mode != "none" and not ce_chunk:
                # Batch dimension symbolic from the first size: one compile serves the sweep.
                for tensor in (tensor for micro in batches for xy in micro for tensor in xy):
                    torch._dynamo.mark_dynamic(tensor, 0)
            t = time_steps(step, batches, device, args.warmup, args.rounds)
        except torch.OutOfMemoryError:
            t = None
        opt.zero_grad(set_to_none=True)
        if t is None:
            _free(device)
            print(f"batch {b:>5}: out of memory", flush=True)
            return None
        r = _rates(fpt, b * seq, t["ms_per_step"], peak, None)
        print(f"batch {b:>5}: {r['tokens_per_sec']:>12,.0f} tok/s  {t['ms_per_step']:8.2f} ms/step  "
              f"MFU {fmt_mfu(r['mfu_table'])}", flush=True)
        return {"batch": b, "tokens_per_sec": r["tokens_per_sec"], "ms_per_step": t["ms_per_step"],
                "peak_mem_gb": _peak_mem_gb(device), "mfu_table": r["mfu_table"],
                "first_step_s": t["first_step_s"]}

    found = languini_batch_sweep(measure, args.batch_size_step, args.max_batch or (0 if on_gpu else 4))
    if not found:
        raise UserError(f"batch 1 does not fit on {dev_name}: use a smaller preset or --seq_len")
    rows = [found[b] for b in sorted(found)]
    # the benchmark's reference: the best of the sweep
    best = max(rows, key=lambda r: r["tokens_per_sec"])
    global_batch = (cfg.train.train_batch_size
                    or cfg.train.batch_size * cfg.train.gradient_accumulation_steps)
    tps = best["tokens_per_sec"]
    return {"kind": "throughput", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "gptlab throughput " + " ".join(args.argv), "device": dev_name,
            "torch": torch.__version__, "preset": cfg.preset, "seq_len": seq,
            "dtype": str(dtype).replace("torch.", ""), "compile": compile_mode, "ce_chunk": ce_chunk,
            "flops_per_token": fpt, "params": parameter_count(model),
            "peak_table_tflops": peak / 1e12 if peak else None, "rows": rows, "best": best,
            "largest_batch": rows[-1]["batch"], "train_batch_size": global_batch,
            # the hours -> steps table of the five compute classes at this throughput and batch
            "classes": [{"hours": h, "tokens": token_budget(h, tps),
                         "steps": steps_for_budget(h, tps, global_batch, seq)}
                        for h in COMPUTE_CLASS_HOURS]}


def throughput_main(argv: list[str]) -> int:
    p = ArgParser(prog="gptlab throughput",
                  description="reference tokens/s of a preset, swept as Languini does (batch "
                  "1, 8, 16, ... then bisection); fp16 + GradScaler, compiled (GPU); and the five "
                  "compute classes' steps")
    p.add_argument("preset")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", default="default", choices=COMPILE_MODES)
    p.add_argument("--batch_size_step", type=int, default=8,
                   help="first step of the batch grid (the benchmark's 8)")
    p.add_argument("--max_batch", type=int, default=0,
                   help="treat larger batches as not fitting (CPU default 4)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=15,
                   help="timed steps per batch size (the benchmark's 15)")
    p.add_argument("--csv", default="", help="write the rows here (else to stdout)")
    p.add_argument("--json", default="")
    args, rest = p.parse_known_args(argv)
    args.argv = list(argv)
    if not (1 <= args.rounds <= MAX_STEPS
            and 1 <= args.warmup <= MAX_STEPS) or args.batch_size_step < 1 \
            or args.max_batch < 0:
        raise UserError("--rounds, --warmup and --batch_size_step must be at least 1, --max_batch at "
                        "least 0")
    check_outputs(args, "throughput")
    res = throughput(args, rest)
    with open(args.csv, "w", newline="") if args.csv else contextlib.nullcontext(sys.stdout) as fh:
        csv.writer(fh).writerows([THROUGHPUT_HEADER] + [
            [r["batch"], f"{r['tokens_per_sec']:.0f}", f"{r['ms_per_step']:.3f}",
             "" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.3f}"] for r in res["rows"]])
    b = res["best"]
    print(f"best: batch {b['batch']} -> {b['tokens_per_sec']:,.0f} tokens/s on {res['device']} "
          f"({res['dtype']}, compile {res['compile']}; MFU {fmt_mfu(b['mfu_table'])}); largest batch "
          f"that fits {res['largest_batch']}; use --tokens_per_second {b['tokens_per_sec']:.0f}",
          flush=True)
    print(f"compute classes at train_batch_size {res['train_batch_size']} x seq_len {res['seq_len']}:",
          *(f"{c['hours']:3d}h: {c['tokens']:>16,} tokens  {c['steps']:>9,} steps"
            for c in res["classes"]), sep="\n")
    _write_json(args.json, res)
    return 0
