"""`gptlab prepare NAME`: document streams per split -> tokenizer -> encode (inline or num_proc workers) ->
SplitWriter per split -> meta.json, built in a locked sibling `.NAME.partial` that replaces --out only when
complete; its fsynced `progress.json` lets `--resume` finish a killed run with the bytes of an uninterrupted one."""

from __future__ import annotations

import argparse
import collections
import contextlib
import difflib
import gzip
import hashlib
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
from gptlab.args import ArgParser as _Parser  # one line naming the closest flag
from gptlab.data import tokens as T
from gptlab.data.tokenizers import TOKENIZER_KINDS as TOKENIZERS
from gptlab.data.tokenizers import (CharTokenizer, GPT2Tokenizer, find_gpt2_ranks, sha256_bytes, tokenizer_from_meta,
                                    train_sentencepiece)
from gptlab.errors import UserError

PROGRESS = "progress.json"
PROGRESS_VERSION = 2
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
OPENBOOKS_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openbooks"

RECIPES = {
    "shakespeare_char": "tiny Shakespeare, character level (vocab 65), 90/10 split",
    "shakespeare": "tiny Shakespeare, GPT-2 BPE, 90/10 split",
    "zero_one": "10,000 docs of 1,000 random words '0' (p=1/3) / '1', GPT-2 BPE, end-of-text between docs, 90/10 by doc",
    "text": "a local UTF-8 file or a folder of files (one document each), any tokenizer",
    "books": "a folder with split subfolders (train/, test/, ...) of documents, or Languini file lists "
             "(--file_lists); SentencePiece with the benchmark's settings, or --tokenizer_model PATH",
    "openbooks": "the books recipe on the openbooks corpus (../shared/data/openbooks by default)",
    "hf": "a Hugging Face dataset: hub name, save_to_disk folder, parquet, jsonl or .txt files (--dataset)",
    "openwebtext": "hf recipe: Skylion007/openwebtext, GPT-2 BPE, 0.05% val (seed 2357)",
    "tinystories": "hf recipe: roneneldan/TinyStories with its own validation split",
}
HF_RECIPES = ("hf", "openwebtext", "tinystories")


# --- Reading text ---

# Byte-order marks and the codecs that read (and drop) them; UTF-32's first, as it starts like UTF-16's.
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xef\xbb\xbf", "utf-8-sig"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def decode_text(data: bytes, where) -> str:
    """UTF-8 (or any Unicode encoding with a byte-order mark) to str; UserError on anything else."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(enc)
            except UnicodeDecodeError:
                break
    head = data[:1 << 16]
    if head and head.count(0) * 8 > len(head):
        raise UserError(f"{where} looks like UTF-16 or UTF-32 text without a byte-order mark (many NUL bytes): "
                        "convert it to UTF-8 first (e.g. `iconv -f UTF-16LE -t UTF-8 IN > OUT`)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where} is not UTF-8 text (bad byte at offset {e.start}): convert it to UTF-8 first") from None


def read_text_file(path: Path) -> str:
    text = decode_text(path.read_bytes(), path)
    if not text:
        raise UserError(f"{path} is empty: give a file with some text in it")
    return text


def list_documents(folder: Path) -> list[Path]:
    """Files of a folder (recursively, sorted by relative path; hidden files skipped)."""
    return [p for p in sorted(Path(folder).rglob("*")) if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def files_digest(paths: list[Path], root: Path) -> str:
    """sha256 over (relative name, sha256 of bytes) of every file: what a source folder held."""
    h = hashlib.sha256()
    for f in paths:
        h.update(f"{f.relative_to(root).as_posix()}\0{files.sha256_file(f)}\n".encode())
    return h.hexdigest()


# --- Tiny Shakespeare ---
def get_tinyshakespeare(input: str | Path | None = None, verbose: bool = True) -> tuple[str, dict]:
    """Tiny Shakespeare text and where it came from, always sha256-verified: --input, or the gzipped
    copy bundled in the package (no network needed)."""
    if input is not None:
        p, kind = Path(input), "file"
        if not p.is_file():
            raise UserError(f"--input {p} is not a file: give the path of tinyshakespeare.txt")
        data = p.read_bytes()
        bad = (f"{p} is not the canonical tiny Shakespeare (1,115,394 bytes, sha256 "
               f"{TINYSHAKESPEARE_SHA256[:12]}...): use `gptlab prepare text --input FILE` for other text")
    else:
        p, kind = Path(__file__).resolve().parent / "assets" / "tinyshakespeare.txt.gz", "bundled"
        data = gzip.decompress(p.read_bytes()) if p.is_file() else b""
        bad = (f"the tiny Shakespeare copy bundled with gptlab ({p}) is missing or damaged: reinstall gptlab, "
               "or download input.txt of char-rnn's tinyshakespeare and pass --input PATH")
    if sha256_bytes(data) != TINYSHAKESPEARE_SHA256:
        raise UserError(bad)
    if verbose:
        print(f"tiny Shakespeare: from {p.resolve()}")
    return data.decode("utf-8"), {"kind": kind, "path": str(p.resolve()), "sha256": TINYSHAKESPEARE_SHA256}


# --- Streams: the documents of one split, in batches, resumable by row ---
@dataclass
class Stream:
    """Rows going to `split` (a `carve` fraction to val). iter_batches(skip, max_docs, max_bytes) yields
    (kind, items): "texts" (str), "raw"/"raw_nl" ((name, bytes) of a file), "jsonl" (lines) or "ids" (tokens)."""

    split: str
    rows: int
    iter_batches: Callable[[int, int, int], Iterator[tuple[str, list]]]
    carve: float = 0.0
    eot: bool = True  # end-of-document id after each document


def capped_batches(docs, max_docs: int, max_bytes: int):
    """Lists of documents, each closed at max_docs documents or max_bytes bytes."""
    batch, nb = [], 0
    for d in docs:
        batch.append(d)
        nb += len(d[1]) if isinstance(d, tuple) else len(d)
        if len(batch) >= max_docs or nb >= max_bytes:
            yield batch
            batch, nb = [], 0
    if batch:
        yield batch


def text_files_stream(split: str, paths: list[Path], opener=open, newlines: bool = False) -> Stream:
    """One document per file, read by the main process and decoded by the workers (newlines: universal newlines)."""
    def read(p):
        with opener(p, "rb") as fh:
            return str(p), fh.read()

    def it(skip, max_docs, max_bytes):
        for b in capped_batches(map(read, paths[skip:]), max_docs, max_bytes):
            yield "raw_nl" if newlines else "raw", b
    return Stream(split, len(paths), it)


# --- Small recipes as sources ---
def _split_point(n: int, val_fraction: float) -> int:
    return int(round(n * (1.0 - val_fraction)))


def _one_text(text: str, val_fraction: float) -> list[Stream]:
    """One document: the first (1 - val_fraction) of the characters train, the rest val."""
    n = _split_point(len(text), val_fraction)
    if not text[:n] or not text[n:]:
        raise UserError(f"the text ({len(text)} characters) is too short to split {1 - val_fraction:.0%}/"
                        f"{val_fraction:.0%}: give more text")
    # one row each, no end-of-document id
    return [Stream(s, 1, lambda skip, *_, t=t: iter([] if skip else [("texts", [t])]), eot=False)
            for s, t in (("train", text[:n]), ("val", text[n:]))]


def _source_text(input, val_fraction: float) -> tuple[list[Stream], dict]:
    if input is None:
        raise UserError("the text recipe needs --input PATH (a UTF-8 file or a folder of files)")
    p = Path(input)
    if p.is_file():
        text = read_text_file(p)
        return _one_text(text, val_fraction), {"kind": "file", "path": str(p.resolve()),
                                               "sha256": sha256_bytes(text.encode("utf-8"))}
    if not p.is_dir():
        raise UserError(f"--input {p} does not exist: give a UTF-8 file or a folder of files")
    docs = [f for f in list_documents(p) if f.stat().st_size > 0]
    if not docs:
        raise UserError(f"{p} holds no files with text in them: give a folder of text files (one document each)")
    source = {"kind": "dir", "path": str(p.resolve()), "documents": len(docs), "sha256": files_digest(docs, p)}
    if len(docs) == 1:
        return _one_text(read_text_file(docs[0]), val_fraction), source
    n_train = max(1, min(len(docs) - 1, _split_point(len(docs), val_fraction)))
    return [text_files_stream("train", docs[:n_train]), text_files_stream("val", docs[n_train:])], source


def zero_one_bits(n_docs: int = 10_000, n_words: int = 1_000, seed: int = 1337) -> np.ndarray:
    """(n_docs, n_words) bool: True where the word is "0" (probability 1/3)."""
    rng = np.random.default_rng(seed)
    return rng.random((n_docs, n_words)) < (1.0 / 3.0)


def zero_one_tokens(bits: np.ndarray, tok: GPT2Tokenizer) -> np.ndarray:
    """GPT-2 ids of each document "w w w ...", shape (docs, words). BPE never merges across pre-tokens,
    here only "0", "1", " 0", " 1": mapping those four is the exact encoding."""
    pieces = {p: tok.encode(p) for p in ("0", "1", " 0", " 1")}  # one token each in GPT-2
    out = np.where(bits, pieces[" 0"][0], pieces[" 1"][0]).astype(np.uint16)  # (docs, words)
    out[:, 0] = np.where(bits[:, 0], pieces["0"][0], pieces["1"][0])
    return out


def _source_zero_one(seed: int, val_fraction: float, n_docs: int = 10_000, n_words: int = 1_000):
    bits = zero_one_bits(n_docs, n_words, seed)
    n_train = _split_point(n_docs, val_fraction)

    def stream(split, lo, hi):
        def it(skip, max_docs, max_bytes):  # encoded on demand, after prepare made the vocabulary available
            ids = zero_one_tokens(bits[lo + skip:hi], GPT2Tokenizer())  # the pipeline appends eot
            for s in range(0, len(ids), max_docs):
                yield "ids", list(ids[s:s + max_docs])
        return Stream(split, hi - lo, it)
    source = {"kind": "generated", "generator": "zero_one", "seed": seed, "documents": n_docs, "words": n_words,
              "p_zero": 1 / 3, "sha256": sha256_bytes(np.packbits(bits).tobytes())}
    return [stream("train", 0, n_train), stream("val", n_train, n_docs)], source


def _source_books(name: str, input, file_lists, splits: list[str] | None) -> tuple[list[Stream], dict, dict]:
    if input is None:
        if name != "openbooks" or not OPENBOOKS_DEFAULT.is_dir():
            raise UserError(f"the {name} recipe needs --input DIR (a folder with train/ and other split folders of documents)")
        input = OPENBOOKS_DEFAULT
    root = Path(input)
    if not root.is_dir():
        raise UserError(f"--input {root} is not a folder: give a folder with train/ and other split subfolders")
    lengths: dict = {}
    if file_lists is not None:
        from gptlab.data.hf_prepare import languini_file_lists

        by_split, lengths = languini_file_lists(Path(file_lists), root, splits)
    else:
        by_split = {d.name: list_documents(d) for d in sorted(root.iterdir())
                    if d.is_dir() and not d.name.startswith(".") and (not splits or d.name in splits)}
        if "train" not in by_split:
            raise UserError(f"{root} has no train/ subfolder: a books-style folder needs train/ (plus e.g. test/) "
                            "with one file per document")
    digests = {s: files_digest(fs, root) for s, fs in by_split.items()}
    # The benchmark reads its documents in text mode: universal newlines.
    streams = [text_files_stream(s, fs, newlines=file_lists is not None) for s, fs in by_split.items()]
    source = {"kind": "file_lists" if file_lists else "dir", "path": str(root.resolve()),
              "splits": {s: {"documents": len(by_split[s]), "sha256": digests[s]} for s in by_split},
              "sha256": hashlib.sha256("".join(f"{s}:{digests[s]}\n" for s in sorted(digests)).encode()).hexdigest()}
    return streams, source, lengths


def _check_lengths(out: Path, lengths: dict) -> None:
    """Say how many documents' token counts (separator excluded) differ from a file list's."""
    meta = T.read_meta(out)
    for split, want in ((s, w) for s, w in lengths.items() if w is not None):
        starts = T.doc_offsets(out, split, meta).astype(np.int64)
        got = np.diff(np.append(starts, meta["splits"][split]["tokens"])) - (meta["eot_id"] is not None)
        bad = int(np.sum(got != want)) if len(got) == len(want) else len(want)
        print(f"{split}: {bad or 'all'} of {len(want):,} documents {'differ from' if bad else 'match'} the file list's "
              "token counts" + (" (another tokenizer, or other document files)" if bad else ""))


# --- Tokenizer: made once per prepare, described in meta.json ---
def _texts_of(kind: str, items: list, field_name: str = "text") -> list[str]:
    if kind == "texts":
        return [t if t is not None else "" for t in items]
    if kind in ("raw", "raw_nl"):  # raw_nl: universal newlines, as Python's text mode reads
        texts = [decode_text(data, name) for name, data in items]
        return [t.replace("\r\n", "\n").replace("\r", "\n") for t in texts] if kind == "raw_nl" else texts
    from gptlab.data.hf_prepare import jsonl_texts

    return jsonl_texts(items, field_name)


def _documents(streams: list[Stream], text_field: str, limit: int | None = None):
    """Non-empty texts of the given streams, in order (at most `limit`)."""
    texts = (t for st in streams for kind, items in st.iter_batches(0, 256, 1 << 24)
             for t in _texts_of(kind, items, text_field) if t)
    return itertools.islice(texts, limit)


def make_tokenizer(kind: str, work: Path, streams: list[Stream], opts: dict, text_field: str = "text"):
    """The tokenizer of this prepare: GPT-2, a character table over all splits, a given SentencePiece
    model (copied in) or one trained on the first documents of train."""
    if kind == "gpt2":  # find the vocabulary, fetching it through a registry if need be; say where
        print(f"GPT-2 vocabulary: {find_gpt2_ranks(allow_fetch=True)[1]}")
        return GPT2Tokenizer()
    if kind == "char":
        return CharTokenizer(c for t in _documents(streams, text_field) for c in set(t))
    if opts.get("tokenizer_model"):
        src = Path(opts["tokenizer_model"])
        if not src.is_file():
            raise UserError(f"--tokenizer_model {src} is not a file: give a SentencePiece .model file")
        shutil.copyfile(src, work / "tokenizer.model")
        try:
            return tokenizer_from_meta({"kind": "sentencepiece", "model_file": "tokenizer.model"}, work)
        except (RuntimeError, OSError):
            raise UserError(f"--tokenizer_model {src} is not a SentencePiece model: give a .model file") from None
    train = [s for s in streams if s.split == "train"] or streams[:1]
    t0 = time.perf_counter()
    tok = train_sentencepiece(_documents(train, text_field, opts.get("sp_docs", 100_000)), work / "tokenizer",
                              opts.get("vocab_size") or 16384, opts.get("input_sentence_size") or 2_000_000,
                              opts.get("num_threads"), opts.get("seed", 0))
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
    out = np.concatenate([p for d in docs for p in (np.asarray(d), *eot)], dtype=dtype, casting="unsafe")
    return out, np.array([len(d) + len(eot) for d in docs], dtype=np.int64)


def _work(task) -> tuple[dict, int, tuple]:
    """(kind, items, val_mask or None, eot, header) -> {output group: (ids, lengths)}, characters read, header."""
    kind, items, mask, eot, header = task
    tok = _W["tok"]
    docs = [np.asarray(d) for d in items] if kind == "ids" else _texts_of(kind, items, _W["field"])
    nchars = 0 if kind == "ids" else sum(len(t) for t in docs)  # a cheap stand-in for MB/s
    keep = [i for i, d in enumerate(docs) if len(d)]
    groups = [(0, keep)] if mask is None else [(0, [i for i in keep if not mask[i]]), (1, [i for i in keep if mask[i]])]
    out = {}
    for g, idx in (x for x in groups if x[1]):
        group = [docs[i] for i in idx]
        ids = group if kind == "ids" else tok.encode_batch(group, num_threads=_W["threads"])
        out[g] = _pack(ids, tok.eot_id if eot else None, T.dtype_for_vocab(tok.vocab_size))
    return out, nchars, header


def _bounded_imap(pool, fn, tasks: Iterator, window: int):
    """pool.imap with at most `window` tasks in flight (Pool.imap would pull the whole corpus into memory)."""
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
        x = np.arange(start, start + n, dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) & (2**64 - 1))
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
        self.bar = tqdm(total=total, initial=done, unit="doc", unit_scale=True, desc=desc, dynamic_ncols=True,
                        disable=enabled is False or self.lines)

    def update(self, n: int, note: str) -> None:
        before, self.done = self.done, self.done + n
        self.bar.update(n)
        self.bar.set_postfix_str(note, refresh=False)
        if self.lines and int(20 * self.done / self.total) > int(20 * before / self.total):  # 5% steps
            print(f"{self.desc}: {100 * self.done / self.total:.0f}% ({self.done:,}/{self.total:,} docs, {note})", flush=True)

    def close(self) -> None:
        self.bar.close()


# --- The pipeline ---
@dataclass
class Plan:
    """What to prepare: the recipe's streams and source, the tokenizer, and the options a resume must repeat."""

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
    if not out.name or out.resolve() == Path.cwd().resolve() or out.resolve() == Path.home().resolve():
        raise UserError(f"--out {out} is the working or home folder: give a new folder such as data/NAME")
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link: give the folder it points to, or a new folder")
    if out.parent.exists() and not out.parent.is_dir():
        raise UserError(f"--out {out} lies under {out.parent}, which is a file: choose another --out")
    state = T.dataset_state(out)
    if state == "other":
        what = "a file" if out.is_file() else "a folder that is not a gptlab dataset"
        raise UserError(f"--out {out} is {what}; prepare only writes a new folder, an empty one, or replaces a "
                        "gptlab dataset: choose another --out")
    if state == "dataset" and not overwrite:
        raise UserError(f"{out} already holds prepared data: pass --overwrite to replace it, or choose another --out")


def _clear(folder: Path) -> None:
    """Empty a partial folder of the files a prepare writes there (nothing else is touched)."""
    for p in folder.iterdir():
        if p.is_file() and p.name != files.LOCK_FILE and (p.name in (PROGRESS, "tokenizer.model", "tokenizer.vocab")
                                                          or p.name.endswith(".partial") or T.is_dataset_file(p.name)
                                                          or re.fullmatch(r"\..+\.tmp-\d+", p.name)):
            p.unlink()


def _swap_in(work: Path, out: Path, replace: bool) -> None:
    """Move the complete dataset in `work` to `out`, replacing a gptlab dataset there only if allowed."""
    state = T.dataset_state(out)
    if state == "other" or (state == "dataset" and not replace):
        raise UserError(f"--out {out} changed while preparing and is no longer ours to replace: move it away, "
                        "then rerun with --resume")
    for p in work.glob(".*.tmp-*"):  # left by a write a kill interrupted
        p.unlink()
    (work / PROGRESS).unlink()
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if state != "absent":
        os.rename(out, old)
    os.rename(work, out)
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
            raise UserError(f"{work} holds an interrupted prepare: pass --resume to continue it or --overwrite to start over")
        state = files.read_json(prog, "prepare progress")
        if state.get("config") != config:
            diff = sorted(k for k in config if state.get("config", {}).get(k) != config[k])
            raise UserError(f"{work} was started with different options ({', '.join(diff)}): repeat them, or pass --overwrite")
        return state
    _clear(work)
    return None


def build(plan: Plan, out, *, overwrite: bool = False, resume: bool = False, num_proc: int = 1, threads: int = 1,
          batch_docs: int = 1024, batch_bytes: int = 8 << 20, sync_every_s: float = 10.0,
          progress: bool | None = None, _after_batch: Callable[[int], None] | None = None) -> Path:
    """Run a plan into `out`; returns the data dir."""
    t0 = time.perf_counter()
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: pass one")
    out, work = Path(out), work_dir(out)
    if bad := [s for s in _split_names(plan.streams) if not T.SPLIT_NAME.fullmatch(s)]:
        raise UserError(f"split name {bad[0][:40]!r} is not a plain name (letters, digits, _ and -): pick or rename splits")
    config = {"version": PROGRESS_VERSION, **plan.config, "batch_docs": batch_docs, "batch_bytes": batch_bytes}
    if resume and T.dataset_state(out) == "dataset" and not (work / PROGRESS).exists():
        print(f"{out} is already fully prepared; nothing to resume")
        return out
    if not (resume and (work / PROGRESS).exists()):
        _check_out(out, overwrite)
    try:
        with files.folder_lock(work, "prepare output"):
            state = _load_state(work, config, overwrite, resume)
            try:
                meta = _run(plan, work, state, config, overwrite, num_proc, threads, batch_docs, batch_bytes,
                            sync_every_s, progress, _after_batch)
            except BaseException as e:
                # Bad input or a failure before the first checkpoint: leave nothing behind. Otherwise keep
                # the partial folder for --resume.
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
    parts = ", ".join(f"{s} {i['tokens']:,} tokens" + (f" / {i['documents']:,} docs" if i.get("documents") else "")
                      for s, i in meta["splits"].items())
    print(f"prepared {plan.recipe} in {time.perf_counter() - t0:.1f}s: {parts}; tokenizer "
          f"{meta['tokenizer']['kind']}, vocab {meta['vocab_size']:,}, {meta['dtype']} -> {out}")
    return out


def _split_names(streams: list[Stream]) -> list[str]:
    return list(dict.fromkeys(s for st in streams for s in ([st.split, "val"] if st.carve else [st.split])))


def _tasks(plan: Plan, rows_done: int, batch_docs: int, batch_bytes: int):
    """Worker tasks with (stream index, first row, rows) headers, skipping the rows an earlier run wrote."""
    base = 0
    for i, st in enumerate(plan.streams):
        skip = max(0, min(st.rows, rows_done - base))
        row = base + skip
        for kind, items in st.iter_batches(skip, batch_docs, batch_bytes):
            mask = row_uniform(plan.seed, row - base, len(items)) < st.carve if st.carve else None
            yield kind, items, mask, st.eot, (i, row, len(items))
            row += len(items)
        base += st.rows


def _run(plan: Plan, work: Path, state: dict | None, config: dict, overwrite: bool, num_proc: int, threads: int,
         batch_docs: int, batch_bytes: int, sync_every_s: float, progress, _after_batch) -> dict:
    """Tokenizer, encode, write; returns the meta written into `work`."""
    prog_path = work / PROGRESS
    if state is not None and (work / T.META).is_file():  # complete, interrupted before the swap
        return T.read_meta(work)
    if state is None:
        tok = make_tokenizer(plan.tokenizer, work, plan.streams, plan.tok_opts, plan.text_field)
        state = {"config": config, "tokenizer": tok.to_meta(), "rows_done": 0, "splits": {}, "replace": overwrite}
        files.atomic_write_json(prog_path, state)
    tok = tokenizer_from_meta(state["tokenizer"], work)
    dt = T.dtype_for_vocab(tok.vocab_size)
    writers = {s: T.SplitWriter(work, s, dt, vocab_size=tok.vocab_size, **state["splits"].get(s, {}))
               for s in _split_names(plan.streams)}
    rows_done, total = state["rows_done"], sum(st.rows for st in plan.streams)

    def checkpoint():
        for w in writers.values():
            w.sync()
        state["rows_done"] = rows_done
        state["splits"] = {s: {"tokens": w.tokens, "documents": w.documents} for s, w in writers.items()}
        files.atomic_write_json(prog_path, state)

    init = (state["tokenizer"], str(work), plan.text_field)
    tasks = _tasks(plan, rows_done, batch_docs, batch_bytes)
    bar = Progress(total, rows_done, f"prepare {plan.recipe}", progress)
    t_start, chars, last_sync, n_batches = time.perf_counter(), 0, time.perf_counter(), 0
    # Encode inline, or in num_proc workers (fork shares imported modules; all results are in when the pool ends)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(num_proc, _worker_init, (*init, 1)) if num_proc > 1 else contextlib.nullcontext() as pool:
        if pool is None:
            _worker_init(*init, threads)
        results = _bounded_imap(pool, _work, tasks, window=2 * num_proc) if pool else map(_work, tasks)
        try:
            for res, nchars, (i, row, n) in results:
                for g, (ids, lens) in sorted(res.items()):
                    writers["val" if g == 1 else plan.streams[i].split].append(ids, lens)
                rows_done, chars, n_batches = row + n, chars + nchars, n_batches + 1
                rate = chars / max(time.perf_counter() - t_start, 1e-9) / 1e6
                bar.update(n, f"{sum(w.tokens for w in writers.values()):,} tok, {rate:.1f} M chars/s")
                if time.perf_counter() - last_sync >= sync_every_s:
                    checkpoint()
                    last_sync = time.perf_counter()
                if _after_batch is not None:
                    _after_batch(n_batches)  # test hook: simulate an interruption after N batches
            checkpoint()
        except BaseException:
            for w in writers.values():  # the last checkpoint stays as it is: --resume truncates to it
                w.close()
            raise
        finally:
            bar.close()
    if rows_done != total:
        raise RuntimeError(f"read {rows_done} rows but the source has {total}")
    meta = {"format": T.FORMAT, "recipe": plan.recipe, "tokenizer": state["tokenizer"], "vocab_size": int(tok.vocab_size),
            "dtype": T.dtype_name(dt), "eot_id": tok.eot_id,
            "splits": {s: w.finish() for s, w in writers.items()}, "source": plan.source, **plan.extra}
    T.write_meta(work, meta)
    return meta


# --- Entry points ---
def check_options(name: str, tokenizer, val_fraction, vocab_size, num_proc) -> None:
    if name not in RECIPES:
        hint = "".join(f"did you mean {c!r}? " for c in difflib.get_close_matches(name, list(RECIPES), n=1))
        raise UserError(f"unknown prepare recipe {name!r}: {hint}choose one of {', '.join(RECIPES)}")
    if val_fraction is not None and not (0.0 <= val_fraction < 1.0 if name in HF_RECIPES else 0.0 < val_fraction < 1.0):
        raise UserError(f"--val_fraction {val_fraction} must be between 0 and 1 (e.g. 0.1)")
    if tokenizer is not None and tokenizer not in TOKENIZERS:
        raise UserError(f"unknown --tokenizer {tokenizer!r}: use char, gpt2 or sentencepiece")
    if vocab_size is not None and vocab_size < 8:
        raise UserError(f"--vocab_size {vocab_size} is too small: use at least a few hundred")
    if num_proc is not None and num_proc < 1:
        raise UserError(f"--num_proc {num_proc} must be at least 1")


def _small_plan(name, input, tokenizer, seed, val_fraction, file_lists, splits, tok_opts) -> Plan:
    lengths = {}
    if name in ("shakespeare_char", "shakespeare"):
        text, source = get_tinyshakespeare(input)
        streams, kind = _one_text(text, val_fraction), tokenizer or ("char" if name == "shakespeare_char" else "gpt2")
    elif name == "zero_one":
        if tokenizer not in (None, "gpt2"):
            raise UserError("the zero_one recipe is defined with GPT-2 BPE: drop --tokenizer or use `prepare text`")
        (streams, source), kind = _source_zero_one(seed, val_fraction), "gpt2"
    elif name == "text":
        (streams, source), kind = _source_text(input, val_fraction), tokenizer or "gpt2"
    else:
        streams, source, lengths = _source_books(name, input, file_lists, splits)
        kind = tokenizer or "sentencepiece"
    extra = {} if name in ("books", "openbooks") else {"val_fraction": val_fraction}
    config = {"recipe": name, "input": str(input), "tokenizer": kind, "seed": seed, "val_fraction": val_fraction,
              "file_lists": str(file_lists), "splits": splits, "source_sha256": source.get("sha256"),
              "tok_opts": {k: str(v) for k, v in tok_opts.items() if k != "num_threads"}}
    return Plan(name, streams, source, kind, config, {**tok_opts, "seed": seed}, extra, seed=seed, lengths=lengths)


def prepare(recipe: str, input=None, tokenizer: str | None = None, out=None, overwrite: bool = False,
            resume: bool = False, seed: int | None = None, val_fraction: float | None = None,
            vocab_size: int | None = None, num_threads: int | None = None, num_proc: int | None = None,
            input_sentence_size: int | None = None, tokenizer_model=None, file_lists=None,
            splits: list[str] | None = None, progress: bool | None = None, **hf) -> Path:
    """Run a recipe; returns the data dir (default data/NAME). hf recipes take prepare_hf's options in **hf."""
    check_options(recipe, tokenizer, val_fraction, vocab_size, num_proc)
    if tokenizer_model is not None and tokenizer not in (None, "sentencepiece"):
        raise UserError("--tokenizer_model is a SentencePiece model: drop --tokenizer or use --tokenizer sentencepiece")
    tokenizer = "sentencepiece" if tokenizer_model is not None else tokenizer
    tok_opts = {"vocab_size": vocab_size, "num_threads": num_threads, "input_sentence_size": input_sentence_size,
                "tokenizer_model": tokenizer_model}
    if recipe in HF_RECIPES:
        from gptlab.data.hf_prepare import prepare_hf

        return prepare_hf(recipe=recipe, tokenizer=tokenizer, out=out, overwrite=overwrite, resume=resume, seed=seed,
                          val_fraction=val_fraction, num_proc=num_proc, progress=progress, tok_opts=tok_opts, **hf)
    if hf:
        raise UserError(f"unknown prepare option(s) {', '.join(sorted(hf))}: see `gptlab prepare --help`")
    seed = 1337 if seed is None else seed
    val_fraction = 0.1 if val_fraction is None else val_fraction
    plan = _small_plan(recipe, input, tokenizer, seed, val_fraction, file_lists, splits, tok_opts)
    out = build(plan, Path(out) if out is not None else Path("data") / recipe, overwrite=overwrite, resume=resume,
                num_proc=num_proc or 1, threads=num_threads or os.cpu_count() or 1, progress=progress)
    _check_lengths(out, plan.lengths)
    return out


def build_parser() -> argparse.ArgumentParser:
    recipes = "\n".join(f"  {k:<17} {v}" for k, v in RECIPES.items())
    p = _Parser(prog="gptlab prepare", description="Turn text into token files ({split}.bin + meta.json).",
                epilog="recipes:\n" + recipes, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, kw in {
        "recipe": dict(help="recipe name (see below)"),
        "--input": dict(help="input file or folder (small recipes)"),
        "--tokenizer": dict(choices=TOKENIZERS, help="tokenizer (default: the recipe's)"),
        "--out": dict(help="output data dir (default: data/NAME)"),
        "--overwrite": dict(action="store_true", help="replace a prepared dir (or restart an interrupted prepare)"),
        "--resume": dict(action="store_true", help="continue an interrupted prepare into --out"),
        "--seed": dict(type=int, help="random seed (zero_one, val selection, SentencePiece sampling)"),
        "--val_fraction": dict(type=float, help="held-out fraction (default 0.1; hf recipes their own)"),
        "--vocab_size": dict(type=int, help="SentencePiece vocabulary size (default 16384)"),
        "--tokenizer_model": dict(help="books: an existing SentencePiece .model (e.g. Languini's books_16384.model)"),
        "--file_lists": dict(help="books: a folder of Languini file_list_SPLIT.npy (document order and lengths)"),
        "--splits": dict(type=lambda v: [s for s in v.split(",") if s] or None,
                         help="books: comma-separated splits to prepare (default: all)"),
        "--num_threads": dict(type=int, help="tokeniser threads inline (default: all cores)"),
        "--num_proc": dict(type=int, help="tokeniser processes (default 1; hf recipes: all cores)"),
        "--input_sentence_size": dict(type=int, help="lines sampled for SentencePiece training (default 2,000,000)"),
        "--dataset": dict(help="hf: hub name or local path (save_to_disk folder, parquet, jsonl, .txt)"),
        "--name": dict(help="hf: dataset configuration name"),
        "--split": dict(help="hf: only this split (default: all the source has)"),
        "--text_field": dict(default="text", help="hf: column holding the text"),
        "--batch_docs": dict(type=int, default=1024, help="documents per encode task"),
        "--no_progress": dict(action="store_false", dest="progress", default=None, help="no progress bar or lines"),
    }.items():
        p.add_argument(flag, **kw)
    return p


def main(argv: list[str]) -> int:
    a = vars(build_parser().parse_args(argv))
    hf = {k: a.pop(k) for k in ("dataset", "name", "split", "text_field", "batch_docs")}
    prepare(**a, **(hf if a["recipe"] in HF_RECIPES else {}))
    return 0


if __name__ == "__main__":
    from gptlab.cli import main as cli_main

    sys.exit(cli_main(["prepare", *sys.argv[1:]]))
