"""A model idea under DDP: two gloo ranks train the modern block exactly as one rank with twice the
accumulation does (the stream sampler gives both the same rows), and each rank loads the idea's file."""

from __future__ import annotations

from pathlib import Path

import torch

from gptlab import cli
from tests.integration.test_distributed import STEPS, TINY, _assert_close, _launch, _metrics, work  # noqa: F401

MODERN = Path(__file__).resolve().parents[2] / "examples" / "ideas" / "modern_block.py"


def test_ddp_two_ranks_train_an_idea_as_one_rank_does(work):  # noqa: F811
    idea = ["--model", f"{MODERN}:ModernGPT", "--rope_base", "500"]
    common = ["--dataset", str(work / "data"), *TINY, *idea, "--max_iters", str(STEPS)]
    one, two = work / "idea_one", work / "idea_ddp"
    threads, determ = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:  # one rank in this process (a second interpreter start costs ~10 s of CPU here)
        assert cli.main(["train", *common, "--gradient_accumulation_steps", "2", "--out_dir", str(one)]) == 0
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(determ)
    res = _launch([*common, "--gradient_accumulation_steps", "1", "--out_dir", str(two)], work, 2)
    assert "world 2 | batch 8 = 2 ranks x 4 x 1 accum" in res.stdout
    _assert_close(_metrics(two, "train"), _metrics(one, "train"))
    _assert_close(_metrics(two, "eval"), _metrics(one, "eval"))
    assert (two / "idea" / "modern_block.py").read_bytes() == MODERN.read_bytes()
