"""`gptlab prepare hf|openwebtext|tinystories`: large corpora into token files.

Bounded memory at any corpus size. The main process reads documents in
batches (capped by count and by bytes), worker processes tokenise them, and
the results come back in submission order with a bounded number of batches in
flight; each batch is appended to `{split}.bin.partial` straight away. Nothing
grows with the corpus except the per-document start offsets, which are also
appended to a raw file rather than kept in a list.

Sources (`--dataset`):
  * a local folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`
    (needs `datasets`);
  * local parquet, jsonl / json-lines or .txt files (a file or a folder of them):
    read with pyarrow (parquet) or plain Python (jsonl, txt), so the common
    offline case needs no `datasets` at all and streams without an Arrow cache;
  * anything else is a hub name handed to `datasets.load_dataset` (which
    honours HF_DATASETS_OFFLINE / HF_HUB_OFFLINE and its local cache).

Every document is followed by the tokenizer's end-of-document id (GPT-2's
<|endoftext|>, SentencePiece's <D>), and `{split}.docs.npy` holds the uint64
start of every document, as tokens.py defines. Empty documents are skipped.

Interruptions: `progress.json` records the source rows consumed and, per split,
tokens and documents written; it is rewritten only after the bins were flushed
and fsynced, so `--resume` truncates the bins to the recorded sizes, re-hashes
what is kept, skips the consumed rows and continues. The result is byte for
byte the one an uninterrupted run gives. A partial output is refused without
--resume or --overwrite.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from gptlab.errors import UserError
from gptlab.data import tokens as T
from gptlab.data.tokenizers import CharTokenizer, GPT2Tokenizer, SentencePieceTokenizer, train_sentencepiece

PROGRESS = "progress.json"
PROGRESS_VERSION = 1
SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}
KNOWN_SPLITS = ("train", "validation", "valid", "val", "dev", "test")
TEXT_SUFFIXES = (".txt", ".text", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)

RECIPES = {
    # The well-known GPT-2 recipe: train_test_split(test_size=0.0005, seed=2357,
    # shuffle=True), test renamed val, GPT-2 BPE with <|endoftext|> after each document.
    "openwebtext": dict(dataset="Skylion007/openwebtext", split="train", val_fraction=0.0005, seed=2357,
                        tokenizer="gpt2", text_field="text"),
    # TinyStories ships its own validation split, so nothing is carved out of train.
    "tinystories": dict(dataset="roneneldan/TinyStories", split=None, val_fraction=0.0, seed=2357,
                        tokenizer="gpt2", text_field="text"),
}


def _need_datasets(why: str):
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise UserError(f"{why} needs the Hugging Face datasets library: pip install 'gptlab[datasets]' (or pip install datasets)") from None
    return datasets


def _out_split(name: str) -> str:
    return SPLIT_ALIASES.get(name, name)


# --------------------------------------------------------------------------
# Sources: each yields lists of documents, can skip rows, knows its row count.
# --------------------------------------------------------------------------


@dataclass
class Stream:
    """One input stream of rows going to `split` (or carved into train/val when carve > 0)."""

    split: str
    rows: int
    iter_batches: Callable[[int, int, int], Iterator[tuple[str, list]]]  # (skip, max_docs, max_bytes) -> (kind, items)
    bytes: int | None = None
    carve: float = 0.0
    describe: dict = field(default_factory=dict)


def _split_of_file(path: Path, root: Path) -> str | None:
    """HF hub layout: `train-00000-of-00002.parquet`, `data/test.jsonl`, `validation/part-0.parquet`."""
    parts = [p.lower() for p in path.relative_to(root).parts] if path != root else [path.name.lower()]
    for part in reversed(parts):
        stem = part.split(".")[0]
        for s in KNOWN_SPLITS:
            if stem == s or stem.startswith(s + "-") or stem.startswith(s + "_"):
                return s
    return None


def _kind_of(path: Path) -> str | None:
    n = path.name.lower()
    if n.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if n.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if n.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _count_lines(path: Path) -> int:
    """Lines as `for line in file` yields them (a last line without newline counts)."""
    n, last = 0, b"\n"
    with _open_maybe_gz(path) as f:
        while block := f.read(1 << 24):
            n += block.count(b"\n")
            last = block
    return n + (not last.endswith(b"\n"))


def _capped_batches(docs, max_docs: int, max_bytes: int):
    """Lists of documents, each closed at max_docs documents or max_bytes bytes."""
    batch, nb = [], 0
    for d in docs:
        batch.append(d)
        nb += len(d)
        if len(batch) >= max_docs or nb >= max_bytes:
            yield batch
            batch, nb = [], 0
    if batch:
        yield batch


def _file_stream(split: str, files: list[Path], kind: str, text_field: str) -> Stream:
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("reading parquet needs pyarrow: pip install 'gptlab[datasets]' (or pip install pyarrow)") from None
        rows = 0
        for f in files:
            pf = pq.ParquetFile(f)
            if text_field not in pf.schema_arrow.names:
                raise UserError(f"{f} has no column {text_field!r} (it has {', '.join(pf.schema_arrow.names)}): pass --text_field NAME")
            rows += pf.metadata.num_rows

        def it(skip, max_docs, max_bytes):
            for f in files:
                pf = pq.ParquetFile(f)
                for rb in pf.iter_batches(batch_size=max_docs, columns=[text_field]):
                    n = rb.num_rows
                    if skip >= n:  # consumed before an interruption: skip without decoding strings
                        skip -= n
                        continue
                    col = rb.column(0)
                    if skip:
                        col, skip = col.slice(skip), 0
                    yield "texts", col.to_pylist()
        return Stream(split, rows, it, sum(f.stat().st_size for f in files), describe={"format": "parquet"})

    if kind == "jsonl":
        rows = sum(_count_lines(f) for f in files)

        def it(skip, max_docs, max_bytes):
            # Raw lines go to the workers, which parse JSON in parallel.
            for f in files:
                with _open_maybe_gz(f) as fh:
                    lines = iter(fh)
                    for _ in zip(range(skip), lines):  # rows done before an interruption
                        skip -= 1
                    for batch in _capped_batches(lines, max_docs, max_bytes):
                        yield "jsonl", batch
        return Stream(split, rows, it, sum(f.stat().st_size for f in files), describe={"format": "jsonl"})

    # text: one document per file, as the `text` recipe does.
    def read(f):
        with _open_maybe_gz(f) as fh:
            return fh.read()

    def it(skip, max_docs, max_bytes):
        for batch in _capped_batches(map(read, files[skip:]), max_docs, max_bytes):
            yield "raw", batch
    return Stream(split, len(files), it, sum(f.stat().st_size for f in files), describe={"format": "text", "documents": "one per file"})


def _dataset_stream(split: str, ds, text_field: str) -> Stream:
    if text_field not in ds.column_names:
        raise UserError(f"the dataset has no column {text_field!r} (it has {', '.join(ds.column_names)}): pass --text_field NAME")
    ds = ds.select_columns([text_field])

    def it(skip, max_docs, max_bytes):
        for s in range(skip, len(ds), max_docs):
            yield "texts", ds[s : s + max_docs][text_field]
    return Stream(split, len(ds), it, describe={"format": "arrow"})


def _local_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return [p for p in sorted(root.rglob("*")) if p.is_file() and _kind_of(p)
            and not any(x.startswith(".") for x in p.relative_to(root).parts)]


def _is_save_to_disk(root: Path) -> bool:
    return root.is_dir() and ((root / "dataset_dict.json").is_file() or (root / "state.json").is_file())


def open_source(dataset: str, name: str | None, split: str | None, text_field: str, val_fraction: float,
                seed: int) -> tuple[list[Stream], dict]:
    """Streams to prepare, in order, and the `source` entry for meta.json."""
    p = Path(dataset).expanduser()
    source: dict = {"dataset": dataset, "config": name, "split": split, "text_field": text_field}
    by_split: dict[str, object] = {}
    if p.exists():
        source["path"] = str(p.resolve())
        if _is_save_to_disk(p):
            datasets = _need_datasets(f"{p} (a save_to_disk folder)")
            d = datasets.load_from_disk(str(p))
            by_split = dict(d) if isinstance(d, datasets.DatasetDict) else {"train": d}
            source["kind"] = "save_to_disk"
        else:
            files = _local_files(p)
            if not files:
                raise UserError(f"{p} holds no parquet, jsonl or .txt files and is not a save_to_disk folder: give one of those")
            kinds = {_kind_of(f) for f in files}
            if len(kinds) > 1:
                raise UserError(f"{p} mixes file formats ({', '.join(sorted(kinds))}): point --dataset at one kind of file")
            kind = kinds.pop()
            groups: dict[str, list[Path]] = {}
            for f in files:
                groups.setdefault(_split_of_file(f, p) or "train", []).append(f)
            by_split = {s: ("files", fs, kind) for s, fs in groups.items()}
            source["kind"] = kind
            source["files"] = len(files)
    else:
        datasets = _need_datasets(f"--dataset {dataset} (not a local path, so a hub dataset)")
        try:
            d = datasets.load_dataset(dataset, name, split=split)
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean "could not load"
            msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
            off = " (offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE set, and no cached copy)" if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1" else ""
            raise UserError(f"could not load dataset {dataset!r}{off}: {msg[:200]}; give a local path (save_to_disk folder, parquet, jsonl, txt) instead") from None
        by_split = dict(d) if isinstance(d, datasets.DatasetDict) else {split or "train": d}
        source["kind"] = "hub"
    if split is not None:
        if split not in by_split:
            alt = [k for k in by_split if _out_split(k) == _out_split(split)]
            if not alt:
                raise UserError(f"{dataset} has no split {split!r} (it has {', '.join(by_split)}): pass --split with one of those")
            split = alt[0]
        by_split = {split: by_split[split]}
    out_names = [_out_split(s) for s in by_split]
    if len(set(out_names)) != len(out_names):
        raise UserError(f"{dataset} has splits that map to the same name ({', '.join(by_split)}): pick one with --split")
    carve = val_fraction > 0 and "val" not in out_names and "train" in by_split
    if val_fraction > 0 and not carve:
        val_fraction = 0.0  # a real validation split exists (or no train): use it, carve nothing
    streams = []
    # train first, then the held-out splits, whatever order the source lists them in
    order = sorted(by_split, key=lambda s: (s != "train", _out_split(s)))
    for s in order:
        v = by_split[s]
        if isinstance(v, tuple):
            st = _file_stream(_out_split(s), v[1], v[2], text_field)
            if carve and s == "train":
                st.carve = val_fraction  # streamed files: a seeded hash of the row index picks val rows
            streams.append(st)
        elif carve and s == "train":
            # The recipe's exact split: same documents in val, train in the same shuffled order.
            tt = v.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)
            streams.append(_dataset_stream("train", tt["train"], text_field))
            streams.append(_dataset_stream("val", tt["test"], text_field))
        else:
            streams.append(_dataset_stream(_out_split(s), v, text_field))
    source["val_fraction"] = val_fraction
    source["val_method"] = (("train_test_split" if not isinstance(by_split.get("train"), tuple) else "row_hash")
                            if carve else None)
    source["seed"] = seed
    return streams, source


def _row_uniform(seed: int, start: int, n: int) -> np.ndarray:
    """U[0,1) per row index (splitmix64 of seed and index): the val choice of a
    row never depends on batching, so resumed runs choose the same rows."""
    with np.errstate(over="ignore"):
        x = np.arange(start, start + n, dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) & (2**64 - 1))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# --------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------

_W: dict = {}


def _worker_init(tok_meta: dict, tok_dir: str, text_field: str, threads: int) -> None:
    # Each worker builds its tokenizer once; numpy/BLAS threads are irrelevant here.
    _W["tok"] = _build_tok(tok_meta, Path(tok_dir))
    _W["field"] = text_field
    _W["threads"] = threads


def _build_tok(tok_meta: dict, tok_dir: Path):
    kind = tok_meta["kind"]
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        return CharTokenizer(tok_meta["chars"])
    return SentencePieceTokenizer(tok_dir / tok_meta["model_file"], meta_name=tok_meta["model_file"])


def _texts_of(kind: str, items: list, field_name: str) -> list[str]:
    if kind == "texts":
        return [t if t is not None else "" for t in items]
    if kind == "raw":
        return [b.decode("utf-8") for b in items]
    out = []
    for line in items:
        if not line.strip():
            out.append("")
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"a jsonl line is not JSON ({e.msg}): fix the file or skip it") from None
        v = row.get(field_name) if isinstance(row, dict) else None
        if v is None and not isinstance(row, dict):
            raise UserError(f"a jsonl line is not an object: give one JSON object with a {field_name!r} field per line")
        if v is None:
            raise UserError(f"a jsonl line has no field {field_name!r} (it has {', '.join(row)}): pass --text_field NAME")
        out.append(v)
    return out


def encode_texts(tok, texts: list[str], threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of non-empty documents, each followed by eot, as one array; and per-document lengths."""
    eot = tok.eot_id
    if isinstance(tok, GPT2Tokenizer):
        docs = tok.enc.encode_ordinary_batch(texts, num_threads=threads) if threads > 1 else [tok.enc.encode_ordinary(t) for t in texts]
    elif isinstance(tok, CharTokenizer):
        docs = [tok.encode_array(t).tolist() for t in texts]
    else:
        docs = tok.encode_batch(texts, num_threads=threads)
    lens = np.empty(len(docs), dtype=np.int64)
    flat: list[int] = []
    for i, d in enumerate(docs):
        if eot is not None:
            d.append(eot)
        lens[i] = len(d)
        flat += d
    dt = T.dtype_for_vocab(tok.vocab_size)
    return np.array(flat, dtype=dt), lens


def _work(task):
    """(kind, items, val_mask or None) -> per output group: (token bytes, lengths), and text bytes."""
    kind, items, mask = task
    texts = _texts_of(kind, items, _W["field"])
    nbytes = sum(len(t) for t in texts)  # characters: a cheap stand-in for MB/s
    keep = [i for i, t in enumerate(texts) if t]
    out = {}
    groups = [(0, keep)] if mask is None else [(0, [i for i in keep if not mask[i]]), (1, [i for i in keep if mask[i]])]
    for g, idx in groups:
        if idx:
            arr, lens = encode_texts(_W["tok"], [texts[i] for i in idx], _W["threads"])
            out[g] = (arr.tobytes(), lens)
    return out, nbytes


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------


class _SplitWriter:
    """Appends tokens to `{split}.bin.partial` and uint64 starts to `{split}.docs.partial`."""

    def __init__(self, out: Path, split: str, itemsize: int, tokens: int = 0, documents: int = 0):
        self.split, self.itemsize = split, itemsize
        self.bin_p = out / f"{split}.bin.partial"
        self.docs_p = out / f"{split}.docs.partial"
        self.tokens, self.documents = tokens, documents
        for p, size in ((self.bin_p, tokens * itemsize), (self.docs_p, documents * 8)):
            with open(p, "ab") as f:
                if f.tell() < size:
                    raise UserError(f"{p} is shorter than progress.json records: the partial output is damaged; use --overwrite")
                f.truncate(size)  # drop whatever was written after the last recorded checkpoint
        self.h = hashlib.sha256()
        with open(self.bin_p, "rb") as f:  # hashlib state cannot be saved, so re-hash what is kept
            while block := f.read(1 << 24):
                self.h.update(block)
        self.fb = open(self.bin_p, "ab")
        self.fd = open(self.docs_p, "ab")

    def append(self, data: bytes, lens: np.ndarray) -> None:
        starts = np.empty(len(lens), dtype=np.uint64)
        starts[0] = self.tokens
        if len(lens) > 1:
            starts[1:] = self.tokens + np.cumsum(lens[:-1], dtype=np.int64).astype(np.uint64)
        self.fb.write(data)
        self.h.update(data)
        self.fd.write(starts.astype("<u8").tobytes())
        self.tokens += len(data) // self.itemsize
        self.documents += len(lens)

    def sync(self) -> None:
        for f in (self.fb, self.fd):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.fb.close()
        self.fd.close()

    def finish(self, out: Path) -> dict:
        """Verify sizes against the counts, write `{split}.docs.npy` and `{split}.bin`."""
        self.sync()
        self.close()
        nb = self.bin_p.stat().st_size
        if nb != self.tokens * self.itemsize:
            raise RuntimeError(f"{self.bin_p}: {nb} bytes written but {self.tokens} tokens counted")
        if self.docs_p.stat().st_size != self.documents * 8:
            raise RuntimeError(f"{self.docs_p}: size does not match {self.documents} documents")
        starts = np.memmap(self.docs_p, dtype="<u8", mode="r") if self.documents else np.zeros(0, np.uint64)
        if self.documents and (int(starts[0]) != 0 or int(starts[-1]) >= self.tokens):
            raise RuntimeError(f"{self.split}: document starts do not fit the bin")
        tmp = out / f"{self.split}.docs.tmp.npy"
        with open(tmp, "wb") as f:  # chunked copy behind a .npy header: never loads all starts
            np.lib.format.write_array_header_1_0(f, {"descr": "<u8", "fortran_order": False, "shape": (self.documents,)})
            with open(self.docs_p, "rb") as src:
                while block := src.read(1 << 24):
                    f.write(block)
        del starts
        os.replace(tmp, T.docs_path(out, self.split))
        os.replace(self.bin_p, T.bin_path(out, self.split))
        self.docs_p.unlink()
        return {"tokens": int(self.tokens), "sha256": self.h.hexdigest(), "documents": int(self.documents)}


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# The prepare
# --------------------------------------------------------------------------


def _bounded_imap(pool, fn, tasks: Iterator, window: int):
    """Like pool.imap (results in order) but with at most `window` tasks in flight:
    Pool.imap drains its input eagerly, which would pull the whole corpus into memory."""
    pending: collections.deque = collections.deque()
    for t in tasks:
        pending.append(pool.apply_async(fn, (t,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _serial_imap(fn, tasks):
    for t in tasks:
        yield fn(t)


def _make_tok(kind: str, out: Path, streams: list[Stream], text_field: str, vocab_size: int | None, seed: int,
              sp_docs: int):
    if kind == "gpt2":
        return GPT2Tokenizer()
    train = [s for s in streams if s.split == "train"] or streams[:1]

    def texts(limit=None):
        n = 0
        for st in train:
            for k, items in st.iter_batches(0, 256, 1 << 24):
                for t in _texts_of(k, items, text_field):
                    if t:
                        yield t
                        n += 1
                        if limit is not None and n >= limit:
                            return
    if kind == "char":
        chars: set[str] = set()
        for t in texts():  # one streaming pass over train for the alphabet
            chars.update(t)
        return CharTokenizer(chars)
    if kind == "sentencepiece":
        # Trained on the first sp_docs train documents: bounded time and memory on any corpus.
        return train_sentencepiece(texts(sp_docs), out / "tokenizer", vocab_size=vocab_size or 16384, seed=seed)
    raise UserError(f"unknown --tokenizer {kind!r}: use gpt2, char or sentencepiece")


def prepare_hf(dataset: str, name: str | None = None, split: str | None = None, text_field: str = "text",
               val_fraction: float = 0.0005, num_proc: int | None = None, tokenizer: str = "gpt2",
               out=None, overwrite: bool = False, resume: bool = False, seed: int = 2357,
               vocab_size: int | None = None, batch_docs: int = 1024, batch_bytes: int = 8 << 20,
               sync_every_s: float = 10.0, recipe: str = "hf", progress: bool | None = None,
               sp_docs: int = 100_000, _after_batch: Callable[[int], None] | None = None) -> Path:
    """Prepare a (hub or local) dataset into `out`; returns the data dir."""
    t0 = time.perf_counter()
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val_fraction {val_fraction} must be in [0, 1) (e.g. 0.0005)")
    if tokenizer not in ("gpt2", "char", "sentencepiece"):
        raise UserError(f"unknown --tokenizer {tokenizer!r}: use gpt2, char or sentencepiece")
    if num_proc is not None and num_proc < 1:
        raise UserError(f"--num_proc {num_proc} must be at least 1")
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: pass one")
    num_proc = num_proc or os.cpu_count() or 1
    out = Path(out) if out is not None else Path("data") / (recipe if recipe != "hf" else Path(dataset.rstrip("/")).name or "hf")
    prog_path = out / PROGRESS

    config = {"version": PROGRESS_VERSION, "dataset": dataset, "name": name, "split": split, "text_field": text_field,
              "val_fraction": val_fraction, "seed": seed, "tokenizer": tokenizer, "vocab_size": vocab_size,
              "batch_docs": batch_docs, "batch_bytes": batch_bytes, "recipe": recipe}
    state = None
    if out.is_dir() and (out / T.META).is_file() and resume and not prog_path.exists():
        print(f"{out} is already fully prepared; nothing to resume")
        return out
    if prog_path.exists():
        if overwrite:
            prog_path.unlink()
            for p in list(out.glob("*.partial")) + list(out.glob("tokenizer.*")):
                p.unlink()
        elif not resume:
            raise UserError(f"{out} holds an interrupted prepare: pass --resume to continue it or --overwrite to start over")
        else:
            try:
                state = json.loads(prog_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise UserError(f"{prog_path} is damaged: pass --overwrite to start over") from None
            if state.get("config") != config:
                diff = sorted(k for k in config if state.get("config", {}).get(k) != config[k])
                raise UserError(f"{out} was started with different options ({', '.join(diff)}): repeat them, or pass --overwrite")
    streams, source = open_source(dataset, name, split, text_field, val_fraction, seed)
    if state is None:
        T.prepare_out_dir(out, overwrite)  # refuses complete data without --overwrite
        for p in out.glob("*.partial"):
            p.unlink()
        tok = _make_tok(tokenizer, out, streams, text_field, vocab_size, seed, sp_docs)
        state = {"config": config, "tokenizer": tok.to_meta(), "rows_done": 0, "splits": {}}
        _write_json(prog_path, state)
    tok_meta = state["tokenizer"]
    tok = _build_tok(tok_meta, out)
    dt = T.dtype_for_vocab(tok.vocab_size)

    split_names = []
    for st in streams:
        for s in ([st.split, "val"] if st.carve else [st.split]):
            if s not in split_names:
                split_names.append(s)
    writers = {s: _SplitWriter(out, s, dt.itemsize, **state["splits"].get(s, {})) for s in split_names}
    total_rows = sum(st.rows for st in streams)
    rows_done = state["rows_done"]

    def tasks():
        # Rows are numbered across streams; skip the ones an earlier run already wrote.
        base = 0
        for st in streams:
            skip = max(0, min(st.rows, rows_done - base))
            row = base + skip
            for kind, items in st.iter_batches(skip, batch_docs, batch_bytes):
                mask = _row_uniform(seed, row - base, len(items)) < st.carve if st.carve else None
                yield (st, row, len(items)), (kind, items, mask)
                row += len(items)
            base += st.rows

    bar = None
    if progress is not False:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total_rows, initial=rows_done, unit="doc", unit_scale=True, disable=None if progress is None else False,
                       desc=f"prepare {recipe}", smoothing=0.05, dynamic_ncols=True)
        except ImportError:
            bar = None
    ctx = None
    pool = None
    info_iter = tasks()
    headers = collections.deque()

    def task_only():
        for hdr, task in info_iter:
            headers.append(hdr)
            yield task

    if num_proc > 1:
        import multiprocessing as mp

        # fork shares the parent's imported modules (fast start); elsewhere spawn works the same way.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        threads = 1
        pool = ctx.Pool(num_proc, initializer=_worker_init, initargs=(tok_meta, str(out), text_field, threads))
        results = _bounded_imap(pool, _work, task_only(), window=2 * num_proc)
    else:
        _worker_init(tok_meta, str(out), text_field, 1)
        results = _serial_imap(_work, task_only())

    t_start, chars, last_sync, n_batches = time.perf_counter(), 0, time.perf_counter(), 0
    tokens_new = 0

    def checkpoint():
        for w in writers.values():
            w.sync()
        state["rows_done"] = rows_done
        state["splits"] = {s: {"tokens": w.tokens, "documents": w.documents} for s, w in writers.items()}
        _write_json(prog_path, state)

    try:
        for res, nchars in results:
            st, row, n = headers.popleft()
            for g, (data, lens) in sorted(res.items()):
                w = writers["val" if g == 1 else st.split]
                w.append(data, lens)
                tokens_new += len(data) // dt.itemsize
            rows_done = row + n
            chars += nchars
            n_batches += 1
            if bar is not None:
                el = max(time.perf_counter() - t_start, 1e-9)
                bar.update(n)
                bar.set_postfix_str(f"{sum(w.tokens for w in writers.values()):,} tok, {chars / el / 1e6:.1f} MB/s", refresh=False)
            if time.perf_counter() - last_sync >= sync_every_s:
                checkpoint()
                last_sync = time.perf_counter()
            if _after_batch is not None:
                _after_batch(n_batches)  # test hook: simulate an interruption after N batches
        checkpoint()
    except BaseException:
        # Leave the last checkpoint as is: --resume truncates to it.
        for w in writers.values():
            w.close()
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if bar is not None:
            bar.close()
    if pool is not None:
        pool.close()
        pool.join()

    if rows_done != total_rows:
        raise RuntimeError(f"read {rows_done} rows but the source has {total_rows}")
    meta_splits = {s: w.finish(out) for s, w in writers.items()}
    meta = {
        "format": T.FORMAT,
        "recipe": recipe,
        "tokenizer": tok_meta,
        "vocab_size": int(tok.vocab_size),
        "dtype": T.dtype_name(dt),
        "eot_id": tok.eot_id,
        "splits": meta_splits,
        "source": source,
        "val_fraction": source["val_fraction"],
    }
    T.write_meta(out, meta)
    prog_path.unlink()
    secs = time.perf_counter() - t0
    parts = ", ".join(f"{s} {i['tokens']:,} tokens / {i['documents']:,} docs" for s, i in meta_splits.items())
    print(f"prepared {recipe} ({dataset}) in {secs:.1f}s: {parts}; tokenizer {tok.name}, {meta['dtype']} -> {out}")
    return out


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"prepare: {message} (see `gptlab prepare hf --help`)")


def build_parser(recipe: str) -> argparse.ArgumentParser:
    r = RECIPES.get(recipe, {})
    p = _Parser(prog=f"gptlab prepare {recipe}",
                description="Tokenise a Hugging Face dataset (hub name, save_to_disk folder, parquet, jsonl or .txt files) "
                            "in parallel with bounded memory into {split}.bin + {split}.docs.npy + meta.json.")
    p.add_argument("--dataset", default=r.get("dataset"), required=recipe == "hf",
                   help="hub name or local path" + (f" (default {r['dataset']})" if r else ""))
    p.add_argument("--name", default=None, help="dataset configuration name (hub datasets)")
    p.add_argument("--split", default=r.get("split"), help="only this split (default: all the source has)")
    p.add_argument("--text_field", default="text", help="column holding the text")
    p.add_argument("--val_fraction", type=float, default=r.get("val_fraction", 0.0005),
                   help="fraction of train held out as val when the source has no validation split (0: none)")
    p.add_argument("--seed", type=int, default=r.get("seed", 2357), help="seed of the val selection")
    p.add_argument("--num_proc", type=int, default=None, help="tokeniser processes (default: all cores)")
    p.add_argument("--tokenizer", choices=["gpt2", "char", "sentencepiece"], default=r.get("tokenizer", "gpt2"))
    p.add_argument("--vocab_size", type=int, default=None, help="SentencePiece vocabulary size (default 16384)")
    p.add_argument("--out", help=f"output data dir (default data/{recipe if r else 'DATASET'})")
    p.add_argument("--overwrite", action="store_true", help="replace existing or partial output")
    p.add_argument("--resume", action="store_true", help="continue an interrupted prepare in --out")
    p.add_argument("--batch_docs", type=int, default=1024, help="documents per worker task")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    recipe, rest = argv[0], argv[1:]
    a = build_parser(recipe).parse_args(rest)
    prepare_hf(a.dataset, name=a.name, split=a.split, text_field=a.text_field, val_fraction=a.val_fraction,
               num_proc=a.num_proc, tokenizer=a.tokenizer, out=a.out, overwrite=a.overwrite, resume=a.resume,
               seed=a.seed, vocab_size=a.vocab_size, batch_docs=a.batch_docs, recipe=recipe,
               progress=False if a.no_progress else None)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:] or ["hf", "--help"]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
