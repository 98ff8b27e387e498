"""The one evaluation routine: in training (capped) and in `gptlab eval` (whole split).

A split is one stream of N tokens. Windows of seq_len tokens advance by last_n:

    window 0 starts at 0 and scores all of its targets (there is no earlier context);
    window k >= 1 starts at k*last_n and scores only its last last_n targets,

so every target (token 1..N-1) is scored exactly once, and all but the first seq_len
are predicted from at least seq_len - last_n tokens of context. last_n = seq_len gives
plain non-overlapping windows. Targets past the end are padding (-1) and are excluded.

Reported: loss (nats/token), perplexity, loss per UTF-8 byte, bits per byte,
normalised perplexity exp(total nll / total bytes) - a tokenizer-independent figure -,
top-1 / top-10 accuracy, token and byte counts.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptlab.errors import UserError
from gptlab.loss import logits_and_loss


def window_plan(n_tokens: int, seq_len: int, last_n: int) -> np.ndarray:
    """Start offsets of the evaluation windows (see module docstring)."""
    if last_n <= 0:
        last_n = seq_len
    if seq_len % last_n:
        raise UserError(f"--last_n {last_n} must divide seq_len {seq_len}")
    if n_tokens < 2:
        raise UserError(f"the evaluation split has {n_tokens} tokens; it needs at least 2")
    last_target = n_tokens - 1
    starts = [0]
    s = last_n
    # window at s scores targets s+seq_len-last_n+1 .. s+seq_len; keep it while any exist.
    while last_target > seq_len and s + seq_len - last_n + 1 <= last_target:
        starts.append(s)
        s += last_n
    return np.asarray(starts, dtype=np.int64)


def build_batch(tokens: np.ndarray, starts: np.ndarray, seq_len: int, last_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets for windows at `starts`; unscored and padded targets are -1."""
    n = len(tokens)
    B = len(starts)
    x = np.zeros((B, seq_len), dtype=np.int64)
    y = np.full((B, seq_len), -1, dtype=np.int64)
    for i, s in enumerate(starts):
        s = int(s)
        inp = tokens[s: min(n, s + seq_len)]
        tgt = tokens[s + 1: min(n, s + seq_len + 1)]
        x[i, : len(inp)] = inp
        y[i, : len(tgt)] = tgt
        if s > 0:  # only the last last_n targets are new
            y[i, : seq_len - last_n] = -1
    return torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: np.ndarray, seq_len: int, batch_size: int, device: torch.device,
             last_n: int = 0, max_batches: int | None = None, byte_lengths: np.ndarray | None = None,
             autocast=None, rank: int = 0, world_size: int = 1, reduce=None, eot_id: int | None = None) -> dict:
    """Score a token stream with `model` (logits from gptlab.loss.logits_and_loss).

    max_batches caps the work (in-training eval): the windows are then spread evenly over
    the whole split, the same ones every time. With several ranks, batches are dealt
    round-robin and the sums reduced with `reduce` (a callable on a tensor).
    """
    last_n = last_n or seq_len
    starts = window_plan(len(tokens), seq_len, last_n)
    if max_batches is not None and len(starts) > max_batches * batch_size:
        pick = np.unique(np.linspace(0, len(starts) - 1, max_batches * batch_size).round().astype(np.int64))
        starts = starts[pick]
    batches = [starts[i: i + batch_size] for i in range(0, len(starts), batch_size)]
    n_rounds = math.ceil(len(batches) / world_size)
    was_training = model.training
    model.eval()
    # nll, tokens, bytes, top1, top10, and nll/tokens over targets that are not end-of-document
    sums = torch.zeros(7, dtype=torch.float64, device=device)
    lengths = torch.as_tensor(byte_lengths, device=device) if byte_lengths is not None else None
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    for r in range(n_rounds):
        i = r * world_size + rank
        # A rank without a batch of its own still runs a forward (all targets padded):
        # sharded models need every rank in every collective.
        b = batches[i] if i < len(batches) else batches[0]
        x, y = build_batch(tokens, b, seq_len, last_n)
        if i >= len(batches):
            y.fill_(-1)
        x, y = x.to(device), y.to(device)
        with ctx:
            logits, _ = logits_and_loss(model, x)
        keep = y >= 0
        if not keep.any():
            continue
        sel = logits[keep].float()
        tgt = y[keep]
        per_token = F.cross_entropy(sel, tgt, reduction="none")
        nll = per_token.sum()
        words = tgt != eot_id if eot_id is not None else torch.ones_like(tgt, dtype=torch.bool)
        top = sel.topk(min(10, sel.size(-1)), dim=-1).indices
        hit10 = (top == tgt[:, None]).any(-1)
        hit1 = top[:, 0] == tgt
        nbytes = lengths[tgt].sum() if lengths is not None else torch.tensor(0.0, device=device)
        sums += torch.stack([nll.double(), torch.tensor(float(tgt.numel()), device=device, dtype=torch.float64),
                             nbytes.double(), hit1.sum().double(), hit10.sum().double(),
                             per_token[words].sum().double(), words.sum().double()])
    if reduce is not None:
        sums = reduce(sums)
    model.train(was_training)
    nll, ntok, nbytes, top1, top10, nll_words, nwords = sums.tolist()
    loss = nll / max(ntok, 1)
    out = {"loss": loss, "ppl": math.exp(min(loss, 700)), "tokens": int(ntok), "acc1": top1 / max(ntok, 1),
           "acc10": top10 / max(ntok, 1), "windows": int(len(starts)), "seq_len": seq_len, "last_n": last_n}
    if eot_id is not None and nwords > 0:  # e.g. zero_one's bound is per word token, not per <eot>
        out.update(loss_excl_eot=nll_words / nwords, tokens_excl_eot=int(nwords))
    if byte_lengths is not None and nbytes > 0:
        lpb = nll / nbytes
        out.update(bytes=int(nbytes), loss_per_byte=lpb, bpb=lpb / math.log(2), normalised_ppl=math.exp(min(lpb, 700)))
    return out


def format_metrics(m: dict) -> str:
    parts = [f"loss {m['loss']:.4f}", f"ppl {m['ppl']:.3f}"]
    if "bpb" in m:
        parts += [f"bpb {m['bpb']:.4f}", f"norm_ppl {m['normalised_ppl']:.4f}"]
    parts += [f"acc1 {m['acc1']:.3f}", f"acc10 {m['acc10']:.3f}", f"tokens {m['tokens']:,}"]
    if "bytes" in m:
        parts.append(f"bytes {m['bytes']:,}")
    return " | ".join(parts)


def main(argv: list[str]) -> int:
    """gptlab eval --checkpoint_file F [--config_file C] --eval_data_split test --last_n 128"""
    from gptlab.cli import ArgParser
    from gptlab.distributed import pick_device
    from gptlab.runs import load_run
    from gptlab.runtime import autocast_ctx, resolve_data_dir, resolve_dtype, token_byte_lengths
    from gptlab.data import tokens as tk

    p = ArgParser(prog="gptlab eval", description="Evaluate a checkpoint on a prepared split.")
    p.add_argument("--run", help="run folder (instead of --checkpoint_file/--config_file)")
    p.add_argument("--checkpoint_file", help="checkpoint .pt")
    p.add_argument("--config_file", help="config.json of the run (default: beside checkpoints/)")
    p.add_argument("--eval_data_split", default="test", help="split name, e.g. val or test")
    p.add_argument("--dataset", help="prepared dataset (name under data_root, or a folder); default: the run's")
    p.add_argument("--data_root", help="folder of prepared datasets; default: the run's")
    p.add_argument("--last_n", type=int, default=None, help="score the last N targets of each window (default: seq_len)")
    p.add_argument("--seq_len", type=int, default=None, help="window length (default: the model's block size)")
    p.add_argument("--eval_batch_size", type=int, default=8)
    p.add_argument("--max_eval_steps", type=int, default=None, help="cap the number of batches")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    a = p.parse_args(argv)
    if not a.run and not a.checkpoint_file:
        raise UserError("pass --run RUN_DIR or --checkpoint_file FILE")
    run = load_run(a.checkpoint_file or a.run, config_file=a.config_file)  # paths resolved against the run folder
    cfg, ckpt_path = run.config, run.checkpoint("best")
    # A --last_n typo is reported before the checkpoint and the split are loaded (minutes for big ones).
    if a.last_n and (a.last_n < 0 or (a.seq_len or cfg.model.block_size) % a.last_n):
        raise UserError(f"--last_n {a.last_n} must divide seq_len {a.seq_len or cfg.model.block_size}")
    device = pick_device(a.device)
    model = run.build_model(device).eval()
    autocast = autocast_ctx(device, resolve_dtype(a.dtype, device))
    data_dir = resolve_data_dir(a.dataset or cfg.data.dataset, a.data_root or cfg.data.data_root) \
        if a.dataset or a.data_root else run.data_dir()
    meta = tk.read_meta(data_dir)
    tokens = tk.load_split(data_dir, a.eval_data_split)
    seq_len = a.seq_len or cfg.model.block_size
    if seq_len > model.shape.block_size:
        raise UserError(f"--seq_len {seq_len} exceeds the model's block size {model.shape.block_size}")
    last_n = a.last_n or seq_len
    if seq_len % last_n:
        raise UserError(f"--last_n {last_n} must divide seq_len {seq_len}")
    if int(meta["vocab_size"]) > model.shape.vocab_size:
        raise UserError(f"dataset vocab {meta['vocab_size']} is larger than the model's {model.shape.vocab_size}: "
                        "evaluate on data prepared with the run's tokenizer")
    tk.check_token_range(tokens, model.shape.vocab_size)
    lengths = token_byte_lengths(meta, data_dir)
    m = evaluate(model, tokens, seq_len, a.eval_batch_size, device, last_n=last_n, max_batches=a.max_eval_steps,
                 byte_lengths=lengths, autocast=autocast)
    m.update(split=a.eval_data_split, checkpoint=str(ckpt_path), dataset=str(data_dir))
    print(f"{a.eval_data_split}: {format_metrics(m)}")
    print(json.dumps(m))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(m, indent=2) + "\n")
    sys.stdout.flush()
    return 0
