"""`gptlab sample`: print samples from a run or from GPT-2 weights (KV-cache generation),
with nanoGPT's options and defaults (--start or FILE:prompt.txt, --num_samples 10, --top_k 200...)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from gptlab import hf
from gptlab.args import ArgParser, flag_bool
from gptlab.data.tokenizers import GPT2Tokenizer, tokenizer_from_meta
from gptlab.distributed import pick_device
from gptlab.errors import UserError
from gptlab.files import read_json
from gptlab.generate import generate
from gptlab.runs import load_run
from gptlab.runtime import autocast_ctx, resolve_dtype

ENDOFTEXT = "<|endoftext|>"
# Ceilings on work a typo could make unbounded (a prompt file of /dev/zero, --max_new_tokens 10**12).
MAX_PROMPT_BYTES = 1 << 20
MAX_NEW_TOKENS = 1_000_000
MAX_SAMPLES = 100_000


def build_parser() -> ArgParser:
    p = ArgParser(prog="gptlab sample", description="Sample text from a trained run or GPT-2 weights.")
    p.add_argument("--run", "--out_dir", dest="run", default=None,
                   help="run folder written by gptlab train")
    p.add_argument("--init_from", default="resume",
                   help="resume (the --run/--out_dir folder) | gpt2 | gpt2-medium | gpt2-large | "
                        "gpt2-xl | HF folder | RUN")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"),
                   help="which checkpoint of a run")
    p.add_argument("--start", "--prompt", dest="start", default="\n",
                   help="text to continue, or FILE:path to read it from a file; <|endoftext|> is the "
                        "special token")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    for name, default in (("num_samples", 10), ("max_new_tokens", 500), ("top_k", 200), ("seed", 1337)):
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--compile", type=flag_bool, default=False,
                   help="accepted for nanoGPT habits; sampling runs eagerly")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context each token")
    p.add_argument("--trust_code", action="store_true",
                   help="run the model idea's code that a run folder carries (read it first)")
    return p


def read_start(start: str) -> str:
    """The prompt text: --start as given, or the file named after FILE:."""
    if not start.startswith("FILE:"):
        return start
    path = Path(start[len("FILE:"):]).expanduser()
    try:
        # a pipe or /dev/stdin is fine: at most one byte past the limit is read
        with open(path, "rb") as f:
            data = f.read(MAX_PROMPT_BYTES + 1)
        if len(data) > MAX_PROMPT_BYTES:
            raise UserError(f"--start FILE:{path} holds more than {MAX_PROMPT_BYTES:,} bytes, the most "
                            "a prompt may be (the model sees only its last block_size tokens): give a "
                            "shorter file")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--start FILE:{path}: cannot read it as UTF-8 text "
                        f"({e.__class__.__name__})") from None


def encode_prompt(tok, text: str) -> list[int]:
    """Token ids of the prompt; each literal <|endoftext|> becomes the end-of-text token."""
    first, *rest = text.split(ENDOFTEXT)
    if rest and tok.eot_id is None:
        raise UserError(f"the prompt holds {ENDOFTEXT} but this tokenizer has no end-of-text token: "
                        "remove it")
    ids = tok.encode(first) if first else []
    for piece in rest:
        ids += [tok.eot_id] + (tok.encode(piece) if piece else [])
    if not ids and tok.eot_id is not None:  # e.g. "\n" in a tokenizer without a newline piece
        ids = [tok.eot_id]
    if not ids:
        raise UserError("the prompt encodes to no tokens: give a non-empty --start")
    return ids


def open_model(a, device: torch.device):
    """(model, tokenizer, what it is) for --init_from and --run/--out_dir."""
    src = a.init_from
    if src != "resume" and a.run:
        raise UserError(f"--init_from {src} and --run/--out_dir {a.run} name two models: pass one of "
                        "them")
    if src == "resume" and not a.run:
        raise UserError("pass --run RUN_DIR (or --out_dir), or --init_from gpt2 to sample OpenAI's "
                        "weights")
    src = a.run or src
    # a gptlab run or one of its checkpoints
    if a.run or Path(src).is_file() or (Path(src) / "checkpoints").is_dir():
        run = load_run(src, trust_code=a.trust_code)
        return run.build_model(device, a.checkpoint), run.tokenizer(), f"{run.checkpoint(a.checkpoint)}"
    model = hf.gpt_from_pretrained(src).to(device)
    meta = Path(src) / "data_meta.json"  # a gptlab export carries its run's own tokenizer
    if meta.is_file():
        return model, tokenizer_from_meta(read_json(meta, "the export's tokenizer meta"), Path(src)), src
    if model.config.vocab_size != GPT2Tokenizer.vocab_size:
        raise UserError(f"{src} has a vocabulary of {model.config.vocab_size}, not GPT-2's "
                        f"{GPT2Tokenizer.vocab_size}, and no data_meta.json naming its tokenizer: "
                        "export it again with `gptlab export`")
    return model, GPT2Tokenizer(), src


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    # Argument ranges, before any model is loaded.
    if not (0 < a.num_samples <= MAX_SAMPLES and 0 < a.max_new_tokens <= MAX_NEW_TOKENS):
        raise UserError(f"--num_samples must be in 1..{MAX_SAMPLES:,} and --max_new_tokens in "
                        f"1..{MAX_NEW_TOKENS:,} (got {a.num_samples} and {a.max_new_tokens}): ask for "
                        "fewer")
    if not 0 <= a.temperature < float("inf"):  # also refuses nan
        raise UserError(f"--temperature {a.temperature} must be a finite number >= 0 (0 = greedy; 0.8 "
                        "is usual)")
    if a.top_k < 0 or (a.top_p is not None and not 0 < a.top_p <= 1) or not 0 <= a.seed < 2**63:
        raise UserError("--top_k must be >= 0 (0 = off), --top_p in (0, 1] and --seed in 0..2**63-1")
    if a.compile:
        print("note: --compile has no effect on sampling (the KV-cache loop runs eagerly)")
    prompt = read_start(a.start)
    device = pick_device(a.device)
    model, tok, what = open_model(a, device)
    ids = encode_prompt(tok, prompt)
    if max(ids) >= model.config.vocab_size:
        raise UserError("the prompt holds tokens outside the model's vocabulary: use the run's "
                        "tokenizer")
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(a.seed)
    print(f"sampling {what}: {a.num_samples} x {a.max_new_tokens} tokens, temperature {a.temperature}, "
          f"top_k {a.top_k}")
    t0 = time.time()
    with autocast_ctx(device, resolve_dtype(a.dtype, device)):
        for _ in range(a.num_samples):
            out = generate(model, idx, a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                           top_p=a.top_p, use_cache=not a.no_cache, generator=gen)
            # .tolist(): the one CPU-GPU sync per sample
            print(tok.decode(out[0].tolist()), "---------------", sep="\n")
    dt, n_new = time.time() - t0, a.num_samples * a.max_new_tokens
    print(f"[{n_new} tokens in {dt:.2f}s: {n_new / max(dt, 1e-9):.1f} tokens/s, cache "
          f"{'on' if not a.no_cache and hasattr(model, 'new_cache') else 'off'}]")
    return 0
