"""CPU figures for BENCHMARKS.md: training-step time and sampling speed with/without the KV cache.

    python benchmarks/bench_cpu.py [--threads 2] [--out benchmarks/results/cpu.json]

Train step: the `baby` preset shape (4 layers, 4 heads, 128 wide, block 64, char vocab 65,
batch 12) - forward, loss, backward, clip, fused AdamW - median over timed steps after
warm-up. Sampling: the same model generating 256 new tokens from a one-token prompt,
greedy, with and without the cache (identical tokens; the cache changes only speed);
and a wider model (6/6/384, block 256: the shakespeare_char shape) where the cache matters more.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from gptlab.config_files import build_config
from gptlab.generate import generate
from gptlab.loss import lm_loss
from gptlab.model import GPT
from gptlab.optim import build_optimizer
from gptlab.registry import parameter_count


def time_train_step(preset: str, vocab: int, steps: int, warmup: int) -> dict:
    cfg = build_config(preset, overrides={"vocab_size": vocab, "dropout": 0.0})
    torch.manual_seed(0)
    model = GPT(cfg.model).init_weights()
    opt = build_optimizer(model, cfg, "cpu")
    B, T = cfg.train.batch_size, cfg.model.block_size
    x = torch.randint(0, vocab, (B, T))
    y = torch.randint(0, vocab, (B, T))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = lm_loss(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1000
    return {"preset": preset, "batch": B, "seq_len": T, "params": parameter_count(model), "ms_per_step": ms,
            "tokens_per_sec": B * T / (ms / 1000)}


def time_sampling(preset: str, vocab: int, new_tokens: int) -> dict:
    cfg = build_config(preset, overrides={"vocab_size": vocab, "dropout": 0.0})
    torch.manual_seed(0)
    model = GPT(cfg.model).init_weights().eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    out = {}
    results = {}
    for use_cache in (True, False):
        generate(model, prompt, 8, temperature=0, use_cache=use_cache)  # warm-up
        t0 = time.perf_counter()
        toks = generate(model, prompt, new_tokens, temperature=0, use_cache=use_cache)
        dt = time.perf_counter() - t0
        results[use_cache] = toks
        out["cache" if use_cache else "no_cache"] = {"tokens_per_sec": new_tokens / dt, "seconds": dt}
    out["identical_tokens"] = bool(torch.equal(results[True], results[False]))
    out["speedup"] = out["cache"]["tokens_per_sec"] / out["no_cache"]["tokens_per_sec"]
    out.update(preset=preset, new_tokens=new_tokens, block_size=cfg.model.block_size, params=parameter_count(model))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default="benchmarks/results/cpu.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    res = {
        "date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
        f"{a.threads} torch threads", "torch": torch.__version__,
        "command": f"python benchmarks/bench_cpu.py --threads {a.threads}",
        "train_step": [time_train_step("baby", 65, a.steps, 5), time_train_step("shakespeare_char", 65, 5, 1)],
        "sampling": [time_sampling("baby", 65, 256), time_sampling("shakespeare_char", 65, 256)],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    for t in res["train_step"]:
        print(f"train step {t['preset']:>16}: {t['ms_per_step']:.1f} ms/step, {t['tokens_per_sec']:,.0f} tokens/s")
    for s in res["sampling"]:
        print(f"sampling   {s['preset']:>16}: cache {s['cache']['tokens_per_sec']:.0f} tok/s, no cache "
              f"{s['no_cache']['tokens_per_sec']:.0f} tok/s ({s['speedup']:.1f}x), identical={s['identical_tokens']}")


if __name__ == "__main__":
    main()
