"""nanoGPT's gradient_accumulation_steps is global: torchrun with 2 ranks trains on the same
global batch as 1 rank (each rank does half the micro-batches)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as tdist

REPO = Path(__file__).resolve().parents[2]
NANOGPT_FLAGS = ["--batch_size", "2", "--gradient_accumulation_steps", "4", "--block_size", "16", "--n_layer", "1",
                 "--n_head", "2", "--n_embd", "16", "--max_iters", "2", "--lr_decay_iters", "2", "--warmup_iters", "0",
                 "--eval_interval", "2", "--eval_iters", "1", "--device", "cpu", "--dtype", "float32",
                 "--compile", "none", "--progress", "off", "--tensorboard", "false", "--num_threads", "1"]


def _train(args: list[str], nproc: int, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if nproc == 1:
        cmd = [sys.executable, "-m", "gptlab", "train", "baby", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "gptlab", "train", "baby", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


@pytest.mark.skipif(not tdist.is_available() or not tdist.is_gloo_available(), reason="no gloo backend")
def test_two_ranks_keep_the_global_batch_of_one(char_dataset, tmp_path):
    data = ["--dataset", str(char_dataset)]
    one = _train([*data, *NANOGPT_FLAGS, "--out_dir", str(tmp_path / "one")], 1, tmp_path)
    two = _train([*data, *NANOGPT_FLAGS, "--out_dir", str(tmp_path / "two")], 2, tmp_path)
    # 2 micro x 4 global accumulation = 8 sequences of 16 tokens on 1 rank and on 2.
    assert "batch 8 = 1 ranks x 2 x 4 accum | seq 16 | 128 tokens/step" in one.stdout
    assert "batch 8 = 2 ranks x 2 x 2 accum | seq 16 | 128 tokens/step" in two.stdout
    saved = [json.loads((tmp_path / r / "config.json").read_text())["train"] for r in ("one", "two")]
    assert [t["train_batch_size"] for t in saved] == [8, 8]
    assert [t["gradient_accumulation_steps"] for t in saved] == [4, 2]  # per rank, as the run ran

