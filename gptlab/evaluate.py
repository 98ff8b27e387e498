"""The one evaluation routine, scoring exactly the targets the Languini benchmark scores.

Documents are dealt to `streams` rows (data.samplers.DocRows, each document then its end
token); row r is cut into windows of seq_len + 1 tokens at k * last_n, batch k holding window k
of every row, kept while 2+ tokens remain. A window scores its last last_n targets only (so a
row's first seq_len - last_n are never scored); padding is -1 (the benchmark's 0 would drop a
real target 0). Metrics: loss, ppl, normalised_loss/_ppl per character counted the benchmark's
way (len(decode(targets)) per window row), loss_per_byte and bpb per UTF-8 byte, top-1/top-10.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptlab.args import ArgParser
from gptlab.config_check import check_device
from gptlab.data import tokens as tk
from gptlab.data.samplers import DocRows
from gptlab.data.tokenizers import token_byte_lengths, tokenizer_from_meta
from gptlab.distributed import pick_device
from gptlab.errors import UserError
from gptlab.files import atomic_write_json, check_output_file
from gptlab.loss import logits_and_loss, raw_model
from gptlab.runs import load_run
from gptlab.runtime import autocast_ctx, resolve_data_dir, resolve_dtype

LANGUINI_EVAL_STREAMS = 16  # the benchmark's in-training eval: 16 document streams,
LANGUINI_MAX_EVAL_STEPS = 500  # the first 500 batches
# Ceilings on eval's sizes (each stream, window and batch costs memory before the first forward).
EVAL_ARG_CEILING = {"seq_len": 1 << 24, "last_n": 1 << 24, "eval_batch_size": 1 << 16,
                    "max_eval_steps": 1 << 40, "streams": 1 << 16}
# The first key of an `eval --json` file: the mark that lets a later --json replace it (and nothing
# else).
EVAL_JSON_KEY, EVAL_JSON_MARK = "written_by", "gptlab eval"
EVAL_JSON_TAG = f'"{EVAL_JSON_KEY}": "{EVAL_JSON_MARK}"'


@dataclasses.dataclass
class EvalPlan:
    """The windows an evaluation scores, fixed before any model runs: items[i] = (row, start), whose
    scored targets are row positions start + seq_len - last_n + 1 .. start + seq_len (inside the row)."""

    rows: DocRows
    items: np.ndarray  # (n_windows, 2) int64: row, start
    seq_len: int
    last_n: int
    batches: int  # benchmark batches covered (windows of all rows at one k)
    counts: dict | None = None  # eval_tokens / eval_chars / eval_bytes once counted

    def target_indices(self, i: int) -> np.ndarray:
        """Data indices of the scored targets of window i (-1 past the row's end)."""
        row, start = (int(v) for v in self.items[i])
        return self.rows.indices(row, start + self.seq_len - self.last_n + 1, self.last_n, wrap=False)

    def input_indices(self, i: int) -> np.ndarray:
        row, start = (int(v) for v in self.items[i])
        return self.rows.indices(row, start, self.seq_len, wrap=False)


def check_window(seq_len: int, last_n: int) -> int:
    """last_n in 1..seq_len dividing seq_len (0 or None = seq_len); UserError otherwise."""
    if seq_len < 1:
        raise UserError(f"--seq_len {seq_len} must be at least 1")
    last_n = last_n or seq_len
    if last_n < 1 or last_n > seq_len or seq_len % last_n:
        raise UserError(f"--last_n {last_n} must be between 1 and seq_len {seq_len} and divide it (e.g. "
                        f"{seq_len // 4 or 1})")
    return last_n


def eval_plan(n_tokens: int, seq_len: int, last_n: int = 0, doc_offsets=None, streams: int = 1,
              max_batches: int | None = None, data=None, eot_id: int | None = None) -> EvalPlan:
    """The benchmark's windows over `streams` document rows (see the module docstring)."""
    last_n = check_window(seq_len, last_n)
    if n_tokens < 2:
        raise UserError(f"the evaluation split has {n_tokens} tokens; it needs at least 2")
    if streams < 1 or (max_batches is not None and max_batches < 1):
        raise UserError(f"eval streams ({streams}) and max_eval_steps ({max_batches}) must be positive")
    rows = DocRows(doc_offsets, n_tokens, streams, data, eot_id)
    items = []
    for r, length in enumerate(rows.lengths.tolist()):
        # Of the windows the loader emits (start <= length - 2), those whose first scored target is in
        # the row.
        n_score = max(0, (length - 1 - (seq_len - last_n + 1)) // last_n + 1)
        k = np.arange(min(n_score, max_batches or n_score), dtype=np.int64)
        items.append(np.stack([np.full_like(k, r), k * last_n], axis=1))
    # Batches that score a target: the loader's last ones (windows of a row's final tokens, with
    # last_n < seq_len) can hold only targets before the scored tail; they count for nothing.
    n_batches = max((len(k) for k in items), default=0)
    # Batch order (all rows' window k, then k + 1), as the benchmark steps through them.
    allitems = np.concatenate(items) if items else np.zeros((0, 2), np.int64)
    order = np.lexsort((allitems[:, 0], allitems[:, 1]))
    return EvalPlan(rows, allitems[order], seq_len, last_n, n_batches)


def count_targets(plan: EvalPlan, tokens: np.ndarray, tokenizer=None, byte_lengths=None) -> dict:
    """Tokens, decoded characters (per window, the benchmark's way) and UTF-8 bytes scored by `plan`."""
    n_tok = n_char = n_byte = 0
    lengths = np.asarray(byte_lengths) if byte_lengths is not None else None
    for i in range(len(plan.items)):
        idx = plan.target_indices(i)
        tgt = np.asarray(tokens[idx[idx >= 0]], dtype=np.int64)
        n_tok += tgt.size
        n_char += len(tokenizer.decode(tgt)) if tokenizer is not None else 0
        n_byte += int(lengths[tgt].sum()) if lengths is not None else 0
    plan.counts = {"eval_tokens": n_tok, "eval_chars": n_char if tokenizer is not None else None,
                   "eval_bytes": n_byte if lengths is not None else None}
    return plan.counts


def languini_eval_plan(tokens: np.ndarray, doc_offsets, seq_len: int, *,
                       streams: int = LANGUINI_EVAL_STREAMS,
                       max_steps: int | None = LANGUINI_MAX_EVAL_STEPS, last_n: int = 0, tokenizer=None,
                       byte_lengths=None, eot_id: int | None = None) -> EvalPlan:
    """The benchmark's in-training eval: the first `max_steps` batches of `streams` document
    streams, counted; build it once per run and pass it to every evaluate(..., plan=plan)."""
    plan = eval_plan(len(tokens), seq_len, last_n, doc_offsets, streams, max_steps, tokens, eot_id)
    count_targets(plan, tokens, tokenizer, byte_lengths)
    return plan


def _batch(plan: EvalPlan, tokens: np.ndarray, sel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, seq_len) and scored targets (B, last_n) of windows `sel`; padding 0 / -1."""
    def take(idx, fill):  # the tokens at idx, `fill` where idx is -1 (past the row's end)
        return np.where(idx >= 0, tokens[np.maximum(idx, 0)].astype(np.int64), fill)

    x = np.array([take(plan.input_indices(i), 0) for i in sel.tolist()], np.int64).reshape(len(sel),
                                                                                           plan.seq_len)
    y = np.array([take(plan.target_indices(i), -1) for i in sel.tolist()], np.int64).reshape(len(sel),
                                                                                             plan.last_n)
    return torch.from_numpy(x), torch.from_numpy(y)


class EvalForward:
    """Logits (B, T, vocab) of a batch the usual way: the model in eval mode, no autograd graph
    (evaluate runs under no_grad). On a compiled model this traces a second, eval-mode graph."""

    batch_size: int | None = None  # forwards of exactly this many rows (None: any)

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @contextlib.contextmanager
    def active(self):
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return logits_and_loss(self.model, x)[0]


class TrainGraphForward(EvalForward):
    """Logits through the compiled training graph, called exactly as the training step calls it:
    train mode, autograd on, the training micro-batch shape (a short last batch padded with rows
    that are dropped), hidden states when the training loss is the chunked one. torch.compile's
    guards all hold, so no second graph is traced. The same numbers as EvalForward only when no
    module drops anything (dropout 0): the caller checks (train.eval_forward)."""

    def __init__(self, model: torch.nn.Module, batch_size: int, hidden: bool):
        super().__init__(model)
        self.batch_size, self.hidden = batch_size, hidden

    @contextlib.contextmanager
    def active(self):
        yield  # train mode stays: the guard on `training` holds

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.size(0)
        if rows < self.batch_size:
            x = torch.cat([x, x.new_zeros(self.batch_size - rows, x.size(1))])
        with torch.enable_grad():  # the training graph; its saved activations go with `out`
            out = self.model(x, return_hidden=True) if self.hidden else self.model(x)
        gpt = raw_model(self.model)
        with torch.no_grad():
            out = out.detach()[:rows]
            logits = gpt.lm_head(out) if self.hidden else out
        return logits[..., : gpt.config.vocab_size]


def _score(forward, x, y, last_n: int, ctx, eot_id) -> torch.Tensor:
    """[nll, tokens, top1, top10, nll and count of targets that are not eot] of one batch."""
    with ctx:
        logits = forward(x)
    keep = y >= 0
    sel = logits[:, -last_n:][keep].float()  # (n_scored, vocab)
    tgt = y[keep]
    per_token = F.cross_entropy(sel, tgt, reduction="none").double()
    top = sel.topk(min(10, sel.size(-1)), dim=-1).indices
    words = tgt != eot_id if eot_id is not None else torch.ones_like(tgt, dtype=torch.bool)
    parts = [per_token.sum(), keep.sum(), (top[:, 0] == tgt).sum(), (top == tgt[:, None]).any(-1).sum(),
             per_token[words].sum(), words.sum()]
    return torch.stack([p.double() for p in parts])


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: np.ndarray, seq_len: int, batch_size: int,
             device: torch.device, last_n: int = 0, max_batches: int | None = None,
             byte_lengths: np.ndarray | None = None, autocast=None, rank: int = 0, world_size: int = 1,
             reduce=None, eot_id: int | None = None, *, plan: EvalPlan | None = None, tokenizer=None,
             doc_offsets=None, streams: int = 1, progress=None,
             forward: EvalForward | None = None) -> dict:
    """Score `tokens` over `plan` (default: eval_plan of these arguments), batch_size windows per
    forward (forward.batch_size where it fixes one), logits from `forward` (default EvalForward(model)).
    Ranks deal the forwards round-robin, each running as many (sharded models need every rank in every
    collective), and sum with `reduce`; progress(done, total) follows each forward of this rank."""
    if plan is None:
        plan = eval_plan(len(tokens), seq_len, last_n, doc_offsets, streams, max_batches, tokens, eot_id)
    if plan.counts is None:
        count_targets(plan, tokens, tokenizer, byte_lengths)
    forward = forward or EvalForward(model)
    batch_size = forward.batch_size or batch_size
    chunks = [np.arange(i, min(i + batch_size, len(plan.items))) for i in range(0, len(plan.items),
                                                                                batch_size)]
    n_rounds = math.ceil(len(chunks) / world_size)
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    ctx = autocast or contextlib.nullcontext()
    with forward.active():
        for r in range(n_rounds):
            i = r * world_size + rank
            x, y = _batch(plan, tokens, chunks[i] if i < len(chunks) else chunks[0][:1])
            if i >= len(chunks):
                y.fill_(-1)  # a spare forward: scores nothing
            sums += _score(forward, x.to(device), y.to(device), plan.last_n, ctx, eot_id)
            if progress is not None:
                progress(r + 1, n_rounds)
    if reduce is not None:
        sums = reduce(sums)
    # The reported metrics from the summed [nll, tokens, top1, top10, nll_words, words] and the plan's
    # counts.
    nll, ntok, top1, top10, nll_words, nwords = sums.tolist()  # .tolist(): a CPU-GPU sync
    loss = nll / max(ntok, 1)
    c = plan.counts or {}
    out = {"loss": loss, "ppl": math.exp(min(loss, 700)), "acc1": top1 / max(ntok, 1),
           "acc10": top10 / max(ntok, 1), "total_loss": nll, "eval_tokens": int(ntok),
           "eval_windows": int(len(plan.items)), "eval_batches": plan.batches,
           "eval_streams": len(plan.rows.rows), "seq_len": plan.seq_len, "last_n": plan.last_n}
    if world_size == 1 and c.get("eval_tokens") is not None and c["eval_tokens"] != int(ntok):
        raise RuntimeError(f"scored {int(ntok)} tokens but the plan counts {c['eval_tokens']}")
    if c.get("eval_chars"):
        out.update(eval_chars=c["eval_chars"], normalised_loss=nll / c["eval_chars"],
                   normalised_ppl=math.exp(min(nll / c["eval_chars"], 700)))
    if c.get("eval_bytes"):
        out.update(eval_bytes=c["eval_bytes"], loss_per_byte=nll / c["eval_bytes"],
                   bpb=nll / c["eval_bytes"] / math.log(2))
    if nwords and nwords != ntok:  # e.g. zero_one's bound is per word token, not per <eot>
        out.update(loss_excl_eot=nll_words / nwords, tokens_excl_eot=int(nwords))
    return out


def format_metrics(m: dict) -> str:
    parts = [f"loss {m['loss']:.4f}", f"ppl {m['ppl']:.3f}"]
    parts += [f"{name} {m[k]:.4f}" for k, name in (("normalised_ppl", "norm_ppl"),
                                                   ("bpb", "bpb")) if k in m]
    parts += [f"acc1 {m['acc1']:.3f}", f"acc10 {m['acc10']:.3f}", f"tokens {m['eval_tokens']:,}"]
    return " | ".join(parts + [f"{k[5:]} {m[k]:,}" for k in ("eval_chars", "eval_bytes") if k in m])


def progress_printer(total_hint: str):
    """progress(done, total): a tqdm bar on a terminal, otherwise a line on stderr every 5%."""
    state = {"next": 0.0, "t0": time.time(), "bar": None}

    def line(done, total):
        if sys.stderr.isatty():
            from tqdm import tqdm

            state["bar"] = state["bar"] or tqdm(total=total, desc=total_hint, unit="batch", leave=False)
            state["bar"].update(done - state["bar"].n)
            if done == total:
                state["bar"].close()
        elif done / total >= state["next"] or done == total:
            print(f"{total_hint}: {done:,}/{total:,} batches ({100 * done / total:.0f}%, "
                  f"{time.time() - state['t0']:.0f}s)", file=sys.stderr, flush=True)
            state["next"] = done / total + 0.05
    return line


def _check_args(a) -> None:
    """Argument ranges, before anything is loaded (a run and a split can take minutes)."""
    if not a.run and not a.checkpoint_file:
        raise UserError("pass --run RUN_DIR or --checkpoint_file FILE")
    for name in ("seq_len", "last_n", "eval_batch_size", "max_eval_steps", "streams"):
        v = getattr(a, name)
        if v is not None and not 1 <= v <= EVAL_ARG_CEILING[name]:
            raise UserError(f"--{name} {v} must be an integer from 1 to {EVAL_ARG_CEILING[name]:,}")
    # a new file, or one an earlier `gptlab eval --json` wrote; never a run's or dataset's
    if a.json_out:
        check_output_file(a.json_out, "--json", EVAL_JSON_TAG)


def check_same_tokenizer(run_meta: dict | None, meta: dict, data_dir) -> None:
    """UserError unless the data was tokenized like the run's training data."""
    if run_meta is None:
        return
    a, b = run_meta.get("tokenizer") or {}, meta.get("tokenizer") or {}
    keys = ("fingerprint", "kind", "chars")
    if ([a.get(k) for k in keys] + [run_meta.get("vocab_size")]
            != [b.get(k) for k in keys] + [meta.get("vocab_size")]):
        raise UserError(f"{data_dir} was tokenized with a different tokenizer ({b.get('kind')}, vocab "
                        f"{meta.get('vocab_size')}) than the run ({a.get('kind')}, vocab "
                        f"{run_meta.get('vocab_size')}): evaluate on data prepared with the run's "
                        "tokenizer")


def checkpoint_facts(path: Path, tokens_per_second: float) -> dict:
    """Where the checkpoint stands in its run, as metrics.jsonl records it: the step, the training
    tokens and the reference accelerator-hours (tokens at the config's reference throughput; None
    without one). Read memory-mapped after the weights were verified: no second copy in memory."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    # noqa: BLE001 - an older (non-zip) file: the weights loaded, the facts are unknown
    except Exception:
        state = {}
    tokens = state.get("tokens")
    hours = tokens / tokens_per_second / 3600.0 if tokens is not None and tokens_per_second else None
    return {"step": state.get("step"), "tokens": tokens, "accel_hours": hours,
            "train_time_s": state.get("train_time_s")}


def main(argv: list[str]) -> int:
    """gptlab eval --checkpoint_file F [--config_file C] --eval_data_split test --last_n 128"""
    p = ArgParser(prog="gptlab eval",
                  description="Evaluate a checkpoint on a prepared split, the Languini way.")
    p.add_argument("--run", help="run folder (instead of --checkpoint_file/--config_file)")
    p.add_argument("--checkpoint_file", help="checkpoint .pt")
    p.add_argument("--config_file", help="config.json of the run (default: beside checkpoints/)")
    p.add_argument("--eval_data_split", default="test", help="split name, e.g. val or test")
    p.add_argument("--dataset",
                   help="prepared dataset (name under data_root, or a folder); default: the run's")
    p.add_argument("--data_root", help="folder of prepared datasets; default: the run's")
    p.add_argument("--last_n", type=int, default=None,
                   help="score the last N targets of each window (default: seq_len)")
    p.add_argument("--seq_len", type=int, default=None,
                   help="window length (default: the model's block size)")
    p.add_argument("--eval_batch_size", type=int, default=8, help="windows per forward (speed only)")
    p.add_argument("--streams", type=int, default=1, help="document streams (1: the benchmark's "
                                                          f"eval.py, {LANGUINI_EVAL_STREAMS}: its "
                                                          "trainer's)")
    p.add_argument("--max_eval_steps", type=int, default=None,
                   help="only the first N batches of the streams")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    p.add_argument("--trust_code", action="store_true",
                   help="run the model idea's code that a run folder carries (read it first)")
    a = p.parse_args(argv)
    _check_args(a)
    check_device(a.device)  # a missing GPU is reported before any data is read
    # paths resolved against the run folder
    run = load_run(a.checkpoint_file or a.run, config_file=a.config_file, trust_code=a.trust_code)
    cfg, ckpt_path = run.config, run.checkpoint("best")
    seq_len = a.seq_len or cfg.model.block_size
    if seq_len > cfg.model.block_size:
        raise UserError(f"--seq_len {seq_len} exceeds the model's block size {cfg.model.block_size}: "
                        "use at most that")
    last_n = check_window(seq_len, a.last_n or 0)
    data_dir = resolve_data_dir(a.dataset or cfg.data.dataset, a.data_root or cfg.data.data_root) \
        if a.dataset or a.data_root else run.data_dir()
    meta = tk.read_meta(data_dir)
    # held to exit; sha256 as meta.json
    reader = tk.open_for_reading(data_dir, meta, [a.eval_data_split])
    check_same_tokenizer(run.data_meta, meta, data_dir)
    tokens = tk.load_split(data_dir, a.eval_data_split, meta)
    if int(meta["vocab_size"]) > cfg.model.vocab_size:
        raise UserError(f"dataset vocab {meta['vocab_size']} is larger than the model's "
                        f"{cfg.model.vocab_size}: evaluate on data prepared with the run's tokenizer")
    tk.check_token_range(tokens, cfg.model.vocab_size)
    device = pick_device(a.device)
    model = run.build_model(device)  # a damaged checkpoint is reported before any counting
    tok = tokenizer_from_meta(meta, data_dir)
    plan = eval_plan(len(tokens), seq_len, last_n, tk.doc_offsets(data_dir, a.eval_data_split, meta),
                     a.streams, a.max_eval_steps, tokens, meta.get("eot_id"))
    print(f"counting the characters and bytes of {len(plan.items):,} windows ...", file=sys.stderr,
          flush=True)
    count_targets(plan, tokens, tok, token_byte_lengths(tok))
    m = evaluate(model, tokens, seq_len, a.eval_batch_size, device, eot_id=meta.get("eot_id"),
                 autocast=autocast_ctx(device, resolve_dtype(a.dtype, device)), plan=plan,
                 progress=progress_printer(f"eval {a.eval_data_split}"))
    reader.check()  # the split was not rewritten while it was scored
    m.update(split=a.eval_data_split, checkpoint=str(ckpt_path), dataset=str(data_dir),
             streams=a.streams, **checkpoint_facts(ckpt_path, cfg.train.tokens_per_second))
    print(f"{a.eval_data_split}: {format_metrics(m)}")
    record = {EVAL_JSON_KEY: EVAL_JSON_MARK, **m}  # the line and the --json file are the same record
    print(json.dumps(record), flush=True)
    if a.json_out:
        atomic_write_json(a.json_out, record)
    return 0
