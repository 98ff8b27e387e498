"""Readers and writers of one dataset (issue 22): a prepare never replaces a dataset that a running
trainer or eval reads (refused in one line naming the reader's pid, nothing changed; a killed reader
leaves nothing stale); a bin replaced or rewritten under a running reader stops it in one line; eval
checks the bins' sha256 against meta.json (a zeroed same-size val.bin is refused)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_resume import REPO, make_dataset, train_args

from gptlab import cli
from gptlab.data import samplers
from gptlab.data import tokens as tk
from gptlab.errors import UserError

HOLD = ("import sys, time; from gptlab.data import tokens as tk\n"
        "reader = tk.open_for_reading(sys.argv[1]); print('holding', flush=True); time.sleep(120)")


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def one_line(argv: list[str], capsys) -> str:
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def overwrite_argv(root: Path, data: Path) -> list:
    return ["prepare", "text", "--input", root / "docs", "--tokenizer", "char", "--out", data,
            "--overwrite", "--no_progress"]


def replace_same_size(path: Path, in_place: bool) -> None:
    """Zeros of the same size: a new file renamed over it, or written into it with its mtime kept."""
    before = os.stat(path)
    if in_place:
        with open(path, "r+b") as f:
            f.write(bytes(before.st_size))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(bytes(before.st_size))
        os.replace(tmp, path)


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path)


def test_prepare_refuses_while_a_reader_holds_the_dataset(tmp_path, data, capsys):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    reader = subprocess.Popen([sys.executable, "-c", HOLD, str(data)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "holding"
        before = snapshot(tmp_path)
        err = one_line(overwrite_argv(tmp_path, data), capsys)
        assert f"pid {reader.pid}" in err and "being read" in err, err
        assert snapshot(tmp_path) == before  # nothing replaced, no partial folder left
    finally:
        reader.send_signal(signal.SIGKILL)  # a killed reader: the kernel drops its lock, nothing is stale
        reader.wait(timeout=60)
    assert cli.main([str(a) for a in overwrite_argv(tmp_path, data)]) == 0


def test_reader_in_process_and_the_swap(tmp_path, data, capsys):
    """The lock of this process's reader refuses too; once closed, the swap replaces the folder and a
    new reader locks the new folder, not the old one moved aside."""
    with tk.open_for_reading(data) as reader:
        assert reader.fd is not None
        err = one_line(overwrite_argv(tmp_path, data), capsys)
        assert f"pid {os.getpid()}" in err
    old_inode = os.stat(data).st_ino
    assert cli.main([str(a) for a in overwrite_argv(tmp_path, data)]) == 0
    with tk.open_for_reading(data) as reader:
        assert os.fstat(reader.fd).st_ino == os.stat(data).st_ino != old_inode


@pytest.mark.parametrize("in_place", [False, True], ids=["renamed over", "rewritten in place, mtime kept"])
def test_bins_changed_under_a_reader_stop_it_in_one_line(data, in_place):
    meta = tk.read_meta(data)
    tokens = tk.load_split(data, "train", meta)
    sampler = samplers.RandomWindowSampler(tokens, batch_size=2, seq_len=8)
    reader = tk.open_for_reading(data, meta)
    x, _ = sampler.next()
    reader.check()  # unchanged: no complaint
    replace_same_size(tk.bin_path(data, "train"), in_place)
    for step in (sampler.next, reader.check):
        with pytest.raises(UserError, match="replaced or rewritten while this run read it") as e:
            step()
        assert "\n" not in str(e.value)
    reader.close()


def test_verification_cache_sees_an_in_place_rewrite_with_the_old_mtime(data, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "cache"))
    meta = tk.read_meta(data)
    tk.verify_bins(data, meta)  # hashed and cached
    replace_same_size(tk.bin_path(data, "val"), in_place=True)  # same size, inode and mtime
    with pytest.raises(UserError, match="does not match the sha256"):
        tk.verify_bins(data, meta)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("readers")
    data = make_dataset(root)
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    assert cli.main([str(a) for a in ["train", *train_args(data, root / "run", "random", 2)]]) == 0
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)
    return root, data


@pytest.mark.parametrize("in_place", [False, True], ids=["renamed over", "rewritten in place, mtime kept"])
def test_eval_refuses_a_zeroed_same_size_val_bin(finished_run, tmp_path, capsys, monkeypatch, in_place):
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "cache"))
    root, data = finished_run
    argv = ["eval", "--run", root / "run", "--eval_data_split", "val", "--max_eval_steps", "1"]
    assert cli.main([str(a) for a in argv]) == 0  # verified (and cached) while intact
    capsys.readouterr()
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in data.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    assert cli.main([str(a) for a in [*argv, "--dataset", copy]]) == 0
    capsys.readouterr()
    replace_same_size(tk.bin_path(copy, "val"), in_place)
    before = snapshot(tmp_path)
    err = one_line([*argv, "--dataset", copy, "--json", tmp_path / "m.json"], capsys)
    assert "val.bin does not match the sha256" in err
    assert snapshot(tmp_path) == before


def test_a_running_trainer_holds_its_dataset_and_stops_when_a_bin_is_replaced(tmp_path, data, capsys):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = train_args(data, run, "random", 100000, checkpoint_interval=1, eval_iters=1)
    proc = subprocess.Popen([sys.executable, "-m", "gptlab", "train", *map(str, args)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # polls, not a timing assertion: up to 2 minutes on a loaded machine
            if (run / "checkpoints" / "latest").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()
        err = one_line(overwrite_argv(tmp_path, data), capsys)
        assert f"pid {proc.pid}" in err, err
        assert json.loads((data / "meta.json").read_text())["splits"]  # untouched
        replace_same_size(tk.bin_path(data, "train"), in_place=False)
        rc = proc.wait(timeout=120)
        lines = proc.stderr.read().strip().splitlines()
        assert rc == 2 and len(lines) == 1 and "replaced or rewritten" in lines[0], lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
