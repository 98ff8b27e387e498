"""Run folders: prepare_run_dir refuses before writing, never deletes, and names fixes that
work; run_lock keeps a second writer out while a live process trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_errors_cli import snapshot

from gptlab import runs
from gptlab.errors import UserError
from gptlab.files import LOCK_FILE


def _run_folder(p: Path, ckpt: bool = False) -> Path:
    (p / "checkpoints").mkdir(parents=True)
    (p / "config.json").write_text("{}")
    if ckpt:
        (p / "checkpoints" / "ckpt_00000002.pt").write_bytes(b"x")
    return p


REFUSALS = {
    "resume and overwrite": (lambda t: (t / "r", dict(resume=True, overwrite=True)), "contradict"),
    "resume, missing folder": (lambda t: (t / "r", dict(resume=True)), "drop --resume"),
    "resume, no checkpoint": (lambda t: (_run_folder(t / "r"), dict(resume=True)), "pass --overwrite instead"),
    "existing run": (lambda t: (_run_folder(t / "r"), {}), "--resume to continue"),
    "a file": (lambda t: ((t / "f").write_text("x") and t / "f", {}), "is a file"),
    "under a file": (lambda t: ((t / "f").write_text("x") and t / "f" / "run", {}), "is a file"),
    "under a file, deeper": (lambda t: ((t / "f").write_text("x") and t / "f" / "a" / "b", dict(overwrite=True)),
                             "is a file"),
    "folder of documents, overwrite": (lambda t: ((t / "docs").mkdir() or (t / "docs" / "a.txt").write_text("x")
                                                  and t / "docs", dict(overwrite=True)), "not a run folder"),
    "folder of documents, resume": (lambda t: ((t / "docs").mkdir() or (t / "docs" / "a.txt").write_text("x")
                                               and t / "docs", dict(resume=True)), "not a run folder"),
    "current folder": (lambda t: (Path("."), {}), "current folder"),
    "current folder, overwrite": (lambda t: (Path("."), dict(overwrite=True)), "current folder"),
    "parent of current folder": (lambda t: (Path(".."), dict(overwrite=True)), "current folder"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_prepare_run_dir_refuses_before_writing(tmp_path, monkeypatch, case):
    build, words = REFUSALS[case]
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    path, kw = build(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match=words) as e:
        runs.prepare_run_dir(path, **kw)
    assert "\n" not in str(e.value)
    assert snapshot(tmp_path) == before


def test_current_run_folder_may_be_resumed_but_not_moved(tmp_path, monkeypatch):
    run = _run_folder(tmp_path / "r", ckpt=True)
    monkeypatch.chdir(run)
    assert runs.prepare_run_dir(".", resume=True) == Path(".")
    with pytest.raises(UserError, match="while you are in it"):
        runs.prepare_run_dir(".", overwrite=True)


def test_overwrite_moves_aside_and_says_where(tmp_path, capsys):
    run = _run_folder(tmp_path / "r", ckpt=True)
    before = snapshot(run)
    assert runs.prepare_run_dir(run, overwrite=True) == run
    out = capsys.readouterr().out
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r.old-")]
    assert len(aside) == 1 and str(aside[0]) in out
    assert snapshot(aside[0]) == before and not run.exists()


def test_resume_fix_in_message_works(tmp_path, capsys):
    """The refusal says --overwrite; following it succeeds (not a circle)."""
    run = _run_folder(tmp_path / "r")
    with pytest.raises(UserError, match="pass --overwrite instead"):
        runs.prepare_run_dir(run, resume=True)
    assert runs.prepare_run_dir(run, overwrite=True) == run
    with pytest.raises(UserError, match="drop --resume"):
        runs.prepare_run_dir(tmp_path / "new", resume=True)
    assert runs.prepare_run_dir(tmp_path / "new") == tmp_path / "new"


def test_run_lock_creates_the_folder_and_a_refused_run_leaves_none(tmp_path):
    run = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError):
        with runs.run_lock(run):
            assert (run / LOCK_FILE).is_file()
            raise RuntimeError("refused after the lock")
    assert list(tmp_path.iterdir()) == []
    with runs.run_lock(run):
        (run / "config.json").write_text("{}")
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def _holder(run: Path) -> subprocess.Popen:
    """A live process holding the run's lock until its stdin closes."""
    code = ("import sys; from gptlab import runs\n"
            f"with runs.run_lock({str(run)!r}):\n    print('held', flush=True); sys.stdin.read()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize("kw", [dict(resume=True), dict(overwrite=True)], ids=["resume", "overwrite"])
def test_live_lock_refuses_a_second_writer(tmp_path, kw):
    run = _run_folder(tmp_path / "r", ckpt=True)
    p = _holder(run)
    try:
        before = snapshot(tmp_path)
        with pytest.raises(UserError, match=f"in use by pid {p.pid}") as e:
            runs.prepare_run_dir(run, **kw)
        assert "\n" not in str(e.value) and LOCK_FILE in str(e.value)
        with pytest.raises(UserError, match=f"pid {p.pid}"):
            with runs.run_lock(run):
                pass
        assert snapshot(tmp_path) == before
    finally:
        p.stdin.close()
        p.wait()
    assert not (run / LOCK_FILE).exists()


def test_stale_lock_is_taken_over(tmp_path):
    run = _run_folder(tmp_path / "r", ckpt=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (run / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "time": "x"}))
    assert runs.prepare_run_dir(run, resume=True) == run
    with runs.run_lock(run):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (run / LOCK_FILE).exists()


def test_run_lock_disabled_on_other_ranks(tmp_path):
    with runs.run_lock(tmp_path, enabled=False) as p:
        assert p == tmp_path and not (tmp_path / LOCK_FILE).exists()
