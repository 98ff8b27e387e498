"""Every configuration problem of a training run, found before anything starts (and before any
worker of a launch), reported together, each with a command that fixes it. The Languini presets
on other data are the worked case: a missing dataset, a missing split, too few documents to
stream, a vocabulary smaller than the data's, all in one report instead of one per launch."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from gptlab.config_check import check_device
from gptlab.data import tokens as tk
from gptlab.data.prepare import OPENBOOKS_DEFAULT, RECIPES
from gptlab.data.samplers import DocRows
from gptlab.errors import UserError
from gptlab.resolve import resolve_batch
from gptlab.runtime import resolve_data_dir

# Languini's books (a folder with train/ and test/ subfolders of documents).
BOOKS_INPUT = "BOOKS_FOLDER"


class ConfigProblems(UserError):
    """All problems, one line each. Every rank finds the same: under torchrun, rank 0 reports them."""

    rank_zero_only = True


def _target(dataset: str, data_root: str) -> Path:
    """Where training looks for `dataset`: a path as given, a bare name under data_root."""
    return Path(dataset) if Path(dataset).is_absolute() or "/" in dataset else Path(data_root) / dataset


def prepare_command(dataset: str, data_root: str) -> str:
    """A `gptlab prepare` command that writes `dataset` where training looks for it."""
    name, target = Path(dataset).name, _target(dataset, data_root)
    out = "" if target == Path("data") / name else f" --out {target}"
    if name in RECIPES:
        return f"gptlab prepare {name}{out}"
    if name.startswith(("books", "openbooks")):
        if OPENBOOKS_DEFAULT.is_dir():
            return f"gptlab prepare openbooks --out {target}"
        return (f"gptlab prepare books --input {BOOKS_INPUT} --out {target} ({BOOKS_INPUT}: Languini's "
                "books, with train/ and test/ subfolders)")
    return f"gptlab prepare text --input YOUR_TEXT_FILE --out {target}"


def _prepared(data_root: str) -> list[str]:
    root = Path(data_root)
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file()) if root.is_dir() else []


def dataset_problem(dataset: str, data_root: str) -> str:
    others = _prepared(data_root)
    use = f"; or train on a prepared one: --dataset {others[0]}" if others else ""
    return (f"dataset {dataset!r} not found (no {_target(dataset, data_root)}/meta.json): "
            f"run `{prepare_command(dataset, data_root)}`{use}")


def split_problems(cfg, data_dir: Path, meta: dict) -> list[str]:
    names = list(meta["splits"])
    problems = []
    for flag, name in (("train_split", cfg.data.train_split), ("val_split", cfg.data.val_split)):
        if name in names or (flag == "val_split" and name == "val"):
            continue  # the default "val" falls back to "test", or to no held-out split
        held_out = [n for n in names if n != cfg.data.train_split]
        pick = (held_out or names)[0] if flag == "val_split" else ("train" if "train" in names
                                                                   else names[0])
        problems.append(f"--{flag} {name!r}: dataset {data_dir} has no such split (has: "
                        f"{', '.join(names)}): pass --{flag} {pick}")
    return problems


def vocab_problem(cfg, meta: dict) -> str | None:
    model_vocab, data_vocab = cfg.model.vocab_size, int(meta["vocab_size"])
    if cfg.train.init_from != "scratch" or not model_vocab or model_vocab >= data_vocab:
        return None
    source = f"the {cfg.preset} preset's" if cfg.preset else "the"
    return (f"{source} vocab_size {model_vocab:,} is smaller than the dataset's {data_vocab:,}: pass "
            f"--vocab_size {data_vocab} (or --vocab_size 0: read it from meta.json)")


def stream_problem(cfg, data_dir: Path, meta: dict, world_size: int) -> str | None:
    """Languini's document streams: every one of train_batch_size rows needs 2+ tokens of documents."""
    if cfg.data.sampler != "stream" or cfg.data.train_split not in meta["splits"]:
        return None
    rows = resolve_batch(cfg, world_size)[2]
    split = cfg.data.train_split
    data = tk.load_split(data_dir, split, meta)
    doc_rows = DocRows(tk.doc_offsets(data_dir, split, meta), len(data), rows, data, meta.get("eot_id"))
    if int(doc_rows.lengths.min()) >= 2:
        return None
    return (f"split {split!r} of {data_dir} has {doc_rows.n_docs:,} document(s), too few for {rows} "
            f"document streams (one per sequence of the batch, --train_batch_size {rows}): pass "
            f"--sampler random (windows from anywhere in the text), or use data with at least {rows} "
            "documents")


def config_problems(cfg, world_size: int) -> list[str]:
    """Every problem found, in the order a run would meet them; data checks need the dataset."""
    problems: list[str] = []

    def attempt(check: Callable[[], object]):
        try:
            return check()
        except UserError as e:
            problems.append(str(e))
            return None

    attempt(lambda: check_device(cfg.system.device))
    batch_ok = attempt(lambda: resolve_batch(cfg, world_size)) is not None
    try:
        data_dir = resolve_data_dir(cfg.data.dataset, cfg.data.data_root)
    except UserError as e:
        close = "did you mean" in str(e)  # a typo of a prepared name: that hint is the right one
        return problems + [str(e) if close else dataset_problem(cfg.data.dataset, cfg.data.data_root)]
    meta = attempt(lambda: tk.read_meta(data_dir))
    if meta is None:
        return problems
    problems += split_problems(cfg, data_dir, meta)
    problems += [p for p in (vocab_problem(cfg, meta),) if p]
    if batch_ok:  # streams need a valid batch
        problems += [p for p in (attempt(lambda: stream_problem(cfg, data_dir, meta, world_size)),) if p]
    return problems


def check_run_config(cfg, world_size: int) -> None:
    """ConfigProblems listing every problem (one line each), or nothing. A resume reads its run's
    own config later: only the device and batch are checked here."""
    if cfg.train.resume or cfg.train.init_from == "resume":
        return
    problems = config_problems(cfg, world_size)
    if problems:
        raise ConfigProblems("\nerror: ".join(problems))
