"""`gptlab sample --run DIR`: print samples from a trained run (KV-cache generation)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gptlab.errors import UserError


def load_run_tokenizer(run_dir: Path):
    from gptlab.data.tokenizers import tokenizer_from_meta

    meta_path = Path(run_dir) / "data_meta.json"
    if not meta_path.is_file():
        raise UserError(f"{run_dir} has no data_meta.json: it was not written by `gptlab train`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{meta_path} is not valid JSON: the run folder is damaged") from None
    return tokenizer_from_meta(meta, Path(run_dir)), meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gptlab sample", description="Sample text from a trained run.")
    p.add_argument("--run", required=True, help="run folder written by gptlab train")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint")
    p.add_argument("--prompt", default=None, help="text to continue (default: the end-of-text token or a newline)")
    p.add_argument("--prompt_file", default=None, help="read the prompt from this UTF-8 file")
    p.add_argument("--num_samples", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=200)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context each token")
    return p


def main(argv: list[str]) -> int:
    from gptlab import checkpoint as ck
    from gptlab.config import load_run_config
    from gptlab.generate import generate
    from gptlab.runtime import load_run_model

    a = build_parser().parse_args(argv)
    if a.num_samples <= 0 or a.max_new_tokens <= 0:
        raise UserError("--num_samples and --max_new_tokens must be positive")
    if a.temperature < 0:
        raise UserError("--temperature must be >= 0 (0 = greedy)")
    run = Path(a.run)
    cfg = load_run_config(run)
    tok, meta = load_run_tokenizer(run)
    model, device, autocast, _ = load_run_model(cfg, ck.find_checkpoint(run, a.checkpoint), a.device, a.dtype)
    if a.prompt_file:
        try:
            prompt = Path(a.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--prompt_file {a.prompt_file}: cannot read it as UTF-8 text ({e.__class__.__name__})") from None
    else:
        prompt = a.prompt
    if prompt:
        ids = tok.encode(prompt)
    elif tok.eot_id is not None:
        ids = [tok.eot_id]
    else:
        ids = tok.encode("\n")
    if not ids:
        raise UserError("the prompt encodes to no tokens: give a non-empty --prompt")
    if any(i >= model.shape.vocab_size for i in ids):
        raise UserError("the prompt holds tokens outside the model's vocabulary: use the run's tokenizer")
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(a.seed)
    n_new = 0
    t0 = time.time()
    for _ in range(a.num_samples):
        with autocast:
            out = generate(model, idx, a.max_new_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                           use_cache=not a.no_cache, generator=gen)
        n_new += out.size(1) - idx.size(1)
        print(tok.decode(out[0].tolist()))
        print("---------------")
    dt = time.time() - t0
    print(f"[{n_new} tokens in {dt:.2f}s: {n_new / max(dt, 1e-9):.1f} tokens/s, cache {'off' if a.no_cache else 'on'}]")
    return 0
