"""Files gptlab writes and reads: atomic writes (a full or read-only disk is a one-line UserError), JSON/TOML
with one-line errors, hashes, and folder locks (`.gptlab.lock` with pid, host and time; taken over only when its
pid is dead on this host)."""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import os
import secrets
import socket
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator

from gptlab.errors import UserError

LOCK_FILE = ".gptlab.lock"


def _open_for_write(path: Path):  # an indirection so tests can inject a failing writer (full disk)
    return open(path, "wb")


def write_error(path: Path, e: BaseException | None) -> UserError | None:
    """The one-line UserError for a full / read-only disk behind e (or what it wraps), else None."""
    for _ in range(8):  # e, then what it wraps
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return UserError(f"disk full while writing {path} (nothing was replaced): free space and run the command again")
        if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return UserError(f"cannot write {path}: {e.strerror or 'read-only'}: choose a writable folder or fix its permissions")
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
    """write(binary file object) into path atomically (temporary file, fsync, rename); returns what write returned."""
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


def _read(path: Path, what: str, parse: Callable[[str], Any], bad: type, fix: Callable[[Any], str]) -> Any:
    """parse(text of path); UserError one-liner if it is missing, unreadable or damaged (bad, described by fix)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} is missing: check the path")
    try:
        return parse(path.read_text(encoding="utf-8"))
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
    return _read(path, what, tomllib.loads, tomllib.TOMLDecodeError, lambda e: f"TOML ({str(e).splitlines()[0]}): fix it")


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
            names = [e.name for e in base.iterdir() if (e.is_file() and e.suffix in suffixes if last else e.is_dir())]
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
    return UserError(f"{what} {lock.parent} is in use by pid {h.get('pid', '?')} on {h.get('host', '?')} since "
                     f"{h.get('time', '?')}: wait for it to finish, or if that process is gone delete {lock}")


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
    """Hold path/.gptlab.lock for the block. A folder the lock had to create is removed again if left empty."""
    folder = Path(path)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e) or UserError(f"cannot create {what} {folder}: {e.strerror}") from None
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
        raise UserError(f"could not take the lock {lock} (it keeps changing): retry when other gptlab commands finish")
    try:
        yield folder
    finally:
        if (_read_holder(lock) or {}).get("token") == me["token"]:
            lock.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
