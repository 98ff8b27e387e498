"""Token files: `{split}.bin` (raw little-endian uint16/uint32) + one meta.json.

meta.json is the single source of truth for reading a bin. Readers go through
`load_split`, which checks the bin against meta before anything trains on it.
Document boundaries (start offsets) live beside a bin in `{split}.docs.npy`.

Layout of meta.json ("gptlab-tokens-1"):
    {"format", "tokenizer": {...}, "vocab_size", "dtype", "eot_id",
     "splits": {name: {"tokens", "sha256", "documents"}}, "source": {...}}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from gptlab.errors import UserError

FORMAT = "gptlab-tokens-1"
META = "meta.json"
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
# Bounded working set when scanning or hashing large bins.
CHUNK_TOKENS = 1 << 24


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return _DTYPES["uint16"] if vocab_size <= 65536 else _DTYPES["uint32"]


def dtype_name(dtype) -> str:
    dt = np.dtype(dtype)
    for name, d in _DTYPES.items():
        if dt == d or dt == d.newbyteorder("="):
            return name
    raise ValueError(f"unsupported token dtype {dt}")


def bin_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.bin"


def docs_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.docs.npy"


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def write_split(
    out_dir: Path,
    split: str,
    tokens: np.ndarray | Iterable[np.ndarray | list[int]],
    dtype,
    doc_starts: np.ndarray | None = None,
    vocab_size: int | None = None,
) -> dict:
    """Write `{split}.bin` (and `{split}.docs.npy` if doc_starts is given).

    `tokens` is one array or an iterable of chunks, so a big corpus streams
    through. The bin is written under a temporary name and renamed at the
    end: a failed prepare never leaves a bin that looks complete. Returns the
    split's meta entry {"tokens", "sha256", "documents"}.
    """
    out_dir = Path(out_dir)
    dt = np.dtype(dtype).newbyteorder("<")
    dtype_name(dt)
    final = bin_path(out_dir, split)
    tmp = _tmp(final)
    h = hashlib.sha256()
    n = 0
    chunks = [tokens] if isinstance(tokens, np.ndarray) else tokens
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                a = np.asarray(chunk)
                if a.size == 0:
                    continue
                if vocab_size is not None:
                    check_token_range(a, vocab_size, what=f"{split} tokens")
                elif a.dtype.kind in "iu" and (a.min() < 0 or int(a.max()) > np.iinfo(dt).max):
                    raise ValueError(f"token ids out of range for {dt}")
                b = a.astype(dt, copy=False).tobytes()
                h.update(b)
                f.write(b)
                n += a.size
    except BaseException:
        tmp.unlink(missing_ok=True)  # a rejected split leaves nothing behind, not even a .tmp
        raise
    info = {"tokens": int(n), "sha256": h.hexdigest(), "documents": None}
    if doc_starts is not None:
        starts = np.asarray(doc_starts, dtype=np.uint64)
        if starts.ndim != 1 or (starts.size and (starts[0] != 0 or np.any(np.diff(starts.astype(np.int64)) < 0)
                                                   or int(starts[-1]) > n)):
            os.remove(tmp)
            raise ValueError("document starts must begin at 0, be non-decreasing and lie inside the split")
        dtmp = out_dir / f"{split}.docs.tmp.npy"
        np.save(dtmp, starts, allow_pickle=False)
        os.replace(dtmp, docs_path(out_dir, split))
        info["documents"] = int(starts.size)
    os.replace(tmp, final)
    return info


def write_meta(out_dir: Path, meta: dict) -> Path:
    """Write meta.json atomically. Written last by prepare: its presence marks a complete dir."""
    meta = dict(meta)
    meta.setdefault("format", FORMAT)
    path = Path(out_dir) / META
    tmp = _tmp(path)
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _bad(data_dir, msg: str) -> UserError:
    return UserError(f"{data_dir}: {msg}: re-run `gptlab prepare ...` for this data dir")


def read_meta(data_dir: Path) -> dict:
    """Read and validate meta.json; UserError naming the problem otherwise."""
    data_dir = Path(data_dir)
    path = data_dir / META
    if not path.is_file():
        raise UserError(f"{data_dir} has no meta.json (not a prepared data dir): run `gptlab prepare NAME --out {data_dir}` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(data_dir, f"meta.json is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(meta, dict):
        raise _bad(data_dir, "meta.json is not a JSON object")
    if meta.get("format") != FORMAT:
        raise _bad(data_dir, f"meta.json format is {meta.get('format')!r}, expected {FORMAT!r}")
    vs = meta.get("vocab_size")
    if not isinstance(vs, int) or isinstance(vs, bool) or vs <= 0:
        raise _bad(data_dir, f"meta.json vocab_size {vs!r} is not a positive integer")
    if meta.get("dtype") not in _DTYPES:
        raise _bad(data_dir, f"meta.json dtype {meta.get('dtype')!r} is not one of {sorted(_DTYPES)}")
    if np.iinfo(_DTYPES[meta["dtype"]]).max < vs - 1:
        raise _bad(data_dir, f"meta.json dtype {meta['dtype']} cannot hold vocab_size {vs}")
    eot = meta.get("eot_id")
    if eot is not None and (not isinstance(eot, int) or not 0 <= eot < vs):
        raise _bad(data_dir, f"meta.json eot_id {eot!r} is not an id below vocab_size {vs}")
    if not isinstance(meta.get("tokenizer"), dict):
        raise _bad(data_dir, "meta.json has no tokenizer description")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise _bad(data_dir, "meta.json lists no splits")
    for name, info in splits.items():
        if not isinstance(info, dict) or not isinstance(info.get("tokens"), int) or info["tokens"] < 0:
            raise _bad(data_dir, f"meta.json split {name!r} has no valid token count")
    return meta


def split_names(data_dir: Path) -> list[str]:
    return list(read_meta(data_dir)["splits"])


def load_split(data_dir: Path, split: str, meta: dict | None = None) -> np.memmap:
    """Open `{split}.bin` read-only, checked against meta.json (existence, size, dtype)."""
    data_dir = Path(data_dir)
    meta = meta or read_meta(data_dir)
    if split not in meta["splits"]:
        raise UserError(f"{data_dir} has no split {split!r} (it has {', '.join(meta['splits'])}): pick one of those")
    path = bin_path(data_dir, split)
    if not path.is_file():
        raise _bad(data_dir, f"{path.name} is missing")
    dt = _DTYPES[meta["dtype"]]
    n = meta["splits"][split]["tokens"]
    size = path.stat().st_size
    if size != n * dt.itemsize:
        raise _bad(data_dir, f"{path.name} has {size} bytes but meta.json says {n} {meta['dtype']} tokens ({n * dt.itemsize} bytes)")
    if n == 0:
        return np.zeros(0, dtype=dt)
    return np.memmap(path, dtype=dt, mode="r", shape=(n,))


def read_stream(data_dir: Path, split: str) -> np.ndarray:
    """A split as one stream of token ids (read-only memmap), validated. For eval routines."""
    return load_split(data_dir, split)


def check_token_range(arr: np.ndarray, vocab_size: int, what: str = "tokens") -> None:
    """UserError if any id >= vocab_size (or negative). Scans in chunks so a
    multi-GB memmap never gets pulled into memory at once."""
    arr = np.asarray(arr).reshape(-1)
    for start in range(0, arr.size, CHUNK_TOKENS):
        c = arr[start : start + CHUNK_TOKENS]
        hi = int(c.max())
        lo = int(c.min())
        if hi >= vocab_size or lo < 0:
            bad = hi if hi >= vocab_size else lo
            pos = start + int(np.argmax((c >= vocab_size) | (c < 0)))
            raise UserError(
                f"{what}: id {bad} at position {pos} is outside the vocabulary (size {vocab_size}): "
                "the bin does not match meta.json; re-run `gptlab prepare ...`"
            )


def verify_split(data_dir: Path, split: str, check_hash: bool = False, meta: dict | None = None) -> np.memmap:
    """load_split plus an id-range scan (and optionally the sha256 in meta)."""
    meta = meta or read_meta(data_dir)
    arr = load_split(data_dir, split, meta)
    check_token_range(arr, meta["vocab_size"], what=f"{Path(data_dir) / (split + '.bin')}")
    if check_hash and meta["splits"][split].get("sha256"):
        h = hashlib.sha256()
        for s in range(0, arr.size, CHUNK_TOKENS):
            h.update(np.ascontiguousarray(arr[s : s + CHUNK_TOKENS]).tobytes())
        if h.hexdigest() != meta["splits"][split]["sha256"]:
            raise _bad(data_dir, f"{split}.bin does not match the sha256 recorded in meta.json")
    return arr


def doc_offsets(data_dir: Path, split: str, meta: dict | None = None) -> np.ndarray | None:
    """Start offset of every document of a split (uint64, first 0), or None if not recorded.

    Document i spans [starts[i], starts[i+1]) (the last ends at the split's
    end) and includes its trailing end-of-document token when the recipe
    writes one.
    """
    data_dir = Path(data_dir)
    meta = meta or read_meta(data_dir)
    p = docs_path(data_dir, split)
    if not p.is_file():
        return None
    try:
        starts = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy fails on a damaged file with ValueError, EOFError, SyntaxError, ...
        raise _bad(data_dir, f"{p.name} is not a plain .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    n = meta["splits"].get(split, {}).get("tokens")
    if starts.ndim != 1 or starts.dtype.kind not in "iu" or (starts.size and (starts[0] != 0 or (n is not None and int(starts[-1]) > n))):
        raise _bad(data_dir, f"{p.name} does not hold valid document starts")
    return starts.astype(np.uint64, copy=False)


def doc_spans(starts: np.ndarray, n_tokens: int) -> np.ndarray:
    """(D, 2) int64 array of [start, end) per document."""
    s = np.asarray(starts, dtype=np.int64)
    e = np.append(s[1:], n_tokens)
    return np.stack([s, e], axis=1)


def is_prepared(out_dir: Path) -> bool:
    out_dir = Path(out_dir)
    return (out_dir / META).exists() or any(out_dir.glob("*.bin"))


def prepare_out_dir(out_dir: Path, overwrite: bool = False) -> Path:
    """Make out_dir ready for a fresh prepare.

    Refuses a dir that already holds prepared data unless overwrite=True; then
    meta.json goes first, so that a prepare that dies half-way leaves a dir
    that no reader accepts, never a mix of old meta and new bins.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder: choose another --out")
    if out_dir.is_dir() and is_prepared(out_dir):
        if not overwrite:
            raise UserError(f"{out_dir} already holds prepared data: pass --overwrite to replace it, or choose another --out")
        (out_dir / META).unlink(missing_ok=True)
        for pattern in ("*.bin", "*.docs.npy", "*.tmp", "tokenizer.model", "tokenizer.vocab"):
            for p in out_dir.glob(pattern):
                p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir
