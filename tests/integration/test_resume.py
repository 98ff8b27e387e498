"""Nothing lost: exact resume after SIGKILL, clean stops on SIGTERM/SIGINT, non-finite steps.

The kill tests train a real `python -m gptlab train` subprocess, kill -9 it at a random
step after its first checkpoint, resume it, and require every logged train loss (and the
final weights and optimiser state) to be bit-identical to an uninterrupted run. Dropout
is on, so a lost RNG state shows; gradient accumulation is on and both samplers are used
(the stream batcher wraps into its second epoch), so a lost data position shows.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from gptlab import checkpoint as ck
from gptlab import cli, files

REPO = Path(__file__).resolve().parents[2]
WORDS = ("the quick brown fox jumps over a lazy dog and then runs far away into the dark green forest "
         "while seven small birds sing").split()


def make_dataset(root: Path) -> Path:
    """A character-level dataset of 12 documents of different lengths (11 train, 1 val)."""
    from gptlab.data.prepare import prepare

    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(12):
        n = rng.randint(40, 160)
        (docs / f"d{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(n)) + "\n", encoding="utf-8")
    return prepare("text", input=docs, tokenizer="char", out=root / "data" / "multi")


def train_args(data: Path, run: Path, sampler: str, max_iters: int, checkpoint_interval: int = 1, **extra) -> list[str]:
    """A tiny deterministic CPU run: 1 layer, width 32, 32-token windows, 4 x 2 accumulation."""
    opts = dict(dataset=data, out_dir=run, max_iters=max_iters, n_layer=1, n_head=2, n_embd=32, block_size=32,
                batch_size=4, gradient_accumulation_steps=2, dropout=0.1, deterministic="true", num_threads=1,
                log_interval=1, log_metrics_every=1, checkpoint_interval=checkpoint_interval, eval_interval=0,
                eval_iters=1, eval_batch_size=4, tensorboard="false", progress="off", sampler=sampler, keep_last=3,
                learning_rate=3e-3, min_lr=1e-4, warmup_iters=5, lr_decay_iters=max_iters, seed=7)
    opts.update(extra)
    out = ["baby"]
    for k, v in opts.items():
        out += [f"--{k}", str(v)]
    return out


def train_records(run: Path) -> dict[int, dict]:
    """Last train record per step (a resumed run appends to metrics.jsonl)."""
    out = {}
    path = run / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if rec.get("kind") == "train":
            out[rec["step"]] = rec
    return out


def spawn(args: list[str], tmp: Path, name: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = open(tmp / f"{name}.out", "w")
    err = open(tmp / f"{name}.err", "w")
    return subprocess.Popen([sys.executable, "-m", "gptlab", "train", *args], stdout=out, stderr=err, env=env, cwd=tmp)


def wait_for_step(proc: subprocess.Popen, run: Path, step: int, need_checkpoint: bool, timeout: float = 240) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        recs = train_records(run)
        last = max(recs) if recs else 0
        if last >= step and (not need_checkpoint or (run / "checkpoints" / "latest").is_file()):
            return last
        if proc.poll() is not None:
            pytest.fail(f"training exited early (rc {proc.returncode}) at step {last}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no step {step} within {timeout}s")


def final_state(run: Path, step: int) -> dict:
    return ck.load_checkpoint(ck.checkpoint_dir(run) / f"ckpt_{step:08d}.pt")


def assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@pytest.mark.parametrize("sampler", ["random", "stream"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, sampler, capsys):
    from gptlab.data import tokens as tk
    from gptlab.data.samplers import StreamBatcher

    data = make_dataset(tmp_path)
    n = 24
    if sampler == "stream":  # the run must cross an epoch boundary of the stream batcher
        meta = tk.read_meta(data)
        sb = StreamBatcher(tk.load_split(data, "train", meta), tk.doc_offsets(data, "train", meta), 8, 32)
        assert sb.steps_per_epoch < n - 2
    killed = tmp_path / "killed"
    proc = spawn(train_args(data, killed, sampler, n), tmp_path, "killed")
    try:
        ref = tmp_path / "ref"  # the uninterrupted run, in-process while the subprocess starts
        assert cli.main(["train", *train_args(data, ref, sampler, n)]) == 0
        kill_at = random.Random().randint(3, n - 6)
        wait_for_step(proc, killed, kill_at, need_checkpoint=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    logged_before = max(train_records(killed))
    assert logged_before < n, "the run finished before the kill"
    capsys.readouterr()
    assert cli.main(["train", *train_args(data, killed, sampler, n), "--resume"]) == 0
    out = capsys.readouterr().out
    resumed_at = int(out.split("resuming from ")[1].split(" at step ")[1].split()[0])
    assert 0 < resumed_at < n

    a, b = train_records(ref), train_records(killed)
    assert sorted(a) == sorted(b) == list(range(1, n + 1))
    for step in range(1, n + 1):
        assert (a[step]["loss"], a[step]["lr"], a[step]["tokens"]) == (b[step]["loss"], b[step]["lr"], b[step]["tokens"]), \
            f"step {step} differs after resuming at {resumed_at} ({sampler} sampler)"
    sa, sb_ = final_state(ref, n), final_state(killed, n)
    for key in ("model", "optimizer", "rng", "sampler", "loop"):
        assert_same_tensors(sa[key], sb_[key], key)
    # The saved data position is that of the next unseen batch, not of the prefetched one.
    if sampler == "random":
        assert sa["sampler"][0]["step"] == 2 * n  # two micro-batches per step
    else:
        per_epoch = StreamBatcher(tk.load_split(data, "train"), tk.doc_offsets(data, "train"), 8, 32).steps_per_epoch
        assert sa["sampler"][0]["epoch"] * per_epoch + sa["sampler"][0]["step"] == n  # batches consumed


def test_sigterm_stops_cleanly_and_a_second_signal_exits_at_once(tmp_path):
    """Two real runs, started together to share the start-up time: one gets SIGTERM (finish
    the step, checkpoint, exit 0 saying how to resume), the other SIGTERM then SIGINT."""
    from gptlab.config_files import build_config, parse_overrides

    data = make_dataset(tmp_path)
    run, run2 = tmp_path / "run", tmp_path / "run2"
    proc = spawn(train_args(data, run, "random", 400, checkpoint_interval=0), tmp_path, "term")
    proc2 = spawn(train_args(data, run2, "random", 400, checkpoint_interval=0), tmp_path, "twice")
    try:
        wait_for_step(proc, run, 3, need_checkpoint=False)
        proc.send_signal(signal.SIGTERM)
        wait_for_step(proc2, run2, 2, need_checkpoint=False)
        proc2.send_signal(signal.SIGTERM)
        proc2.send_signal(signal.SIGINT)  # a different signal, so the two cannot merge into one
        rc, rc2 = proc.wait(timeout=120), proc2.wait(timeout=60)
    finally:
        for p in (proc, proc2):
            if p.poll() is None:
                p.kill()
    out, err = (tmp_path / "term.out").read_text(), (tmp_path / "term.err").read_text()
    assert rc == 0, err
    assert "Traceback" not in err and "SIGTERM" in err
    last = max(train_records(run))
    assert 3 <= last < 400
    ckpts = ck.list_checkpoints(run)
    assert ckpts and ckpts[0].name == f"ckpt_{last:08d}.pt" and ck.verify(ckpts[0]) is None
    state = ck.load_checkpoint(ckpts[0])
    assert state["sampler"][0]["step"] == 2 * last  # the next unseen batch, two micro-batches a step
    line = next(l for l in out.splitlines() if "Resume with:" in l)
    assert f"stopped by SIGTERM at step {last}" in line
    cmd = shlex.split(line.split("Resume with:", 1)[1])
    assert cmd[:3] == ["gptlab", "train", "baby"] and cmd.count("--resume") == 1
    cfg = build_config("baby", None, parse_overrides(cmd[3:]))
    assert cfg.train.resume and not cfg.train.overwrite and Path(cfg.log.out_dir) == run

    assert rc2 in (128 + signal.SIGINT, 128 + signal.SIGTERM)
    assert "Resume with:" not in (tmp_path / "twice.out").read_text()
    assert "Traceback" not in (tmp_path / "twice.err").read_text()


def test_sigint_in_process_stops_cleanly_and_restores_handlers(tmp_path, capsys):
    data = make_dataset(tmp_path)
    run = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)

    def interrupt():
        t0 = time.time()
        while time.time() - t0 < 120 and max(train_records(run) or {0: 0}) < 2:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    assert cli.main(["train", *train_args(data, run, "stream", 400, checkpoint_interval=0)]) == 0
    out = capsys.readouterr().out
    last = max(train_records(run))
    assert f"stopped by SIGINT at step {last}; checkpoint written" in out
    assert ck.list_checkpoints(run)[0].name == f"ckpt_{last:08d}.pt"
    assert signal.getsignal(signal.SIGINT) is before


def _nan_after(monkeypatch, bad_steps):
    """Make the training forward pass of the given optimiser steps (1-based) return a NaN
    loss, which also gives NaN gradients. Accumulation 2: two forwards per step."""
    from gptlab import model as gm

    real = gm.GPT.forward
    calls = {"n": 0}

    def forward(self, idx, *a, **k):
        out = real(self, idx, *a, **k)
        if self.training:
            calls["n"] += 1
            if (calls["n"] + 1) // 2 in bad_steps:
                out = out * float("nan")
        return out

    monkeypatch.setattr(gm.GPT, "forward", forward)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path)
    run = tmp_path / "run"
    _nan_after(monkeypatch, {4, 5})
    assert cli.main(["train", *train_args(data, run, "random", 7, keep_last=10, max_nonfinite=3)]) == 0
    recs = train_records(run)
    assert recs[3]["nonfinite_skipped"] == 0 and recs[5]["nonfinite_skipped"] == 2 and recs[7]["nonfinite_skipped"] == 2
    assert recs[4]["loss"] is None  # an interval of only skipped steps has no mean loss, not a fake 0.0
    w3, w5, w6 = (final_state(run, s)["model"] for s in (3, 5, 6))
    assert_same_tensors(w3, w5)  # skipped: the weights did not move on steps 4 and 5
    assert any(not torch.equal(w5[k], w6[k]) for k in w5)  # and training went on afterwards
    assert final_state(run, 7)["nonfinite_skipped"] == 2


def test_too_many_nonfinite_steps_stop_the_run_with_exit_1(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path)
    run = tmp_path / "run"
    _nan_after(monkeypatch, set(range(4, 1000)))
    rc = cli.main(["train", *train_args(data, run, "random", 50, keep_last=10, max_nonfinite=3)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("error: stopped at step 6: 3 steps in a row had a non-finite")
    assert "Traceback" not in "\n".join(err)
    good = final_state(run, 3)
    assert ck.verify(ck.checkpoint_dir(run) / "ckpt_00000003.pt") is None
    assert all(torch.isfinite(t).all() for t in good["model"].values())
    state, path = ck.load_latest_valid(run, warn=pytest.fail)
    assert_same_tensors(state["model"], good["model"])  # whatever is newest holds the last good weights


def test_full_disk_mid_training_is_a_clean_error(tmp_path, monkeypatch, capsys):
    """Through the real loop and CLI: the second save hits a full disk -> exit 2, one line,
    the first checkpoint untouched and still loadable."""
    from faults import _FullDisk  # tests/ is on sys.path under pytest

    data = make_dataset(tmp_path)
    run = tmp_path / "run"
    real_open, calls = files._open_for_write, []

    def opener(path):
        if Path(path).name.startswith(".ckpt_"):
            calls.append(path)
            if len(calls) >= 2:
                return _FullDisk(path, budget=1000)
        return real_open(path)

    monkeypatch.setattr(files, "_open_for_write", opener)
    rc = cli.main(["train", *train_args(data, run, "random", max_iters=4, checkpoint_interval=2)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: disk full") and "--resume" in err[0]
    assert [p.name for p in ck.list_checkpoints(run)] == ["ckpt_00000002.pt"]
    assert ck.verify(ck.list_checkpoints(run)[0]) is None
    assert not [p for p in ck.checkpoint_dir(run).iterdir() if ".tmp" in p.name]


def test_a_recovered_blip_then_a_divergence_resumes_from_the_last_checkpoint_before_it(tmp_path, monkeypatch, capsys):
    """Through the real loop and CLI: steps 3-4 non-finite (a blip, recovered), steps 9 on non-finite (the
    divergence). Checkpoints 1-8 stay, 9-10 are set aside, latest and model.pt name 8, and --resume goes on
    from 8 to the end."""
    data = make_dataset(tmp_path)
    run = tmp_path / "run"
    args = train_args(data, run, "random", 14, keep_last=20, max_nonfinite=3)
    _nan_after(monkeypatch, {3, 4} | set(range(9, 1000)))
    assert cli.main(["train", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert "skipped since step 9" in err and "ckpt_00000008.pt" in err and "--init_from" in err, err
    d = ck.checkpoint_dir(run)
    assert [ck.ckpt_step(p) for p in reversed(ck.list_checkpoints(run))] == list(range(1, 9))
    assert sorted(p.name for p in d.glob("*.diverged")) == ["ckpt_00000009.pt.diverged", "ckpt_00000010.pt.diverged"]
    assert (d / "latest").read_text().strip() == "ckpt_00000008.pt"
    assert ck.verify(d / "model.pt") is None and ck.load_checkpoint(d / "model.pt")["step"] == 8
    monkeypatch.undo()  # the cause is gone (a lower learning rate, another dtype): the run goes on
    assert cli.main(["train", *args, "--resume"]) == 0
    assert "at step 8" in capsys.readouterr().out
    assert ck.list_checkpoints(run)[0].name == "ckpt_00000014.pt"
    assert ck.load_checkpoint(d / "model.pt")["nonfinite_streak_start"] is None
