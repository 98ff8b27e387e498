"""Bad input, in-process through gptlab.cli.main: exit 2, one line on stderr, no traceback,
and not one file under the test's folder added, removed or changed (sha256 of every file).

One table, one class of input per block: config values, devices, run folders, checkpoints,
sample / eval / export, data. A case whose fix lives deep in another engineer's module is
marked xfail(strict=True) with the owner, so it turns into a failure the day it is fixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
import torch

from gptlab import checkpoint as ck
from gptlab import cli

WORDS = "the quick brown fox jumps over a lazy dog while seven small birds sing far away".split()


# --- helpers (imported by the other test_errors_* files) -------------------------------------

def make_data(root: Path) -> Path:
    """A character-level dataset of 8 documents (train + val)."""
    from gptlab.data.prepare import prepare

    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(8):
        (docs / f"d{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(120)) + "\n", encoding="utf-8")
    return prepare("text", input=docs, tokenizer="char", out=root / "data" / "chars")


def train_argv(data: Path, run: Path, **extra) -> list[str]:
    """A tiny CPU run: 1 layer, width 32, 16-token windows, 2 steps, a checkpoint every step."""
    opts = dict(dataset=data, out_dir=run, max_iters=2, n_layer=1, n_head=2, n_embd=32, block_size=16,
                batch_size=2, gradient_accumulation_steps=1, num_threads=1, log_interval=1, checkpoint_interval=1,
                eval_interval=0, eval_iters=1, eval_batch_size=2, tensorboard="false", progress="off",
                learning_rate=1e-3, min_lr=1e-4, warmup_iters=1, lr_decay_iters=2, seed=7, device="cpu",
                dtype="float32", compile="none")
    opts.update(extra)
    out = ["baby"]
    for k, v in opts.items():
        out += [f"--{k}", str(v)]
    return out


def snapshot(root: Path) -> dict:
    """Every path under root: sha256 of a file, None for a folder."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def expect_user_error(argv, capsys, root: Path, words=()) -> str:
    """cli.main(argv) exits 2 with one 'error: ...' line, no traceback, and root unchanged."""
    before = snapshot(root)
    threads = torch.get_num_threads()
    try:
        rc = cli.main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    assert snapshot(root) == before, "a refused command changed files"
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset and a finished 2-step run, built once; cases copy what they modify."""
    root = tmp_path_factory.mktemp("errors_world")
    data = make_data(root)
    run = root / "run"
    threads = torch.get_num_threads()
    assert cli.main([str(a) for a in ["train", *train_argv(data, run)]]) == 0
    torch.set_num_threads(threads)
    return {"root": root, "data": data, "run": run}
