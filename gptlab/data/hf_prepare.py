"""Hugging Face sources for `gptlab prepare`: `prepare hf|openwebtext|tinystories --dataset X` (a
save_to_disk folder, local parquet, jsonl or .txt files, else a hub name; val carved out of train if
there is none)."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

from gptlab.data.pipeline import PROGRESS, Plan, build, check_options, row_uniform, work_dir  # noqa: F401
from gptlab.data.sources import Stream, capped_batches, check_path, list_documents, text_files_stream
from gptlab.errors import UserError

SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}
# A split named by a path part: `train-00000-of-00002.parquet`, `data/test.jsonl`,
# `validation/part-0.parquet`.
_SPLIT_PART = re.compile(r"(train|validation|valid|val|dev|test)(?:$|[-_])")
FILE_KINDS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
              ".jsonl.gz": "jsonl", ".json.gz": "jsonl", ".txt": "text", ".text": "text",
              ".txt.gz": "text"}

# Both GPT-2 BPE, seed 2357 (prepare_hf's defaults). OpenWebText: GPT-2's
# train_test_split(test_size=0.0005, seed=2357, shuffle=True), test renamed val; TinyStories ships its
# own validation split.
RECIPES = {"openwebtext": dict(dataset="Skylion007/openwebtext", split="train", val_fraction=0.0005),
           "tinystories": dict(dataset="roneneldan/TinyStories", split=None, val_fraction=0.0)}


def _need_datasets(why: str):
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise UserError(f"{why} needs the Hugging Face datasets library: pip install 'gptlab[datasets]' "
                        "(or pip install datasets)") from None
    return datasets


def _out_split(name: str) -> str:
    return SPLIT_ALIASES.get(name, name)


def _split_of_file(path: Path, root: Path) -> str | None:
    parts = [p.lower() for p in path.relative_to(root).parts] if path != root else [path.name.lower()]
    for part in reversed(parts):
        if m := _SPLIT_PART.match(part.split(".")[0]):
            return m.group(1)
    return None


def _kind_of(path: Path) -> str | None:
    return next((k for suffix, k in FILE_KINDS.items() if path.name.lower().endswith(suffix)), None)


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _file_stream(split: str, files: list[Path], kind: str, text_field: str) -> Stream:
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("reading parquet needs pyarrow: pip install 'gptlab[datasets]' (or pip "
                            "install pyarrow)") from None
        rows = 0
        for f in files:
            pf = pq.ParquetFile(f)
            if text_field not in pf.schema_arrow.names:
                raise UserError(f"{f} has no column {text_field!r} (it has "
                                f"{', '.join(pf.schema_arrow.names)}): pass --text_field NAME")
            rows += pf.metadata.num_rows

        def it(skip, max_docs, max_bytes):
            for f in files:
                for rb in pq.ParquetFile(f).iter_batches(batch_size=max_docs, columns=[text_field]):
                    if skip < rb.num_rows:  # rows an interrupted run wrote are skipped without decoding
                        yield "texts", rb.column(0).slice(skip).to_pylist()
                    skip = max(0, skip - rb.num_rows)
        return Stream(split, rows, it)

    if kind == "jsonl":
        rows = 0
        for f in files:
            with _open_maybe_gz(f) as fh:
                rows += sum(1 for _ in fh)  # lines, as the stream reads them

        def it(skip, max_docs, max_bytes):
            # Raw lines go to the workers, which parse JSON in parallel.
            for f in files:
                with _open_maybe_gz(f) as fh:
                    lines = iter(fh)
                    for _ in zip(range(skip), lines):  # rows done before an interruption
                        skip -= 1
                    for batch in capped_batches(lines, max_docs, max_bytes):
                        yield "jsonl", batch
        return Stream(split, rows, it)

    # text: one document per file, as the `text` recipe does.
    return text_files_stream(split, files, opener=lambda f, mode: _open_maybe_gz(f))


def _dataset_stream(split: str, ds, text_field: str) -> Stream:
    if text_field not in ds.column_names:
        raise UserError(f"the dataset has no column {text_field!r} (it has "
                        f"{', '.join(ds.column_names)}): pass --text_field NAME")
    ds = ds.select_columns([text_field])

    def it(skip, max_docs, max_bytes):
        for s in range(skip, len(ds), max_docs):
            yield "texts", ds[s : s + max_docs][text_field]
    return Stream(split, len(ds), it)


def _local_files(p: Path) -> dict[str, list[Path]]:
    """Local parquet, jsonl or txt files (one kind) by split, named as the hub lays them out."""
    files = [p] if p.is_file() else [f for f in list_documents(p) if _kind_of(f)]
    if not files:
        raise UserError(f"{p} holds no parquet, jsonl or .txt files and is not a save_to_disk folder: "
                        "give one of those")
    kinds = {_kind_of(f) for f in files}
    if len(kinds) > 1:
        raise UserError(f"{p} mixes file formats ({', '.join(sorted(kinds))}): point --dataset at one "
                        "kind of file")
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(_split_of_file(f, p) or "train", []).append(f)
    return groups


def open_source(dataset: str, name: str | None, split: str | None, text_field: str, val_fraction: float,
                seed: int) -> tuple[list[Stream], dict]:
    """Streams to prepare, in order, and the `source` entry for meta.json."""
    p = Path(dataset).expanduser()
    source: dict = {"dataset": dataset, "config": name, "split": split, "text_field": text_field}
    by_split: dict[str, object] = {}
    if os.path.lexists(p):  # a local path, even one that cannot be read: never sent to the hub
        check_path(p, "--dataset", "give a save_to_disk folder, or parquet, jsonl or .txt files")
        source["path"] = str(p.resolve())
        if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
            datasets = _need_datasets(f"{p} (a save_to_disk folder)")
            loaded = datasets.load_from_disk(str(p))
            by_split = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            source["kind"] = "save_to_disk"
        else:
            by_split = _local_files(p)
            files = [f for fs in by_split.values() for f in fs]
            source.update(kind=_kind_of(files[0]), files=len(files))
    else:
        datasets = _need_datasets(f"--dataset {dataset} (not a local path, so a hub dataset)")
        try:
            loaded = datasets.load_dataset(dataset, name, split=split)
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean "could not load"
            off = "1" in (os.environ.get("HF_DATASETS_OFFLINE"), os.environ.get("HF_HUB_OFFLINE"))
            raise UserError("could not load dataset "
                            f"{dataset!r}{' (offline, and no cached copy)' if off else ''}: "
                            f"{(str(e).splitlines() or [type(e).__name__])[0][:200]}; give a local path "
                            "(save_to_disk folder, parquet, jsonl, txt) instead") from None
        by_split = (dict(loaded) if isinstance(loaded, datasets.DatasetDict)
                    else {split or "train": loaded})
        source["kind"] = "hub"
    if split is not None:
        if split not in by_split:
            alt = [k for k in by_split if _out_split(k) == _out_split(split)]
            if not alt:
                raise UserError(f"{dataset} has no split {split!r} (it has {', '.join(by_split)}): pass "
                                "--split with one of those")
            split = alt[0]
        by_split = {split: by_split[split]}
    out_names = [_out_split(s) for s in by_split]
    if len(set(out_names)) != len(out_names):
        raise UserError(f"{dataset} has splits that map to the same name ({', '.join(by_split)}): pick "
                        "one with --split")
    carve = val_fraction > 0 and "val" not in out_names and "train" in by_split
    # a real validation split exists (or no train): carve nothing
    val_fraction = val_fraction if carve else 0.0
    streams = []
    # train first, then the held-out splits, whatever order the source lists them in
    for s in sorted(by_split, key=lambda s: (s != "train", _out_split(s))):
        v = by_split[s]
        if isinstance(v, list):  # streamed files: a seeded hash of the row index picks train's val rows
            streams.append(_file_stream(_out_split(s), v, _kind_of(v[0]), text_field))
            streams[-1].carve = val_fraction if s == "train" else 0.0
        elif carve and s == "train":
            # The recipe's exact split: same documents in val, train in the same shuffled order.
            tt = v.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)
            streams += [_dataset_stream("train", tt["train"], text_field),
                        _dataset_stream("val", tt["test"], text_field)]
        else:
            streams.append(_dataset_stream(_out_split(s), v, text_field))
    method = "row_hash" if isinstance(by_split.get("train"), list) else "train_test_split"
    source.update(val_fraction=val_fraction, val_method=method if carve else None, seed=seed)
    return streams, source


def prepare_hf(dataset: str | None = None, name: str | None = None, split: str | None = None,
               text_field: str = "text", val_fraction: float | None = None, num_proc: int | None = None,
               tokenizer: str | None = None, out=None, overwrite: bool = False, resume: bool = False,
               seed: int | None = None, vocab_size: int | None = None, recipe: str = "hf",
               sp_docs: int = 100_000, tok_opts: dict | None = None, **build_kw) -> Path:
    """Prepare a hub or local dataset into `out` through prepare.build (build_kw: batch_docs, progress,
    ...)."""
    r = RECIPES.get(recipe, {})
    dataset = dataset or r.get("dataset")
    if dataset is None:
        raise UserError(f"prepare {recipe} needs --dataset (a hub name or a local path)")
    split = split if split is not None else r.get("split")
    val_fraction = r.get("val_fraction", 0.0005) if val_fraction is None else val_fraction
    seed, tokenizer = 2357 if seed is None else seed, tokenizer or "gpt2"
    check_options(tokenizer, val_fraction, vocab_size, num_proc, zero_val_fraction=True)
    tok_opts = {**(tok_opts or {}), "seed": seed, "sp_docs": sp_docs}
    tok_opts["vocab_size"] = tok_opts.get("vocab_size") or vocab_size
    config = {"dataset": dataset, "name": name, "split": split, "text_field": text_field,
              "val_fraction": val_fraction, "seed": seed, "tokenizer": tokenizer,
              "vocab_size": tok_opts["vocab_size"], "recipe": recipe}
    out = Path(out) if out is not None else Path("data") / (recipe if recipe != "hf"
                                                            else Path(dataset.rstrip("/")).name or "hf")
    streams, source = open_source(dataset, name, split, text_field, val_fraction, seed)
    plan = Plan(recipe, streams, source, tokenizer, config, tok_opts,
                {"val_fraction": source["val_fraction"]}, text_field, seed)
    return build(plan, out, overwrite=overwrite, resume=resume, num_proc=num_proc or os.cpu_count() or 1,
                 **build_kw)
