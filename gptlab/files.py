"""Files gptlab writes and reads: atomic writes (a full or read-only disk is a one-line UserError),
JSON/TOML with one-line errors, hashes, and folder locks (`.gptlab.lock` with pid, host and time; taken
over only when its pid is dead on this host)."""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import os
import secrets
import socket
import stat
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator

from gptlab.errors import UserError
from gptlab.layout import CHECKPOINT_DIR, CONFIG_FILE, DATA_META_FILE, METRICS_FILE

LOCK_FILE = ".gptlab.lock"


def _open_for_write(path: Path):  # an indirection so tests can inject a failing writer (full disk)
    """A new file (never through a symbolic link planted at the temporary name; a stale one of ours
    goes)."""
    path.unlink(missing_ok=True)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666), "wb")


def write_error(path: Path, e: BaseException | None) -> UserError | None:
    """The one-line UserError for a full / read-only disk behind e (or what it wraps), else None."""
    for _ in range(8):  # e, then what it wraps
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return UserError(f"disk full while writing {path} (nothing was replaced): free space and "
                             "run the command again")
        if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return UserError(f"cannot write {path}: {e.strerror or 'read-only'}: choose a writable "
                             "folder or fix its permissions")
        e = e and (e.__cause__ or e.__context__)


def fsync_dir(d: Path) -> None:
    """Make a rename in d durable (best effort: some filesystems refuse fsync on a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_stream(path: Path, write: Callable[[Any], Any]) -> Any:
    """write(binary file object) into path atomically (temporary file, fsync, rename); returns what write
    returned."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with _open_for_write(tmp) as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if (err := write_error(path, e)) is not None:
            raise err from None
        raise
    fsync_dir(path.parent)
    return result


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_stream(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# bytes of a JSON/TOML file gptlab reads (a run's config, a meta.json, an HF config)
MAX_TEXT_FILE = 64 << 20


def _read(path: Path, what: str, parse: Callable[[str], Any], bad: type,
          fix: Callable[[Any], str]) -> Any:
    """parse(text of path); UserError one-liner if it is missing, unreadable, too large, nested beyond
    what the parser can follow, or damaged (bad, described by fix)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} is missing: check the path")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_FILE + 1)
        if len(data) > MAX_TEXT_FILE:
            raise UserError(f"{what} {path} is larger than {MAX_TEXT_FILE >> 20} MiB, more than such a "
                            "file holds: check the path, or restore the file")
        return parse(data.decode("utf-8"))
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to read: restore or rewrite it") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text: restore or rewrite it") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}: fix its permissions") from None
    except bad as e:
        raise UserError(f"{what} {path} is not valid {fix(e)}") from None


def read_json(path: Path, what: str) -> Any:
    return _read(path, what, json.loads, json.JSONDecodeError,
                 lambda e: f"JSON (line {e.lineno}, column {e.colno}: {e.msg}): restore or rewrite it")


def read_toml(path: Path, what: str) -> dict:
    return _read(path, what, tomllib.loads, tomllib.TOMLDecodeError,
                 lambda e: f"TOML ({str(e).splitlines()[0]}): fix it")


def closest_path(path: str | Path, suffixes: tuple[str, ...]) -> Path | None:
    """The existing file most like a mistyped `path` (a file ending in one of `suffixes`), found
    part by part: each missing folder or file name replaced by the closest one that exists."""
    path = Path(path)
    base = Path(path.anchor) if path.is_absolute() else Path(".")
    parts = path.parts[1:] if path.is_absolute() else path.parts
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if (base / part).is_dir() if not last else (base / part).is_file():
            base = base / part
            continue
        try:
            names = [e.name for e in base.iterdir() if (e.is_file() and e.suffix in suffixes if last
                                                        else e.is_dir())]
        except OSError:
            return None
        close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
        if not close:
            return None
        base = base / close[0]
    return base if base.is_file() and base != path else None


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- folder locks -------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    """Is pid a running (non-zombie) process on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):  # a zombie still answers kill(0) but holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _read_holder(lock: Path) -> dict | None:
    """The lock's content, {} if unreadable/garbled, None if the lock is gone."""
    try:
        h = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        h = {}
    return h if isinstance(h, dict) else {}


def _is_stale(holder: dict, lock: Path) -> bool:
    """Dead pid on this host; a garbled lock counts as stale once it is a minute old."""
    pid = holder.get("pid")
    if type(pid) is not int:
        with contextlib.suppress(OSError):
            return time.time() - lock.stat().st_mtime > 60
        return True
    return holder.get("host") == socket.gethostname() and not _pid_alive(pid)


def _held_error(lock: Path, what: str, h: dict) -> UserError:
    return UserError(f"{what} {lock.parent} is in use by pid {h.get('pid', '?')} on "
                     f"{h.get('host', '?')} since {h.get('time', '?')}: wait for it to finish, or if "
                     f"that process is gone delete {lock}")


def _try_create(lock: Path, content: str) -> bool:
    """Create lock with its full content at once (link of a written temp file); False if it exists."""
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        tmp.write_text(content, encoding="utf-8")
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        raise write_error(lock, e) or UserError(f"cannot create {lock}: {e.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _take_over(lock: Path, holder: dict, what: str) -> None:
    """Move a stale lock aside; if another process replaced it meanwhile, put theirs back and refuse."""
    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    moved = _read_holder(aside) or {}
    if moved != holder:
        with contextlib.suppress(OSError):
            os.link(aside, lock)
    aside.unlink(missing_ok=True)
    if moved != holder:
        raise _held_error(lock, what, moved)
    print(f"taking over the stale lock {lock} (pid {holder.get('pid', '?')} is gone)")


@contextlib.contextmanager
def folder_lock(path: Path, what: str = "folder") -> Iterator[Path]:
    """Hold path/.gptlab.lock for the block. A folder the lock had to create is removed again if left
    empty."""
    folder = Path(path)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (write_error(folder, e)
               or UserError(f"cannot create {what} {folder}: {e.strerror}")) from None
    lock = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": secrets.token_hex(8)}
    for _ in range(10):
        if _try_create(lock, json.dumps(me) + "\n"):
            break
        holder = _read_holder(lock)
        if holder is None:
            continue
        if not _is_stale(holder, lock):
            raise _held_error(lock, what, holder)
        _take_over(lock, holder, what)
    else:
        raise UserError(f"could not take the lock {lock} (it keeps changing): retry when other gptlab "
                        "commands finish")
    try:
        yield folder
    finally:
        if (_read_holder(lock) or {}).get("token") == me["token"]:
            lock.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()


# --- output paths: the one rule for every file and folder a command writes ------------------------
# A command writes only files it created or is documented to replace, never through a symbolic link,
# never inside a run, dataset or export folder it does not own, and it checks all of that before it
# moves or writes anything. Folders gptlab writes as a whole are told apart by files only they hold
# (first match wins: an export holds a config.json too; a config.json alone is anybody's).
GPTLAB_FOLDERS = (("export", lambda f: (f / "gptlab_export.json").is_file()),
                  ("dataset", lambda f: (f / "meta.json").is_file() and any(f.glob("*.bin"))),
                  ("run", lambda f: (f / CONFIG_FILE).is_file()
                   and ((f / CHECKPOINT_DIR).is_dir() or (f / METRICS_FILE).exists())))
# Names a run folder uses or will use; another command may add new files beside them, never these.
RUN_LAYOUT = (CONFIG_FILE, CHECKPOINT_DIR, METRICS_FILE, DATA_META_FILE, "tensorboard", "latest")
NAME_MAX = 255  # bytes of one path component on every filesystem gptlab runs on
PATH_MAX = 4000
_MADE_BY_SPAN = 1 << 16  # a file "made by" a command holds its tag in its first or last 64 KiB


def _shown(path) -> str:
    """A path as a one-line message can print it (ascii escapes for names that are not UTF-8)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return ascii(text)
    return repr(text) if any(c in text for c in "\n\r\t") else text


def _writable(folder: Path) -> bool:  # an indirection so tests can model a read-only folder as root
    return os.access(folder, os.W_OK | os.X_OK)


def check_name(path, what: str) -> Path:
    """path as a Path whose name gptlab can write, record in JSON and print: UTF-8, each component at
    most 255 bytes, no symbolic link loop on the way. UserError (one line) otherwise."""
    text = str(path)
    if not text.strip():
        raise UserError(f"{what} is empty: give a path")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{what} {_shown(path)} is not a UTF-8 name: choose a name of UTF-8 "
                        "characters") from None
    if "\0" in text:
        raise UserError(f"{what} {ascii(text)} holds a NUL character: choose another name")
    long = next((p for p in Path(text).parts if len(p.encode("utf-8")) > NAME_MAX), None)
    if long is not None:
        raise UserError(f"{what}: the name {long[:24]}... is {len(long.encode('utf-8'))} bytes long, "
                        f"more than a file name may be ({NAME_MAX}): choose a shorter name")
    if len(raw) > PATH_MAX:
        raise UserError(f"{what} is {len(raw)} bytes long, more than a path may be: choose a shorter "
                        "path")
    try:
        Path(text).absolute().resolve(strict=False)
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13 reports a symlink loop so
        raise UserError(f"{what} {_shown(path)} runs into a symbolic link loop: fix the links or choose "
                        "another path") from None
    return Path(text)


def folder_kind(folder: Path) -> str | None:
    """"run", "dataset" or "export" if folder is one gptlab wrote (see GPTLAB_FOLDERS), else None."""
    with contextlib.suppress(OSError):
        if folder.is_dir():
            return next((kind for kind, is_kind in GPTLAB_FOLDERS if is_kind(folder)), None)
    return None


def enclosing_folder(path: Path) -> tuple[str, Path] | None:
    """(kind, folder) of the innermost gptlab run/dataset/export folder above path, if any."""
    for parent in Path(path).absolute().parents:
        if (kind := folder_kind(parent)) is not None:
            return kind, parent
    return None


def made_by(path: Path, tag: str) -> bool:
    """Does the regular file path hold tag (the mark a gptlab command puts in what it writes)?"""
    try:
        # a FIFO or a device is nobody's output (and may block)
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb",
                  opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW | os.O_NONBLOCK)) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_MADE_BY_SPAN)
            f.seek(max(0, size - _MADE_BY_SPAN))
            tail = f.read(_MADE_BY_SPAN)
    except OSError:
        return False
    return tag.encode("utf-8") in head or tag.encode("utf-8") in tail


def _existing_ancestor(path: Path) -> Path:
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_output_file(path, what: str, tag: str | None, make_parents: bool = False) -> Path:
    """The rule for one file a command writes (eval --json, plot --out, bench --json/--csv), checked
    before anything is written: a name gptlab can write; not a symbolic link, not a folder; an existing
    file only if it holds tag (this command wrote it; None: never); never inside a dataset or an export,
    and inside a run folder only a new file beside the run's own (not one of RUN_LAYOUT, not in its
    subfolders); a writable folder."""
    path = check_name(path, what)
    if path.is_symlink():
        raise UserError(f"{what} {_shown(path)} is a symbolic link: gptlab never writes through one; "
                        "give the real path or a new file name")
    if path.is_dir():
        raise UserError(f"{what} {_shown(path)} is a folder: give a file path")
    if path.exists() and (tag is None or not made_by(path, tag)):
        raise UserError(f"{what} {_shown(path)} exists and was not written by this gptlab command: "
                        "gptlab replaces only its own files; choose a new file name")
    inside = enclosing_folder(path)
    if inside is not None:
        kind, folder = inside
        top_level = path.absolute().parent == folder
        if kind != "run" or not top_level or path.name in RUN_LAYOUT or path.name.startswith("."):
            where = f"the {kind} folder {_shown(folder)}"
            raise UserError(
                f"{what} {_shown(path)} is inside {where}, whose files belong to gptlab "
                f"{'train' if kind == 'run' else 'prepare' if kind == 'dataset' else 'export'}: "
                "write it elsewhere (a run folder takes new files beside its own, not in "
                "its subfolders)")
    parent = path.absolute().parent
    if not parent.is_dir() and not make_parents:
        raise UserError(f"{what} {_shown(path)}: its folder does not exist: create it or choose another "
                        "path")
    check_writable_folder(parent, what)
    return path


def check_writable_folder(folder: Path, what: str) -> None:
    """UserError unless folder (or, if it is yet to be made, its nearest existing ancestor) is a writable
    folder."""
    here = Path(folder) if Path(folder).exists() else _existing_ancestor(Path(folder) / "x")
    if not here.is_dir():
        raise UserError(f"{what}: {_shown(here)} is a file, not a folder: choose another path")
    if not _writable(here):
        raise UserError(f"{what}: cannot write in {_shown(here)} (read-only or no permission): choose a "
                        "writable folder or fix its permissions")


def check_output_folder(path, what: str, kind: str) -> Path:
    """The rule for a folder a command writes as a whole (kind: "run" for train --out_dir, "dataset" for
    prepare --out, "export" for export): a name gptlab can write, not a symbolic link, not inside another
    gptlab folder (a run, dataset or export), and a writable place. Whether an existing folder may be
    replaced is the command's own check (it knows its --overwrite)."""
    path = check_name(path, what)
    if path.is_symlink():
        raise UserError(f"{what} {_shown(path)} is a symbolic link: gptlab never writes through one; "
                        "give the real folder or a new one")
    inside = enclosing_folder(path)
    if inside is not None:
        raise UserError(f"{what} {_shown(path)} is inside the {inside[0]} folder {_shown(inside[1])}: "
                        f"a {kind} gets a folder of its own outside it")
    check_writable_folder(path if path.is_dir() else path.absolute().parent, what)
    return path


def reject_symlinks(folder: Path, names, what: str) -> None:
    """UserError if any of folder/name is a symbolic link (a run's own files are never written through
    one)."""
    for name in names:
        if (Path(folder) / name).is_symlink():
            raise UserError(f"{what}: {_shown(Path(folder) / name)} is a symbolic link, so gptlab would "
                            "write outside the folder: replace it with the real file or start a new run")
