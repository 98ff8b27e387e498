"""Token files: `{split}.bin` (raw little-endian uint16/uint32), `{split}.docs.npy` (document starts) and
meta.json ("gptlab-tokens-1": tokenizer, vocab_size, dtype, eot_id, splits {name: tokens, sha256,
documents}, source), the truth for reading a bin: `load_split` checks sizes, `verify_bins` the sha256;
`SplitWriter` writes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
from pathlib import Path

import numpy as np

from gptlab import files
from gptlab.data.tokenizers import cache_dir, check_tokenizer_meta
from gptlab.errors import UserError

FORMAT = "gptlab-tokens-1"
META = "meta.json"
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
# Bounded working set when scanning or hashing large bins.
CHUNK_TOKENS = 1 << 24
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return _DTYPES["uint16"] if vocab_size <= 65536 else _DTYPES["uint32"]


def dtype_name(dtype) -> str:
    if np.dtype(dtype) not in _DTYPES.values():
        raise ValueError(f"unsupported token dtype {np.dtype(dtype)}")
    return np.dtype(dtype).name


def bin_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.bin"


def docs_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.docs.npy"


class SplitWriter:
    """Appends tokens to `{split}.bin.partial` and uint64 document starts to `{split}.docs.partial`.
    Reopened at recorded counts (a resumed prepare), it cuts off what came after them and re-hashes
    the rest. `finish` checks sizes, then renames the bin and writes `{split}.docs.npy`."""

    def __init__(self, out: Path, split: str, dtype, tokens: int = 0, documents: int = 0,
                 vocab_size: int | None = None):
        self.dt = _DTYPES[dtype_name(dtype)]
        self.out, self.split = Path(out), split
        self.vocab_size = vocab_size or int(np.iinfo(self.dt).max) + 1
        self.bin_p, self.docs_p = self.out / f"{split}.bin.partial", self.out / f"{split}.docs.partial"
        self.tokens, self.documents = tokens, documents
        for p, size in self._sizes():
            with open(p, "ab") as f:
                if f.tell() < size:
                    raise UserError(f"{p} is shorter than progress.json records: the partial output is "
                                    "damaged; use --overwrite")
                f.truncate(size)  # drop whatever was written after the last recorded checkpoint
        with open(self.bin_p, "rb") as f:  # hashlib state cannot be saved, so re-hash what is kept
            self.h = hashlib.file_digest(f, "sha256")
        self.fb, self.fd = open(self.bin_p, "ab"), open(self.docs_p, "ab")

    def _sizes(self):
        return (self.bin_p, self.tokens * self.dt.itemsize), (self.docs_p, self.documents * 8)

    def append(self, ids: np.ndarray, lens: np.ndarray | None = None) -> None:
        """ids: token ids; lens: the length of each document they hold (None: no new documents)."""
        ids = np.asarray(ids)
        if ids.size:
            check_token_range(ids, self.vocab_size, what=f"{self.split} tokens")
        data = ids.astype(self.dt, copy=False).tobytes()
        if lens is not None and len(lens):
            starts = self.tokens + np.concatenate([[0], np.cumsum(lens[:-1],
                                                                  dtype=np.int64)]).astype(np.uint64)
            self.fd.write(starts.astype("<u8").tobytes())
            self.documents += len(lens)
        self.fb.write(data)
        self.h.update(data)
        self.tokens += ids.size

    def sync(self) -> None:
        for f in (self.fb, self.fd):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.fb.close()
        self.fd.close()

    def finish(self) -> dict:
        """Verify sizes against the counts, write `{split}.docs.npy` and `{split}.bin`; the meta
        entry."""
        self.sync()
        self.close()
        for p, size in self._sizes():
            if p.stat().st_size != size:
                raise RuntimeError(f"{p}: {p.stat().st_size} bytes, but {self.tokens} tokens / "
                                   f"{self.documents} documents were written")
        # chunked copy behind a .npy header: never loads all starts
        with open(self.docs_p, "rb") as src:
            def write(f):
                np.lib.format.write_array_header_1_0(f, {"descr": "<u8", "fortran_order": False,
                                                         "shape": (self.documents,)})
                while block := src.read(1 << 24):
                    f.write(block)
            files.atomic_write_stream(docs_path(self.out, self.split), write)
        os.replace(self.bin_p, bin_path(self.out, self.split))
        self.docs_p.unlink()
        return {"tokens": int(self.tokens), "sha256": self.h.hexdigest(),
                "documents": int(self.documents)}


def write_meta(out_dir: Path, meta: dict) -> Path:
    """Write meta.json atomically. Written last by prepare: its presence marks a complete dir."""
    files.atomic_write_json(Path(out_dir) / META, {"format": FORMAT, **meta})
    return Path(out_dir) / META


def _bad(data_dir, msg: str) -> UserError:
    return UserError(f"{data_dir}: {msg}: re-run `gptlab prepare ...` for this data dir")


def read_meta(data_dir: Path) -> dict:
    """Read and validate meta.json; UserError naming the problem otherwise."""
    data_dir = Path(data_dir)
    path = data_dir / META
    if not path.is_file():
        raise UserError(f"{data_dir} has no meta.json (not a prepared data dir): run `gptlab prepare "
                        f"NAME --out {data_dir}` first")
    meta = files.read_json(path, "dataset description")
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
    check_tokenizer_meta(meta["tokenizer"], vs, path)
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise _bad(data_dir, "meta.json lists no splits")
    for name, info in splits.items():
        if not SPLIT_NAME.fullmatch(name):
            raise _bad(data_dir, f"meta.json split name {name[:40]!r} is not a plain name (letters, "
                                 "digits, _ and -)")
        if not isinstance(info, dict) or not isinstance(info.get("tokens"), int) or info["tokens"] < 0:
            raise _bad(data_dir, f"meta.json split {name!r} has no valid token count")
    return meta


def load_split(data_dir: Path, split: str, meta: dict | None = None) -> np.memmap:
    """Open `{split}.bin` read-only, checked against meta.json (existence, size, dtype)."""
    data_dir = Path(data_dir)
    meta = meta or read_meta(data_dir)
    if split not in meta["splits"]:
        raise UserError(f"{data_dir} has no split {split!r} (it has {', '.join(meta['splits'])}): pick "
                        "one of those")
    path = bin_path(data_dir, split)
    if not path.is_file():
        raise _bad(data_dir, f"{path.name} is missing")
    dt = _DTYPES[meta["dtype"]]
    n = meta["splits"][split]["tokens"]
    size = path.stat().st_size
    if size != n * dt.itemsize:
        raise _bad(data_dir, f"{path.name} has {size} bytes but meta.json says {n} {meta['dtype']} "
                             f"tokens ({n * dt.itemsize} bytes)")
    if n == 0:
        return np.zeros(0, dtype=dt)
    return np.memmap(path, dtype=dt, mode="r", shape=(n,))


def check_token_range(arr: np.ndarray, vocab_size: int, what: str = "tokens") -> None:
    """UserError if any id is negative or >= vocab_size; scans in chunks (a memmap never loads at
    once)."""
    arr = np.asarray(arr).reshape(-1)
    for start in range(0, arr.size, CHUNK_TOKENS):
        c = arr[start : start + CHUNK_TOKENS]
        if int(c.max()) >= vocab_size or int(c.min()) < 0:
            pos = int(np.argmax((c >= vocab_size) | (c < 0)))
            raise UserError(f"{what}: id {c[pos]} at position {start + pos} is outside the vocabulary "
                            f"(size {vocab_size}): the bin does not match meta.json; re-run `gptlab "
                            "prepare ...`")


def verify_bins(data_dir: Path, meta: dict, splits: list[str] | None = None) -> None:
    """Check every bin (or those of `splits`) against the sha256 in meta.json before anything trains on
    it. A bin whose file_key and hash match its entry in verified_cache(data_dir), in gptlab's
    cache folder (never the dataset's), is not hashed again."""
    data_dir, cache_p, cache = Path(data_dir), verified_cache(data_dir), {}
    with contextlib.suppress(UserError):
        cache = files.read_json(cache_p, "verification cache")
    cache = cache if isinstance(cache, dict) else {}
    changed = False
    for split in splits or list(meta["splits"]):
        load_split(data_dir, split, meta)  # exists, right size
        want, path = meta["splits"][split].get("sha256"), bin_path(data_dir, split)
        if not want:
            continue
        key = list(file_key(path))
        if cache.get(split) == {"key": key, "sha256": want}:
            continue
        if files.sha256_file(path) != want:
            raise UserError(f"{path} does not match the sha256 recorded in {data_dir / META} (changed "
                            "or damaged since it was prepared): re-create it with `gptlab prepare ... "
                            f"--out {data_dir} --overwrite`")
        cache[split], changed = {"key": key, "sha256": want}, True
    if changed:
        with contextlib.suppress(OSError, UserError):  # no writable cache: verify again next time
            cache_p.parent.mkdir(parents=True, exist_ok=True)
            files.atomic_write_json(cache_p, cache)


def verified_cache(data_dir: Path) -> Path:
    """verify_bins' record of a dataset's bins already hashed: one small file per dataset folder."""
    key = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:24]
    return cache_dir() / "verified" / f"{key}.json"


def doc_offsets(data_dir: Path, split: str, meta: dict | None = None) -> np.ndarray | None:
    """Start offset of every document of a split (uint64, first 0), or None if not recorded. Document i
    spans [starts[i], starts[i+1]) (the last ends at the split's end), its end-of-document token
    included."""
    data_dir = Path(data_dir)
    meta = meta or read_meta(data_dir)
    p = docs_path(data_dir, split)
    if not p.is_file():
        return None
    try:
        starts = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy fails on a damaged file with ValueError, EOFError, SyntaxError, ...
        raise _bad(data_dir, f"{p.name} is not a plain .npy array "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    n = meta["splits"].get(split, {}).get("tokens")
    if starts.ndim != 1 or starts.dtype.kind not in "iu" or (starts.size
                                                             and (starts[0] != 0
                                                                  or (n is not None
                                                                      and int(starts[-1]) > n))):
        raise _bad(data_dir, f"{p.name} does not hold valid document starts")
    return starts.astype(np.uint64, copy=False)


# What a prepared dataset folder may hold: its splits' files, meta, lock, tokenizer.
_DATASET_FILE = re.compile(r"meta\.json|\.gptlab\.lock|tokenizer\.(model|vocab)"
                           r"|[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.(bin|docs\.npy)")


def is_dataset_file(name: str) -> bool:
    return bool(_DATASET_FILE.fullmatch(name))


def dataset_state(folder: Path) -> str:
    """'absent', 'empty', 'dataset' (meta.json of this format and only gptlab's files), or 'other'."""
    folder = Path(folder)
    if not folder.exists():
        return "absent"
    if not folder.is_dir():
        return "other"
    names = [p.name for p in folder.iterdir()]
    if not names:
        return "empty"
    try:
        meta = read_meta(folder)
    except UserError:
        return "other"
    model = meta["tokenizer"].get("model_file")
    return "dataset" if all(is_dataset_file(n) or n == model for n in names) else "other"


# --- Readers: a running trainer or eval holds its dataset; prepare never replaces it underneath ---
CHANGED = ("{path} was replaced or rewritten while this run read it (size, inode or time changed): "
           "restore the data it started with and resume, or start afresh on the new data")


def file_key(path: Path) -> tuple[int, int, int, int]:
    """(size, inode, mtime, ctime) in ns: any rewrite changes one (ctime even after `touch -d`)."""
    info = os.stat(path)
    return info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns


def check_unchanged(path, key) -> None:
    """UserError if `path` no longer has the file_key it had when it was opened."""
    try:
        now = file_key(path)
    except OSError:
        now = None
    if now != tuple(key):
        raise UserError(CHANGED.format(path=path))


def lock_folder(folder: Path, exclusive: bool) -> int | None:
    """An fd holding flock(2) on the folder itself: shared for readers, exclusive for a prepare about to
    replace it (BlockingIOError naming the readers while one holds it). Nothing is written, so read-only
    datasets work, and the kernel drops the lock when the process ends: never stale. None where the
    folder is missing or cannot be locked."""
    for _ in range(10):  # the folder may be swapped between open and lock: lock the one the path names
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
            if os.path.samestat(os.fstat(fd), os.stat(folder)):
                return fd
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BlockingIOError(e.errno, f"{folder} is being read by a running gptlab process "
                                               "(pid "
                                      f"{', '.join(map(str, lock_holders(folder))) or '?'})") from None
            if e.errno != errno.ENOENT:
                return None  # a file system without flock: no protection, as before
            continue
        os.close(fd)
    return None


def lock_holders(folder: Path) -> list[int]:
    """Pids that hold a flock on the folder, from /proc/locks (empty where it cannot be read)."""
    with contextlib.suppress(OSError):
        inode = f":{os.stat(folder).st_ino} "
        lines = Path("/proc/locks").read_text().splitlines()
        held = (line.split() for line in lines if inode in line and "->" not in line)  # "->": waiting
        return sorted({int(words[4]) for words in held if words[1] == "FLOCK" and words[4].isdigit()})
    return []


class DatasetReader:
    """A running reader's hold on a dataset folder (`with open_for_reading(dir) as reader:`): a shared
    lock that makes `gptlab prepare --out DIR` refuse to replace the folder, and each bin's file_key at
    open, which check() compares (the samplers compare theirs before every batch)."""

    def __init__(self, data_dir):
        self.data_dir = Path(data_dir)
        self.fd = lock_folder(self.data_dir, exclusive=False)
        self.keys = {path: file_key(path) for path in sorted(self.data_dir.glob("*.bin"))}

    def check(self) -> None:
        for path, key in self.keys.items():
            check_unchanged(path, key)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DatasetReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_for_reading(data_dir, meta: dict | None = None,
                     splits: list[str] | None = None) -> DatasetReader:
    """Hold data_dir for reading until close() (or the end of the `with` block, or of the process); with
    meta, the bins of `splits` (default all) are then checked against its sha256 (verify_bins)."""
    reader = DatasetReader(data_dir)
    if meta is not None:
        verify_bins(data_dir, meta, splits)
    return reader
