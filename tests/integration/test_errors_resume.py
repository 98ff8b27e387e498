"""Runs that resume as they were (issue 22): config.json is the only source of a resumed run's settings.

A resume that would change training semantics, a batch that cannot be split, a checkpoint with non-finite
weights or a foreign format: one line naming the problem and the fix, exit 2, no traceback, not a byte
changed. Then the resumes that must work: `--resume --out_dir RUN` alone, and a 2-process run on 1 process.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_errors import _train, expect_user_error, snapshot, world  # noqa: F401 (fixture)

from gptlab import checkpoint as ck
from gptlab import cli


def _copy(world, name: str, edit_state=None, edit_config=None):
    """A copy of the finished run, every checkpoint file passed through edit_state (checksums kept matching)."""
    run = world["root"] / name
    if run.exists():
        return run
    shutil.copytree(world["run"], run)
    config = json.loads((run / "config.json").read_text())
    config["log"]["out_dir"] = str(run)
    (edit_config or (lambda c: None))(config)
    (run / "config.json").write_text(json.dumps(config))
    for path in (run / "checkpoints").glob("*.pt") if edit_state else ():
        state = torch.load(path, weights_only=True)
        edit_state(state)
        torch.save(state, path)
        path.with_name(path.name + ".sha256").write_text(ck.sha256_file(path) + "\n")
    return run


def _without_config(world):
    run = _copy(world, "no_config")
    (run / "config.json").unlink(missing_ok=True)
    return run


def _nan(state):
    state["model"] = {k: torch.full_like(v, float("nan")) for k, v in state["model"].items()}


def _foreign(state):
    state["format"] = "other-ckpt-9"


def _resume(world, *extra, run=None, **opts):
    return _train(world, "--resume", run=run or world["run"], lr_decay_iters=2, **opts) + list(extra)


SEMANTICS = {"learning_rate": 0.1, "min_lr": 1e-5, "grad_clip": 0.5, "weight_decay": 0.0, "warmup_iters": 1,
             "dropout": 0.0, "beta2": 0.9}

CASES = {
    **{f"resume with another {key}": (lambda w, k=key, v=value: _resume(w, **{k: v}), (f"--{key}", "--init_from"))
       for key, value in SEMANTICS.items()},
    "resume --out_dir alone with another learning rate": (
        lambda w: ["train", "--resume", "--out_dir", str(w["run"]), "--learning_rate", "0.1"],
        ("--learning_rate 0.1", "0.003", "--init_from")),
    "resume with another preset": (lambda w: ["train", "small", "--resume", "--out_dir", str(w["run"])],
                                   ("'small'", "'baby'", "--init_from")),
    "resume with a micro batch that does not divide the batch": (
        lambda w: ["train", "--resume", "--out_dir", str(w["run"]), "--batch_size", "3"],
        ("--batch_size 3", "global batch of 8", "--batch_size 4 --gradient_accumulation_steps 2")),
    "resume a run without config.json": (
        lambda w: ["train", "--resume", "--out_dir", str(_without_config(w))], ("no config.json", "--overwrite")),
    "resume a run whose config.json holds no batch": (
        lambda w: ["train", "--resume", "--out_dir", str(_copy(w, "empty_config", edit_config=lambda c: c.clear()))],
        ("config.json", "batch")),
    "resume from checkpoints with non-finite weights": (
        lambda w: ["train", "--resume", "--out_dir", str(_copy(w, "nan_run", _nan)), "--max_iters", "3"],
        ("no valid checkpoint",)),
    "sample from non-finite weights": (lambda w: ["sample", "--run", str(_copy(w, "nan_run", _nan))],
                                       ("non-finite weights", "diverged")),
    "eval of non-finite weights": (
        lambda w: ["eval", "--run", str(_copy(w, "nan_run", _nan)), "--eval_data_split", "val"], ("non-finite",)),
    "resume from checkpoints of a foreign format": (
        lambda w: ["train", "--resume", "--out_dir", str(_copy(w, "foreign_run", _foreign)), "--max_iters", "3"],
        ("no valid checkpoint",)),
    "sample from a checkpoint of a foreign format": (
        lambda w: ["sample", "--run", str(_copy(w, "foreign_run", _foreign))], ("'other-ckpt-9'", "format")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_resume_is_one_clean_line(world, capsys, case):
    build, words = CASES[case]
    expect_user_error(build(world), capsys, world["root"], words)


def test_resume_reads_the_runs_config_json_alone(world, capsys):
    """`train --resume --out_dir RUN` continues with the run's own settings (not the defaults), and only
    the keys it may change change in config.json."""
    run = _copy(world, "resume_alone")
    before = json.loads((run / "config.json").read_text())
    assert cli.main(["train", "--resume", "--out_dir", str(run), "--max_iters", "3"]) == 0, capsys.readouterr().err
    assert "resuming from" in capsys.readouterr().out
    after = json.loads((run / "config.json").read_text())
    assert after["train"].pop("max_iters") == 3 and before["train"].pop("max_iters") == 2
    assert after == before
    assert ck.load_checkpoint(ck.checkpoint_dir(run) / "ckpt_00000003.pt")["step"] == 3


def test_a_two_process_run_resumes_on_one_with_the_same_global_batch(world, capsys):
    """The run's config.json says 2 processes x 4 sequences x 1 (a global batch of 8): on 1 process the
    same 8 sequences a step come as 4 x 2 accumulation, and the command says so."""
    def two_processes(config):
        config["train"]["gradient_accumulation_steps"] = 1

    run = _copy(world, "two_process_run", edit_config=two_processes)
    assert cli.main(["train", "--resume", "--out_dir", str(run), "--max_iters", "3"]) == 0, capsys.readouterr().err
    assert "1 x 4 sequences x 2 accumulation = the run's global batch of 8" in capsys.readouterr().out
    train = json.loads((run / "config.json").read_text())["train"]
    assert (train["batch_size"], train["gradient_accumulation_steps"], train["train_batch_size"]) == (4, 2, 8)
