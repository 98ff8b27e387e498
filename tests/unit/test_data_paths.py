"""Special files as prepare's inputs and outputs (issue 22): a FIFO, a device, a socket, a symbolic link
loop or a path under a file is named in one line (exit 2), never read (no hang) and nothing is written;
file names that are not UTF-8 are prepared or refused in one line, never a traceback."""

import contextlib
import hashlib
import json
import os
import signal
import socket
import stat

import numpy as np
import pytest

from gptlab import cli
from gptlab.data.sources import path_problem

TEXT = "To be, or not to be, that is the question.\n" * 40


def snapshot(root) -> dict:
    """(type, sha256 of regular files) of every entry under root; never opens a special file."""
    out = {}
    for dirpath, dirnames, names in os.walk(root):
        for name in dirnames + names:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest() if stat.S_ISREG(mode) else None
            out[os.path.relpath(os.fsencode(path), os.fsencode(root))] = (stat.S_IFMT(mode), digest)
    return out


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging when a command blocks on a special file."""
    def stop(*_):
        raise TimeoutError(f"still running after {seconds}s: a special file was read")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def world(tmp_path):
    (tmp_path / "in.txt").write_text(TEXT)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    for split in ("train", "test"):
        (tmp_path / "books" / split).mkdir(parents=True)
        (tmp_path / "books" / split / "a.txt").write_text(TEXT)
    (tmp_path / "lists").mkdir()
    np.save(tmp_path / "lists" / "file_list_test.npy", np.array(["a.txt"]))
    os.mkfifo(tmp_path / "lists" / "file_list_train.npy")
    yield tmp_path
    sock.close()


CHAR = ("--tokenizer", "char")
CASES = [  # (argv with {root} for the test folder, words the one line must hold)
    (("text", "--input", "{root}/fifo"), "is a FIFO (named pipe)"),
    (("text", "--input", "/dev/zero"), "is a character device"),
    (("text", "--input", "{root}/loop"), "symbolic link loop"),
    (("text", "--input", "{root}/sock"), "is a socket"),
    (("text", "--input", "{root}/dangling"), "symbolic link to nothing"),
    (("text", "--input", "{root}/in.txt/x"), "lies under a file"),
    (("shakespeare_char", "--input", "{root}/fifo"), "is a FIFO"),
    (("shakespeare_char", "--input", "/dev/zero"), "is a character device"),
    (("books", "--input", "/dev/zero"), "is a character device"),
    (("books", "--input", "{root}/in.txt"), "is a file, not a folder"),
    (("books", "--input", "{root}/books", "--file_lists", "{root}/fifo", *CHAR), "--file_lists"),
    (("books", "--input", "{root}/books", "--file_lists", "{root}/lists", *CHAR), "is a FIFO"),
    (("text", "--input", "{root}/in.txt", "--tokenizer_model", "{root}/fifo"), "is a FIFO"),
    (("text", "--input", "{root}/in.txt", "--tokenizer_model", "/dev/zero"), "is a character device"),
    (("hf", "--dataset", "{root}/fifo"), "--dataset"),
    (("hf", "--dataset", "{root}/loop"), "symbolic link loop"),  # a local path, never a hub name
    (("text", "--input", "{root}/in.txt", *CHAR, "--out", "{root}/fifo"), "--out"),
    (("text", "--input", "{root}/in.txt", *CHAR, "--out", "/dev/zero"), "is a character device"),
    (("text", "--input", "{root}/in.txt", *CHAR, "--out", "{root}/loop"), "symbolic link loop"),
    (("text", "--input", "{root}/in.txt", *CHAR, "--out", "{root}/loop/x"), "symbolic link loop"),
    (("text", "--input", "{root}/in.txt", *CHAR, "--out", "{root}/sock"), "is a socket"),
    (("text", "--input", "{root}/in.txt", *CHAR, "--out", "{root}/in.txt/x"), "lies under"),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(a).replace("{root}/", "") for a, _ in CASES])
def test_special_paths_are_named_in_one_line(world, argv, words, capsys, monkeypatch):
    monkeypatch.chdir(world)
    before = snapshot(world)
    with deadline(20):
        rc = cli.main(["prepare", *(a.format(root=world) for a in argv), "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert words in err and "does not exist" not in err and "Traceback" not in err, err
    assert snapshot(world) == before


def test_path_problem_names_each_kind(world):
    """The describer against os.stat's own answer (S_IFMT), file by file."""
    assert path_problem(world / "in.txt") is None and path_problem(world) is None
    assert path_problem(world / "in.txt", "folder") == "is a file, not a folder"
    assert path_problem(world, "file") == "is a folder, not a file"
    assert path_problem(world / "absent") == "does not exist"
    for name, kind in (("fifo", stat.S_IFIFO), ("sock", stat.S_IFSOCK)):
        assert stat.S_IFMT(os.stat(world / name).st_mode) == kind
    assert path_problem(world / "fifo") == "is a FIFO (named pipe)"
    assert path_problem("/dev/null") == "is a character device"


def test_non_utf8_names_inside_input_and_as_paths_are_prepared(world, capsys, monkeypatch):
    """Names that are not UTF-8 (bytes kept as surrogate escapes, as Python reads argv and folders): the
    documents are read, meta.json is valid UTF-8 JSON with the name shown as a backslash escape."""
    monkeypatch.chdir(world)
    docs = world / os.fsdecode(b"docs\xff")
    docs.mkdir()
    (docs / os.fsdecode(b"a\xfe.txt")).write_text(TEXT)
    (docs / "b.txt").write_text(TEXT.upper())
    out = world / os.fsdecode(b"out\xfd")
    assert cli.main(["prepare", "text", "--input", str(docs), *CHAR, "--out", str(out), "--no_progress"]) == 0
    meta = json.loads((out / "meta.json").read_bytes().decode("utf-8"))
    assert meta["source"]["documents"] == 2 and meta["source"]["path"].endswith("docs\\xff")
    assert meta["splits"]["train"]["documents"] == 1 and meta["splits"]["val"]["documents"] == 1
    capsys.readouterr()
