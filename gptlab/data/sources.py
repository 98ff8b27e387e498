"""Inputs of `gptlab prepare`: text read and decoded, folders of documents, Languini's file lists, and
the `Stream` every source yields (the documents of one split, in batches, resumable by row)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from gptlab import files
from gptlab.errors import UserError

# --- What a path is: named before anything opens it (a FIFO or a device would block or never end) ---
_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_STAT_ERRORS = {errno.ELOOP: "is (or lies under) a symbolic link loop",
                errno.ENOTDIR: "lies under a file",
                errno.ENAMETOOLONG: "has a name too long for the file system",
                errno.EACCES: "cannot be reached (permission denied)"}


def path_problem(path, want: str = "file or folder") -> str | None:
    """Why `path` is not a readable regular file or folder ("does not exist", "is a FIFO (named pipe)",
    "is a symbolic link loop", ...), or None. want "file" or "folder" narrows it. Only stats the path."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ENOENT:
            return "is a symbolic link to nothing" if os.path.islink(path) else "does not exist"
        return _STAT_ERRORS.get(e.errno, f"cannot be read ({e.strerror})")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "is " + next((name for test, name in _SPECIAL if test(mode)), "a special file")
    if want == "file" and not stat.S_ISREG(mode):
        return "is a folder, not a file"
    return "is a file, not a folder" if want == "folder" and not stat.S_ISDIR(mode) else None


def check_path(path, flag: str, fix: str, want: str = "file or folder") -> Path:
    """Path(path), or UserError "FLAG PATH is a FIFO (named pipe): FIX" (see path_problem)."""
    if (problem := path_problem(path, want)) is not None:
        raise UserError(f"{flag} {path} {problem}: {fix}")
    return Path(path)


def safe_text(value):
    """Strings (in dicts and lists) with undecodable file-name bytes as backslash escapes: safe to print
    or write as UTF-8 JSON; other strings unchanged."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {key: safe_text(item) for key, item in value.items()}
    return [safe_text(item) for item in value] if isinstance(value, list) else value


# --- Reading text ---

# Byte-order marks and the codecs that read (and drop) them; UTF-32's first, as it starts like UTF-16's.
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


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
        raise UserError(f"{where} looks like UTF-16 or UTF-32 text without a byte-order mark (many NUL "
                        "bytes): convert it to UTF-8 first (e.g. `iconv -f UTF-16LE -t UTF-8 IN > OUT`)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where} is not UTF-8 text (bad byte at offset {e.start}): convert it to UTF-8 "
                        "first") from None


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
        h.update(os.fsencode(f"{f.relative_to(root).as_posix()}\0{files.sha256_file(f)}\n"))  # any name
    return h.hexdigest()


# --- Streams: the documents of one split, in batches, resumable by row ---
@dataclass
class Stream:
    """Rows going to `split` (a `carve` fraction to val). iter_batches(skip, max_docs, max_bytes) yields
    (kind, items): "texts" (str), "raw"/"raw_nl" ((name, bytes) of a file), "jsonl" (lines) or "ids"
    (tokens)."""

    split: str
    rows: int
    iter_batches: Callable[[int, int, int], Iterator[tuple[str, list]]]
    carve: float = 0.0
    eot: bool = True  # end-of-document id after each document


def capped_batches(docs, max_docs: int, max_bytes: int):
    """Lists of documents, each closed at max_docs documents or max_bytes bytes."""
    batch, nb = [], 0
    for doc in docs:
        batch.append(doc)
        nb += len(doc[1]) if isinstance(doc, tuple) else len(doc)
        if len(batch) >= max_docs or nb >= max_bytes:
            yield batch
            batch, nb = [], 0
    if batch:
        yield batch


def text_files_stream(split: str, paths: list[Path], opener=open, newlines: bool = False) -> Stream:
    """One document per file, read by the main process and decoded by the workers (newlines: universal
    newlines)."""
    def read(p):
        with opener(p, "rb") as fh:
            return str(p), fh.read()

    def it(skip, max_docs, max_bytes):
        for b in capped_batches(map(read, paths[skip:]), max_docs, max_bytes):
            yield "raw_nl" if newlines else "raw", b
    return Stream(split, len(paths), it)


def texts_of(kind: str, items: list, field_name: str = "text") -> list[str]:
    if kind == "texts":
        return [t if t is not None else "" for t in items]
    if kind in ("raw", "raw_nl"):  # raw_nl: universal newlines, as Python's text mode reads
        texts = [decode_text(data, name) for name, data in items]
        return [t.replace("\r\n", "\n").replace("\r", "\n")
                for t in texts] if kind == "raw_nl" else texts
    return jsonl_texts(items, field_name)


def jsonl_texts(lines: list, field_name: str) -> list[str]:
    """The text field of each raw jsonl line ("" for a blank line); UserError naming the problem."""
    return [_jsonl_text(line, field_name) if line.strip() else "" for line in lines]


def _jsonl_text(line, field_name: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"a jsonl line is not JSON ({e.msg}): fix the file or skip it") from None
    if not isinstance(row, dict):
        raise UserError(f"a jsonl line is not an object: give one JSON object with a {field_name!r} "
                        "field per line")
    if row.get(field_name) is None:
        raise UserError(f"a jsonl line has no field {field_name!r} (it has {', '.join(row)}): pass "
                        "--text_field NAME")
    return row[field_name]


def languini_file_lists(folder: Path, root: Path, splits: list[str] | None) -> tuple[dict, dict]:
    """{split: document paths in list order} and {split: listed token counts} from file_list_SPLIT.npy
    rows (name, length); a name matches a file under root by its stem. An object array (pickle) is
    refused."""
    fix = "give the folder with Languini's file_list_SPLIT.npy files"
    lists = sorted(check_path(folder, "--file_lists", fix, "folder").glob("file_list_*.npy"))
    if not lists:
        raise UserError(f"--file_lists {folder} holds no file_list_SPLIT.npy files: give the folder "
                        "with Languini's lists")
    # the first file of each stem, in sorted order
    by_stem = {os.path.splitext(f.name)[0]: f for f in sorted((p for p in root.rglob("*")
                                                               if p.is_file()), reverse=True)}
    paths, lengths = {}, {}
    for lst in lists:
        split = lst.name[len("file_list_"):-len(".npy")]
        if splits and split not in splits:
            continue
        check_path(lst, "--file_lists", "replace it with a plain .npy file", "file")
        try:
            rows = np.load(lst, allow_pickle=False)
        except ValueError:
            raise UserError(f"{lst} is not a plain numpy array (object arrays need pickle, which gptlab "
                            "never reads): re-save it as strings, e.g. np.save(F, np.load(F, "
                            "allow_pickle=True).astype(str))") from None
        rows = rows.reshape(len(rows), -1)  # (documents, name[, length])
        names = [os.path.splitext(os.path.basename(str(n)))[0] for n in rows[:, 0]]
        missing = [n for n in names if n not in by_stem]
        if missing:
            raise UserError(f"{len(missing)} documents of {lst.name} are not under {root} (first: "
                            f"{missing[0]!r}): point --input at the folder that holds them")
        paths[split] = [by_stem[n] for n in names]
        lengths[split] = rows[:, 1].astype(np.int64) if rows.shape[1] > 1 else None
    if splits and set(splits) - set(paths):
        raise UserError(f"--splits {', '.join(sorted(set(splits) - set(paths)))}: no such file list in "
                        f"{folder}")
    return paths, lengths
