"""The pipeline of `gptlab prepare`: streams per split -> tokenizer -> encode (inline or num_proc
workers) -> SplitWriter per split -> meta.json, built in a locked sibling `.NAME.partial` that replaces
--out when complete; its fsynced `progress.json` lets `--resume` finish a killed run with the bytes of an
uninterrupted one."""

from __future__ import annotations

import collections
import contextlib
import itertools
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from gptlab import files
from gptlab.data import tokens as T
from gptlab.data.sources import Stream, check_path, path_problem, safe_text, texts_of
from gptlab.data.tokenizers import TOKENIZER_KINDS as TOKENIZERS
from gptlab.data.tokenizers import (
    CharTokenizer,
    GPT2Tokenizer,
    find_gpt2_ranks,
    tokenizer_from_meta,
    train_sentencepiece,
)
from gptlab.errors import UserError

PROGRESS = "progress.json"
PROGRESS_VERSION = 2


# --- Tokenizer: made once per prepare, described in meta.json ---
def _documents(streams: list[Stream], text_field: str, limit: int | None = None):
    """Non-empty texts of the given streams, in order (at most `limit`)."""
    texts = (t for stream in streams for kind, items in stream.iter_batches(0, 256, 1 << 24)
             for t in texts_of(kind, items, text_field) if t)
    return itertools.islice(texts, limit)


def make_tokenizer(kind: str, work: Path, streams: list[Stream], opts: dict, text_field: str = "text"):
    """The tokenizer of this prepare: GPT-2, a character table over all splits, a given SentencePiece
    model (copied in) or one trained on the first documents of train."""
    if kind == "gpt2":  # find the vocabulary, fetching it through a registry if need be; say where
        print(f"GPT-2 vocabulary: {safe_text(str(find_gpt2_ranks(allow_fetch=True)[1]))}")
        return GPT2Tokenizer()
    if kind == "char":
        return CharTokenizer(c for t in _documents(streams, text_field) for c in set(t))
    if opts.get("tokenizer_model"):
        src = check_path(opts["tokenizer_model"], "--tokenizer_model",
                         "give a SentencePiece .model file", "file")
        shutil.copyfile(src, work / "tokenizer.model")
        try:
            return tokenizer_from_meta({"kind": "sentencepiece", "model_file": "tokenizer.model"}, work)
        except (RuntimeError, OSError):
            raise UserError(f"--tokenizer_model {src} is not a SentencePiece model: give a .model "
                            "file") from None
    train = [s for s in streams if s.split == "train"] or streams[:1]
    t0 = time.perf_counter()
    tok = train_sentencepiece(_documents(train, text_field, opts.get("sp_docs", 100_000)),
                              work / "tokenizer", opts.get("vocab_size") or 16384,
                              opts.get("input_sentence_size") or 2_000_000, opts.get("num_threads"),
                              opts.get("seed", 0))
    print(f"trained a SentencePiece BPE (vocab {tok.vocab_size:,}) in {time.perf_counter() - t0:.1f}s")
    return tok


# --- Encoding: the same function inline (num_proc=1) and in worker processes ---
_W: dict = {}


def _worker_init(tok_meta: dict, work: str, text_field: str, threads: int) -> None:
    # Each worker builds its tokenizer once, through the one factory.
    _W.update(tok=tokenizer_from_meta(tok_meta, Path(work)), field=text_field, threads=threads)


def _pack(docs: list, eot_id: int | None, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The documents, each followed by eot_id (if any), as one array; and per-document lengths."""
    eot = [np.array([eot_id])] if eot_id is not None else []
    out = np.concatenate([p for doc in docs for p in (np.asarray(doc), *eot)], dtype=dtype,
                         casting="unsafe")
    return out, np.array([len(doc) + len(eot) for doc in docs], dtype=np.int64)


def _work(task) -> tuple[dict, int, tuple]:
    """(kind, items, val_mask or None, eot, header) -> {output group: (ids, lengths)}, characters read,
    header."""
    kind, items, mask, eot, header = task
    tok = _W["tok"]
    docs = [np.asarray(doc) for doc in items] if kind == "ids" else texts_of(kind, items, _W["field"])
    nchars = 0 if kind == "ids" else sum(len(t) for t in docs)  # a cheap stand-in for MB/s
    keep = [i for i, doc in enumerate(docs) if len(doc)]
    groups = [(0, keep)] if mask is None else [(0, [i for i in keep if not mask[i]]),
                                               (1, [i for i in keep if mask[i]])]
    out = {}
    for g, idx in (x for x in groups if x[1]):
        group = [docs[i] for i in idx]
        ids = group if kind == "ids" else tok.encode_batch(group, num_threads=_W["threads"])
        out[g] = _pack(ids, tok.eot_id if eot else None, T.dtype_for_vocab(tok.vocab_size))
    return out, nchars, header


def _bounded_imap(pool, fn, tasks: Iterator, window: int):
    """pool.imap with at most `window` tasks in flight (Pool.imap would pull the whole corpus into
    memory)."""
    pending: collections.deque = collections.deque()
    for t in tasks:
        pending.append(pool.apply_async(fn, (t,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def row_uniform(seed: int, start: int, n: int) -> np.ndarray:
    """U[0,1) per row index (splitmix64 of seed and index): the val choice of a row never
    depends on batching, so resumed runs choose the same rows."""
    with np.errstate(over="ignore"):
        x = np.arange(start, start + n,
                      dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) & (2**64 - 1))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Progress:
    """A tqdm bar on a terminal; elsewhere a line every 5% (nothing when disabled)."""

    def __init__(self, total: int, done: int, desc: str, enabled: bool | None):
        from tqdm import tqdm

        self.total, self.done, self.desc = max(total, 1), done, desc
        self.lines = enabled is not False and not sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=done, unit="doc", unit_scale=True, desc=desc,
                        dynamic_ncols=True, disable=enabled is False or self.lines)

    def update(self, n: int, note: str) -> None:
        before, self.done = self.done, self.done + n
        self.bar.update(n)
        self.bar.set_postfix_str(note, refresh=False)
        if self.lines and int(20 * self.done / self.total) > int(20 * before / self.total):  # 5% steps
            print(f"{self.desc}: {100 * self.done / self.total:.0f}% ({self.done:,}/{self.total:,} "
                  f"docs, {note})", flush=True)

    def close(self) -> None:
        self.bar.close()


# --- The pipeline ---
@dataclass
class Plan:
    """What to prepare: the recipe's streams and source, the tokenizer, and the options a resume must
    repeat."""

    recipe: str
    streams: list[Stream]
    source: dict
    tokenizer: str
    config: dict
    tok_opts: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    text_field: str = "text"
    seed: int = 0
    lengths: dict = field(default_factory=dict)  # books from file lists: {split: listed token counts}


def work_dir(out: Path) -> Path:
    """Where a prepare into `out` builds (and can resume) before the result replaces `out`."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.partial"


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is not ours to replace."""
    if (problem := path_problem(out)) not in (None, "does not exist"):
        raise UserError(f"--out {out} {problem}: give a new folder such as data/NAME")
    if not out.name or out.resolve() == Path.cwd().resolve() or out.resolve() == Path.home().resolve():
        raise UserError(f"--out {out} is the working or home folder: give a new folder such as "
                        "data/NAME")
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link: give the folder it points to, or a new folder")
    if out.parent.exists() and not out.parent.is_dir():
        raise UserError(f"--out {out} lies under {out.parent}, which is a file: choose another --out")
    state = T.dataset_state(out)
    if state == "other":
        what = "a file" if out.is_file() else "a folder that is not a gptlab dataset"
        raise UserError(f"--out {out} is {what}; prepare only writes a new folder, an empty one, or "
                        "replaces a gptlab dataset: choose another --out")
    if state == "dataset" and not overwrite:
        raise UserError(f"{out} already holds prepared data: pass --overwrite to replace it, or choose "
                        "another --out")
    if state == "dataset" and (held := _hold_from_readers(out, "wait, or prepare into another "
                                                               "--out")) is not None:
        os.close(held)  # only a probe: the swap locks it again


def _hold_from_readers(out: Path, fix: str) -> int | None:
    """out's folder locked against readers (a running train or eval), or UserError naming them."""
    try:
        return T.lock_folder(out, exclusive=True)
    except BlockingIOError as e:
        raise UserError(f"{e.strerror}: {fix}") from None


def _clear(folder: Path) -> None:
    """Empty a partial folder of the files a prepare writes there (nothing else is touched)."""
    for p in folder.iterdir():
        if p.is_file() and p.name != files.LOCK_FILE and (p.name in (PROGRESS, "tokenizer.model",
                                                                     "tokenizer.vocab")
                                                          or p.name.endswith(".partial")
                                                          or T.is_dataset_file(p.name)
                                                          or re.fullmatch(r"\..+\.tmp-\d+", p.name)):
            p.unlink()


def _swap_in(work: Path, out: Path, replace: bool) -> None:
    """Move the complete dataset in `work` to `out`, replacing a gptlab dataset there only if allowed."""
    state = T.dataset_state(out)
    if state == "other" or (state == "dataset" and not replace):
        raise UserError(f"--out {out} changed while preparing and is no longer ours to replace: move it "
                        "away, then rerun with --resume")
    held = None if state == "absent" else _hold_from_readers(out, "rerun with --resume when it has "
                                                                  "finished")
    for p in work.glob(".*.tmp-*"):  # left by a write a kill interrupted
        p.unlink()
    (work / PROGRESS).unlink()
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        if state != "absent":
            os.rename(out, old)
        os.rename(work, out)
    finally:
        if held is not None:
            os.close(held)  # readers waiting for the old folder find it moved and lock the new one
    (out / files.LOCK_FILE).unlink(missing_ok=True)
    files.fsync_dir(out.parent)
    if state != "absent":
        for p in old.iterdir():
            if T.is_dataset_file(p.name) or p.name.endswith(".model"):
                p.unlink()
        with contextlib.suppress(OSError):
            old.rmdir()


def _load_state(work: Path, config: dict, overwrite: bool, resume: bool) -> dict | None:
    prog = work / PROGRESS
    if prog.exists() and not overwrite:
        if not resume:
            raise UserError(f"{work} holds an interrupted prepare: pass --resume to continue it or "
                            "--overwrite to start over")
        state = files.read_json(prog, "prepare progress")
        if state.get("config") != config:
            diff = sorted(k for k in config if state.get("config", {}).get(k) != config[k])
            raise UserError(f"{work} was started with different options ({', '.join(diff)}): repeat "
                            "them, or pass --overwrite")
        return state
    _clear(work)
    return None


def build(plan: Plan, out, *, overwrite: bool = False, resume: bool = False, num_proc: int = 1,
          threads: int = 1, batch_docs: int = 1024, batch_bytes: int = 8 << 20,
          sync_every_s: float = 10.0, progress: bool | None = None,
          _after_batch: Callable[[int], None] | None = None) -> Path:
    """Run a plan into `out`; returns the data dir."""
    t0 = time.perf_counter()
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: pass one")
    out, work = Path(out), work_dir(out)
    if bad := [s for s in _split_names(plan.streams) if not T.SPLIT_NAME.fullmatch(s)]:
        raise UserError(f"split name {bad[0][:40]!r} is not a plain name (letters, digits, _ and -): "
                        "pick or rename splits")
    config = {"version": PROGRESS_VERSION, **plan.config, "batch_docs": batch_docs,
              "batch_bytes": batch_bytes}
    config = safe_text(config)  # names that are not UTF-8 as escapes
    if resume and T.dataset_state(out) == "dataset" and not (work / PROGRESS).exists():
        print(f"{out} is already fully prepared; nothing to resume")
        return out
    if not (resume and (work / PROGRESS).exists()):
        _check_out(out, overwrite)
    try:
        with files.folder_lock(work, "prepare output"):
            state = _load_state(work, config, overwrite, resume)
            try:
                meta = _run(plan, work, state, config, overwrite, num_proc, threads, batch_docs,
                            batch_bytes, sync_every_s, progress, _after_batch)
            except BaseException as e:
                # Bad input or a failure before the first checkpoint: leave nothing behind. Otherwise
                # keep the partial folder for --resume.
                if isinstance(e, UserError) or not (work / PROGRESS).exists():
                    _clear(work)
                raise
            _swap_in(work, out, replace=overwrite or bool((state or {}).get("replace")))
    except OSError as e:
        if (err := files.write_error(work, e)) is None:
            raise
        hint = " (add --resume to continue where it stopped)" if (work / PROGRESS).exists() else ""
        raise UserError(f"{err}{hint}") from None
    finally:
        with contextlib.suppress(OSError):
            work.rmdir()  # only if nothing is left in it
    parts = ", ".join(f"{s} {i['tokens']:,} tokens" + (f" / {i['documents']:,} docs"
                                                       if i.get("documents") else "")
                      for s, i in meta["splits"].items())
    print(f"prepared {plan.recipe} in {time.perf_counter() - t0:.1f}s: {parts}; tokenizer "
          f"{meta['tokenizer']['kind']}, vocab {meta['vocab_size']:,}, {meta['dtype']} -> "
          f"{safe_text(str(out))}")
    return out


def _split_names(streams: list[Stream]) -> list[str]:
    return list(dict.fromkeys(s for stream in streams
                              for s in ([stream.split, "val"] if stream.carve else [stream.split])))


def _tasks(plan: Plan, rows_done: int, batch_docs: int, batch_bytes: int):
    """Worker tasks with (stream index, first row, rows) headers, skipping the rows an earlier run
    wrote."""
    base = 0
    for i, stream in enumerate(plan.streams):
        skip = max(0, min(stream.rows, rows_done - base))
        row = base + skip
        for kind, items in stream.iter_batches(skip, batch_docs, batch_bytes):
            mask = (row_uniform(plan.seed, row - base, len(items)) < stream.carve
                    if stream.carve else None)
            yield kind, items, mask, stream.eot, (i, row, len(items))
            row += len(items)
        base += stream.rows


def _run(plan: Plan, work: Path, state: dict | None, config: dict, overwrite: bool, num_proc: int,
         threads: int, batch_docs: int, batch_bytes: int, sync_every_s: float, progress,
         _after_batch) -> dict:
    """Tokenizer, encode, write; returns the meta written into `work`."""
    prog_path = work / PROGRESS
    if state is not None and (work / T.META).is_file():  # complete, interrupted before the swap
        return T.read_meta(work)
    if state is None:
        tok = make_tokenizer(plan.tokenizer, work, plan.streams, plan.tok_opts, plan.text_field)
        state = {"config": config, "tokenizer": tok.to_meta(), "rows_done": 0, "splits": {},
                 "replace": overwrite}
        files.atomic_write_json(prog_path, state)
    tok = tokenizer_from_meta(state["tokenizer"], work)
    dt = T.dtype_for_vocab(tok.vocab_size)
    writers = {s: T.SplitWriter(work, s, dt, vocab_size=tok.vocab_size, **state["splits"].get(s, {}))
               for s in _split_names(plan.streams)}
    rows_done, total = state["rows_done"], sum(stream.rows for stream in plan.streams)

    def checkpoint(rows_done: int) -> None:
        for w in writers.values():
            w.sync()
        state["rows_done"] = rows_done
        state["splits"] = {s: {"tokens": w.tokens, "documents": w.documents} for s, w in writers.items()}
        files.atomic_write_json(prog_path, state)

    init = (state["tokenizer"], str(work), plan.text_field)
    tasks = _tasks(plan, rows_done, batch_docs, batch_bytes)
    bar = Progress(total, rows_done, f"prepare {plan.recipe}", progress)
    # Encode inline, or in num_proc workers (fork shares imported modules; all results are in when the
    # pool ends)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with (ctx.Pool(num_proc, _worker_init, (*init, 1)) if num_proc > 1
          else contextlib.nullcontext()) as pool:
        if pool is None:
            _worker_init(*init, threads)
        results = _bounded_imap(pool, _work, tasks, window=2 * num_proc) if pool else map(_work, tasks)
        try:
            rows_done = _write_all(results, plan, writers, bar, rows_done, checkpoint, sync_every_s,
                                   _after_batch)
        except BaseException:
            for w in writers.values():  # the last checkpoint stays as it is: --resume truncates to it
                w.close()
            raise
        finally:
            bar.close()
    if rows_done != total:
        raise RuntimeError(f"read {rows_done} rows but the source has {total}")
    meta = {"format": T.FORMAT, "recipe": plan.recipe, "tokenizer": state["tokenizer"],
            "vocab_size": int(tok.vocab_size), "dtype": T.dtype_name(dt), "eot_id": tok.eot_id,
            "splits": {s: w.finish() for s, w in writers.items()}, "source": safe_text(plan.source),
            **plan.extra}
    T.write_meta(work, meta)
    return meta


def _write_all(results, plan: Plan, writers: dict, bar: Progress, rows_done: int, checkpoint,
               sync_every_s: float, after_batch) -> int:
    """Append each encoded batch to its split's writer, checkpointing every sync_every_s; the rows
    done."""
    t_start = last_sync = time.perf_counter()
    chars = n_batches = 0
    for res, nchars, (i, row, n) in results:
        for g, (ids, lens) in sorted(res.items()):
            writers["val" if g == 1 else plan.streams[i].split].append(ids, lens)
        rows_done, chars, n_batches = row + n, chars + nchars, n_batches + 1
        rate = chars / max(time.perf_counter() - t_start, 1e-9) / 1e6
        bar.update(n, f"{sum(w.tokens for w in writers.values()):,} tok, {rate:.1f} M chars/s")
        if time.perf_counter() - last_sync >= sync_every_s:
            checkpoint(rows_done)
            last_sync = time.perf_counter()
        if after_batch is not None:
            after_batch(n_batches)  # test hook: simulate an interruption after N batches
    checkpoint(rows_done)
    return rows_done


def check_options(tokenizer, val_fraction, vocab_size, num_proc,
                  zero_val_fraction: bool = False) -> None:
    """Options every recipe shares; zero_val_fraction: a val fraction of 0 is allowed (hf recipes)."""
    if val_fraction is not None and not (0.0 <= val_fraction < 1.0 if zero_val_fraction
                                         else 0.0 < val_fraction < 1.0):
        raise UserError(f"--val_fraction {val_fraction} must be between 0 and 1 (e.g. 0.1)")
    if tokenizer is not None and tokenizer not in TOKENIZERS:
        raise UserError(f"unknown --tokenizer {tokenizer!r}: use char, gpt2 or sentencepiece")
    if vocab_size is not None and vocab_size < 8:
        raise UserError(f"--vocab_size {vocab_size} is too small: use at least a few hundred")
    if num_proc is not None and num_proc < 1:
        raise UserError(f"--num_proc {num_proc} must be at least 1")

