"""`gptlab prepare NAME`: the recipes, each naming its sources (sources.py, hf_prepare.py), tokenizer and
split, run through the pipeline (pipeline.py); tiny Shakespeare, zero_one, text, books here, hf in
hf_prepare."""

from __future__ import annotations

import argparse
import difflib
import gzip
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from gptlab.args import ArgParser as _Parser  # one line naming the closest flag
from gptlab.data import tokens as T
from gptlab.data.hf_prepare import prepare_hf
from gptlab.data.pipeline import Plan, build, check_options, work_dir  # noqa: F401 (callers import it here)
from gptlab.data.sources import (
    Stream,
    check_path,
    files_digest,
    languini_file_lists,
    list_documents,
    read_text_file,
    safe_text,
    text_files_stream,
)
from gptlab.data.tokenizers import TOKENIZER_KINDS as TOKENIZERS
from gptlab.data.tokenizers import GPT2Tokenizer, sha256_bytes
from gptlab.errors import UserError

TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
OPENBOOKS_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openbooks"

RECIPES = {
    "shakespeare_char": "tiny Shakespeare, character level (vocab 65), 90/10 split",
    "shakespeare": "tiny Shakespeare, GPT-2 BPE, 90/10 split",
    "zero_one": "10,000 docs of 1,000 random words '0' (p=1/3) / '1', GPT-2 BPE, end-of-text between "
                "docs, 90/10 by doc",
    "text": "a local UTF-8 file or a folder of files (one document each), any tokenizer",
    "books": "a folder with split subfolders (train/, test/, ...) of documents, or Languini file lists "
             "(--file_lists); SentencePiece with the benchmark's settings, or --tokenizer_model PATH",
    "openbooks": "the books recipe on the openbooks corpus (../shared/data/openbooks by default)",
    "hf": "a Hugging Face dataset: hub name, save_to_disk folder, parquet, jsonl or .txt files "
          "(--dataset)",
    "openwebtext": "hf recipe: Skylion007/openwebtext, GPT-2 BPE, 0.05% val (seed 2357)",
    "tinystories": "hf recipe: roneneldan/TinyStories with its own validation split",
}
HF_RECIPES = ("hf", "openwebtext", "tinystories")


# --- Tiny Shakespeare ---
def get_tinyshakespeare(input: str | Path | None = None, verbose: bool = True) -> tuple[str, dict]:
    """Tiny Shakespeare text and where it came from, always sha256-verified: --input, or the gzipped
    copy bundled in the package (no network needed)."""
    if input is not None:
        p, kind = check_path(input, "--input", "give the path of tinyshakespeare.txt", "file"), "file"
        data = p.read_bytes()
        bad = (f"{p} is not the canonical tiny Shakespeare (1,115,394 bytes, sha256 "
               f"{TINYSHAKESPEARE_SHA256[:12]}...): use `gptlab prepare text --input FILE` for other "
               "text")
    else:
        p, kind = Path(__file__).resolve().parent / "assets" / "tinyshakespeare.txt.gz", "bundled"
        data = gzip.decompress(p.read_bytes()) if p.is_file() else b""
        bad = (f"the tiny Shakespeare copy bundled with gptlab ({p}) is missing or damaged: reinstall "
               "gptlab, or download input.txt of char-rnn's tinyshakespeare and pass --input PATH")
    if sha256_bytes(data) != TINYSHAKESPEARE_SHA256:
        raise UserError(bad)
    if verbose:
        print(f"tiny Shakespeare: from {safe_text(str(p.resolve()))}")
    return data.decode("utf-8"), {"kind": kind, "path": str(p.resolve()),
                                  "sha256": TINYSHAKESPEARE_SHA256}


# --- Small recipes as sources ---
def _split_point(n: int, val_fraction: float) -> int:
    return int(round(n * (1.0 - val_fraction)))


def _one_text(text: str, val_fraction: float) -> list[Stream]:
    """One document: the first (1 - val_fraction) of the characters train, the rest val."""
    n = _split_point(len(text), val_fraction)
    if not text[:n] or not text[n:]:
        raise UserError(f"the text ({len(text)} characters) is too short to split "
                        f"{1 - val_fraction:.0%}/{val_fraction:.0%}: give more text")
    # one row each, no end-of-document id
    return [Stream(s, 1, lambda skip, *_, t=t: iter([] if skip else [("texts", [t])]), eot=False)
            for s, t in (("train", text[:n]), ("val", text[n:]))]


def _source_text(input, val_fraction: float) -> tuple[list[Stream], dict]:
    if input is None:
        raise UserError("the text recipe needs --input PATH (a UTF-8 file or a folder of files)")
    p = check_path(input, "--input", "give a UTF-8 file or a folder of files")
    if p.is_file():
        text = read_text_file(p)
        return _one_text(text, val_fraction), {"kind": "file", "path": str(p.resolve()),
                                               "sha256": sha256_bytes(text.encode("utf-8"))}
    docs = [f for f in list_documents(p) if f.stat().st_size > 0]
    if not docs:
        raise UserError(f"{p} holds no files with text in them: give a folder of text files (one "
                        "document each)")
    source = {"kind": "dir", "path": str(p.resolve()), "documents": len(docs),
              "sha256": files_digest(docs, p)}
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
        def it(skip, max_docs,
               max_bytes):  # encoded on demand, after prepare made the vocabulary available
            ids = zero_one_tokens(bits[lo + skip:hi], GPT2Tokenizer())  # the pipeline appends eot
            for s in range(0, len(ids), max_docs):
                yield "ids", list(ids[s:s + max_docs])
        return Stream(split, hi - lo, it)
    source = {"kind": "generated", "generator": "zero_one", "seed": seed, "documents": n_docs,
              "words": n_words, "p_zero": 1 / 3, "sha256": sha256_bytes(np.packbits(bits).tobytes())}
    return [stream("train", 0, n_train), stream("val", n_train, n_docs)], source


def _source_books(name: str, input, file_lists, splits: list[str] | None) -> tuple[list[Stream], dict,
                                                                                   dict]:
    if input is None:
        if name != "openbooks" or not OPENBOOKS_DEFAULT.is_dir():
            raise UserError(f"the {name} recipe needs --input DIR (a folder with train/ and other split "
                            "folders of documents)")
        input = OPENBOOKS_DEFAULT
    root = check_path(input, "--input", "give a folder with train/ and other split subfolders", "folder")
    lengths: dict = {}
    if file_lists is not None:
        by_split, lengths = languini_file_lists(Path(file_lists), root, splits)
    else:
        by_split = {sub_dir.name: list_documents(sub_dir) for sub_dir in sorted(root.iterdir())
                    if sub_dir.is_dir() and not sub_dir.name.startswith(".")
                    and (not splits or sub_dir.name in splits)}
        if "train" not in by_split:
            raise UserError(f"{root} has no train/ subfolder: a books-style folder needs train/ (plus "
                            "e.g. test/) with one file per document")
    digests = {s: files_digest(fs, root) for s, fs in by_split.items()}
    # The benchmark reads its documents in text mode: universal newlines.
    streams = [text_files_stream(s, fs, newlines=file_lists is not None) for s, fs in by_split.items()]
    source = {"kind": "file_lists" if file_lists else "dir", "path": str(root.resolve()),
              "splits": {s: {"documents": len(by_split[s]), "sha256": digests[s]} for s in by_split},
              "sha256": hashlib.sha256("".join(f"{s}:{digests[s]}\n"
                                               for s in sorted(digests)).encode()).hexdigest()}
    return streams, source, lengths


def _check_lengths(out: Path, lengths: dict) -> None:
    """Say how many documents' token counts (separator excluded) differ from a file list's."""
    meta = T.read_meta(out)
    for split, want in ((s, w) for s, w in lengths.items() if w is not None):
        starts = T.doc_offsets(out, split, meta).astype(np.int64)
        got = np.diff(np.append(starts, meta["splits"][split]["tokens"])) - (meta["eot_id"] is not None)
        bad = int(np.sum(got != want)) if len(got) == len(want) else len(want)
        print(f"{split}: {bad or 'all'} of {len(want):,} documents {'differ from' if bad else 'match'} "
              "the file list's token counts" + (" (another tokenizer, or other document files)" if bad
                                                else ""))


# --- Entry points ---
def _small_plan(name, input, tokenizer, seed, val_fraction, file_lists, splits, tok_opts) -> Plan:
    lengths = {}
    if name in ("shakespeare_char", "shakespeare"):
        text, source = get_tinyshakespeare(input)
        streams, kind = _one_text(text, val_fraction), tokenizer or ("char" if name == "shakespeare_char"
                                                                     else "gpt2")
    elif name == "zero_one":
        if tokenizer not in (None, "gpt2"):
            raise UserError("the zero_one recipe is defined with GPT-2 BPE: drop --tokenizer or use "
                            "`prepare text`")
        (streams, source), kind = _source_zero_one(seed, val_fraction), "gpt2"
    elif name == "text":
        (streams, source), kind = _source_text(input, val_fraction), tokenizer or "gpt2"
    else:
        streams, source, lengths = _source_books(name, input, file_lists, splits)
        kind = tokenizer or "sentencepiece"
    extra = {} if name in ("books", "openbooks") else {"val_fraction": val_fraction}
    config = {"recipe": name, "input": str(input), "tokenizer": kind, "seed": seed,
              "val_fraction": val_fraction, "file_lists": str(file_lists), "splits": splits,
              "source_sha256": source.get("sha256"), "tok_opts": {k: str(v) for k, v in tok_opts.items()
                                                                  if k != "num_threads"}}
    return Plan(name, streams, source, kind, config, {**tok_opts, "seed": seed}, extra, seed=seed,
                lengths=lengths)


def prepare(recipe: str, input=None, tokenizer: str | None = None, out=None, overwrite: bool = False,
            resume: bool = False, seed: int | None = None, val_fraction: float | None = None,
            vocab_size: int | None = None, num_threads: int | None = None, num_proc: int | None = None,
            input_sentence_size: int | None = None, tokenizer_model=None, file_lists=None,
            splits: list[str] | None = None, progress: bool | None = None, **hf) -> Path:
    """Run a recipe; returns the data dir (default data/NAME). hf recipes take prepare_hf's options in
    **hf."""
    if recipe not in RECIPES:
        hint = "".join(f"did you mean {c!r}? "
                       for c in difflib.get_close_matches(recipe, list(RECIPES), n=1))
        raise UserError(f"unknown prepare recipe {recipe!r}: {hint}choose one of {', '.join(RECIPES)}")
    check_options(tokenizer, val_fraction, vocab_size, num_proc, zero_val_fraction=recipe in HF_RECIPES)
    if tokenizer_model is not None and tokenizer not in (None, "sentencepiece"):
        raise UserError("--tokenizer_model is a SentencePiece model: drop --tokenizer or use "
                        "--tokenizer sentencepiece")
    if tokenizer_model is not None:  # before any folder is made
        check_path(tokenizer_model, "--tokenizer_model", "give a SentencePiece .model file", "file")
    tokenizer = "sentencepiece" if tokenizer_model is not None else tokenizer
    tok_opts = {"vocab_size": vocab_size, "num_threads": num_threads,
                "input_sentence_size": input_sentence_size, "tokenizer_model": tokenizer_model}
    if recipe in HF_RECIPES:
        return prepare_hf(recipe=recipe, tokenizer=tokenizer, out=out, overwrite=overwrite,
                          resume=resume, seed=seed, val_fraction=val_fraction, num_proc=num_proc,
                          progress=progress, tok_opts=tok_opts, **hf)
    if hf:
        raise UserError(f"unknown prepare option(s) {', '.join(sorted(hf))}: see `gptlab prepare "
                        "--help`")
    seed = 1337 if seed is None else seed
    val_fraction = 0.1 if val_fraction is None else val_fraction
    plan = _small_plan(recipe, input, tokenizer, seed, val_fraction, file_lists, splits, tok_opts)
    out = build(plan, Path(out) if out is not None else Path("data") / recipe, overwrite=overwrite,
                resume=resume, num_proc=num_proc or 1, threads=num_threads or os.cpu_count() or 1,
                progress=progress)
    _check_lengths(out, plan.lengths)
    return out


def build_parser() -> argparse.ArgumentParser:
    recipes = "\n".join(f"  {k:<17} {v}" for k, v in RECIPES.items())
    p = _Parser(prog="gptlab prepare", description="Turn text into token files ({split}.bin + "
                                                   "meta.json).",
                epilog="recipes:\n" + recipes, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, kw in {
        "recipe": dict(help="recipe name (see below)"),
        "--input": dict(help="input file or folder (small recipes)"),
        "--tokenizer": dict(choices=TOKENIZERS, help="tokenizer (default: the recipe's)"),
        "--out": dict(help="output data dir (default: data/NAME)"),
        "--overwrite": dict(action="store_true", help="replace a prepared dir (or restart an "
                                                      "interrupted prepare)"),
        "--resume": dict(action="store_true", help="continue an interrupted prepare into --out"),
        "--seed": dict(type=int, help="random seed (zero_one, val selection, SentencePiece sampling)"),
        "--val_fraction": dict(type=float, help="held-out fraction (default 0.1; hf recipes their own)"),
        "--vocab_size": dict(type=int, help="SentencePiece vocabulary size (default 16384)"),
        "--tokenizer_model": dict(help="books: an existing SentencePiece .model (e.g. Languini's "
                                       "books_16384.model)"),
        "--file_lists": dict(help="books: a folder of Languini file_list_SPLIT.npy (document order and "
                                  "lengths)"),
        "--splits": dict(type=lambda v: [s for s in v.split(",") if s] or None,
                         help="books: comma-separated splits to prepare (default: all)"),
        "--num_threads": dict(type=int, help="tokeniser threads inline (default: all cores)"),
        "--num_proc": dict(type=int, help="tokeniser processes (default 1; hf recipes: all cores)"),
        "--input_sentence_size": dict(type=int, help="lines sampled for SentencePiece training (default "
                                                     "2,000,000)"),
        "--dataset": dict(help="hf: hub name or local path (save_to_disk folder, parquet, jsonl, .txt)"),
        "--name": dict(help="hf: dataset configuration name"),
        "--split": dict(help="hf: only this split (default: all the source has)"),
        "--text_field": dict(default="text", help="hf: column holding the text"),
        "--batch_docs": dict(type=int, default=1024, help="documents per encode task"),
        "--no_progress": dict(action="store_false", dest="progress", default=None,
                              help="no progress bar or lines"),
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
