"""Two gloo ranks started with different model options: before anything is read, built or written, the ranks
all-gather a hash of their config and every rank stops with the same one line naming the differing key
(before: each rank built its own model and the first collective failed with a traceback or hung)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as tdist

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not tdist.is_available() or not tdist.is_gloo_available(), reason="no gloo backend")
def test_ranks_with_different_model_options_stop_in_one_line(tmp_path):
    from gptlab.data.prepare import prepare

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"d{i}.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    data = prepare("text", input=docs, tokenizer="char", out=tmp_path / "data")
    run = tmp_path / "run"
    port = _free_port()
    procs = []
    for rank, n_layer in ((0, "1"), (1, "2")):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        argv = ["baby", "--dataset", str(data), "--out_dir", str(run), "--device", "cpu", "--dtype", "float32",
                "--compile", "none", "--n_layer", n_layer, "--n_head", "2", "--n_embd", "32", "--block_size", "16",
                "--batch_size", "2", "--max_iters", "2", "--num_threads", "1", "--tensorboard", "false"]
        procs.append(subprocess.Popen([sys.executable, "-m", "gptlab", "train", *argv], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        lines = err.strip().splitlines()
        assert p.returncode == 2, (out, err)
        assert "Traceback" not in err and len(lines) == 1, err
        assert lines[0].startswith("error: rank 1 was started with n_layer = 2 but rank 0 with 1"), lines[0]
    assert not run.exists()
