"""The training loop's contracts: metrics windows, the run folder named once, resume from a
run's config.json and from a printed command, divergence's way back, and stop agreement
and shutdown across two gloo ranks."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_resume import _nan_after, make_dataset, train_args, train_records

from gptlab import checkpoint as ck
from gptlab import cli

REPO = Path(__file__).resolve().parents[2]


def test_metrics_records_do_not_depend_on_the_terminal_interval(tmp_path):
    data = make_dataset(tmp_path)
    for every in (1, 4):  # the second run also evaluates before step 1 (nanoGPT's habit)
        args = train_args(data, tmp_path / f"log{every}", "random", 8, checkpoint_interval=0, log_interval=every,
                          eval_at_start=every == 4)
        assert cli.main(["train", *args]) == 0
    a, b = train_records(tmp_path / "log1"), train_records(tmp_path / "log4")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]
    evals = [json.loads(l) for l in (tmp_path / "log4" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert [(r["step"], r["tokens"]) for r in evals if r["split"] == "val"] == [(0, 0), (8, 8 * 8 * 32)]


def _interrupt_at(run_glob, step: int) -> None:
    """SIGINT to this process once a run under run_glob has logged `step`."""
    def watch():
        t0 = time.time()
        while time.time() - t0 < 120:
            for m in Path(run_glob[0]).glob(run_glob[1]):
                if max(train_records(m.parent) or {0: 0}) >= step:
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            time.sleep(0.01)
    threading.Thread(target=watch, daemon=True).start()


def test_init_from_run_with_auto_naming_resumes_by_the_printed_command(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path)
    base = tmp_path / "base"
    assert cli.main(["train", *train_args(data, base, "random", 3)]) == 0
    monkeypatch.chdir(tmp_path)
    args = [a for a in train_args(data, Path("unused"), "random", 400, checkpoint_interval=0) if a != "unused"]
    args.remove("--out_dir")
    args += ["--init_from", str(base), "--n_layer", "3", "--log_root", "logs"]
    _interrupt_at((tmp_path / "logs", "**/metrics.jsonl"), 2)
    assert cli.main(["train", *args]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "Resume with:" in l)
    cmd = shlex.split(line.split("Resume with:", 1)[1])
    assert cmd[:2] == ["gptlab", "train"] and "--out_dir" not in cmd
    (run,) = [p.parent for p in (tmp_path / "logs").glob("**/metrics.jsonl")]
    stopped = max(train_records(run))
    cmd[cmd.index("--max_iters") + 1] = str(stopped + 2)
    assert cli.main(cmd[1:]) == 0
    assert f"resuming from {run / 'checkpoints'}" in capsys.readouterr().out
    assert max(train_records(run)) == stopped + 2
    assert json.loads((run / "config.json").read_text())["model"]["n_layer"] == 1  # the source's architecture


def test_a_runs_config_json_resumes_it_from_anywhere_and_refuses_a_conflict(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path)
    run = tmp_path / "run"
    assert cli.main(["train", *train_args(data, run, "random", 3)]) == 0
    monkeypatch.chdir(tmp_path / "data")
    assert cli.main(["train", str(run / "config.json"), "--resume", "--max_iters", "5"]) == 0
    assert max(train_records(run)) == 5
    capsys.readouterr()
    assert cli.main(["train", str(run / "config.json"), "--resume", "--n_embd", "64", "--max_iters", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --n_embd 64 differs from 32 in the run's config.json")
    assert cli.main(["train", str(run / "config.json")]) == 2  # the folder exists: --resume or --overwrite
    assert max(train_records(run)) == 5


def test_divergence_keeps_the_last_good_checkpoint_and_resume_uses_it(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path)
    run = tmp_path / "run"
    _nan_after(monkeypatch, set(range(4, 1000)))
    args = train_args(data, run, "random", 20, keep_last=1, max_nonfinite=3)
    assert cli.main(["train", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last valid checkpoint is ckpt_00000003.pt" in err[0] and "since step 4" in err[0]
    assert f"--init_from {run}" in err[0]  # the way to go on with another learning rate
    assert [p.name for p in ck.list_checkpoints(run)] == ["ckpt_00000003.pt"]  # kept despite keep_last 1
    assert (ck.checkpoint_dir(run) / "ckpt_00000005.pt.diverged").is_file()  # set aside, not deleted
    monkeypatch.undo()
    assert cli.main(["train", *args, "--resume", "--learning_rate", "1e-3"]) == 2  # a resume keeps its settings
    assert "--init_from" in capsys.readouterr().err
    assert cli.main(["train", *args, "--resume"]) == 0
    assert "at step 3" in capsys.readouterr().out.split("resuming from ")[1].splitlines()[0]
    assert max(train_records(run)) == 20


# ------------------------------------------------------------------------------ two gloo ranks

def _ranks(args: list[str], cwd: Path, port: int) -> list[subprocess.Popen]:
    """Two ranks started directly (no torchrun process: one torch import fewer per launch)."""
    procs = []
    for rank in range(2):
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "gptlab", "train", *args], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_to_one_of_two_ranks_stops_both_with_a_checkpoint(tmp_path):
    data = make_dataset(tmp_path)
    run = tmp_path / "run"
    procs = _ranks(train_args(data, run, "stream", 400, checkpoint_interval=0, device="cpu"), tmp_path, _free_port())
    try:
        t0 = time.time()
        while max(train_records(run) or {0: 0}) < 3 and time.time() - t0 < 180:
            assert all(p.poll() is None for p in procs), procs[0].communicate()
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    last = max(train_records(run))
    assert f"stopped by SIGTERM at step {last}; checkpoint written" in outs[0][0]
    assert ck.list_checkpoints(run)[0].name == f"ckpt_{last:08d}.pt"


def test_a_run_leaves_no_thread_behind(tmp_path):
    """Every thread a run starts (checkpoint writer, progress bar monitor, TensorBoard writer) is joined
    before train() returns: a thread still alive at interpreter exit can abort the process (SIGABRT)."""
    data = make_dataset(tmp_path)
    before = set(threading.enumerate())
    args = train_args(data, tmp_path / "run", "random", 3, progress="on", tensorboard="true")
    assert cli.main(["train", *args]) == 0
    assert [t.name for t in threading.enumerate() if t not in before] == []


def test_a_short_two_rank_run_exits_0_every_time(tmp_path):
    data = make_dataset(tmp_path)
    for i in range(int(os.environ.get("GPTLAB_REPEAT", "20"))):
        args = train_args(data, tmp_path / f"r{i}", "stream", 2, n_layer=1, n_embd=8, n_head=1, block_size=8,
                          eval_iters=1, device="cpu")
        procs = _ranks(args, tmp_path, _free_port())
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], (i, outs)


def test_a_finished_run_prints_commands_that_work(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path)
    run = tmp_path / "run"
    assert cli.main(["train", *train_args(data, run, "random", 2)]) == 0
    out = capsys.readouterr().out
    cmds = [shlex.split(l) for l in out.splitlines() if l.startswith("  gptlab ")]
    assert [c[1] for c in cmds] == ["sample", "eval", "plot"]
    monkeypatch.chdir(tmp_path / "data")  # they name the run by its path: they work from anywhere
    for c in cmds:
        extra = ["--num_samples", "1", "--max_new_tokens", "20"] if c[1] == "sample" else []
        assert cli.main(c[1:] + extra) == 0, c
    assert (run / "loss.png").is_file()


def test_init_from_a_hugging_face_folder_takes_its_architecture(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    data = make_dataset(tmp_path)
    conf = transformers.GPT2Config(vocab_size=40, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(conf).save_pretrained(tmp_path / "hf")
    run = tmp_path / "run"
    assert cli.main(["train", *train_args(data, run, "random", 2, n_layer=4, n_embd=32), "--init_from",
                     str(tmp_path / "hf")]) == 0
    assert f"initialised from {tmp_path / 'hf'}" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())["model"]
    assert (saved["n_layer"], saved["n_embd"], saved["vocab_size"], saved["block_size"]) == (1, 16, 40, 32)
