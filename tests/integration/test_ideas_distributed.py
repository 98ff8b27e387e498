"""A model idea on several gloo ranks: DDP and FSDP2 (one shard unit per block of the idea's
`blocks`) train the modern block exactly as one rank with twice the accumulation does (the stream
sampler gives them the same rows), and every rank loads the idea's file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gptlab import cli
from tests.integration.test_distributed import (STEPS, TINY, _assert_close, _fsdp_unavailable, _launch, _metrics,
                                                work)  # noqa: F401

MODERN = Path(__file__).resolve().parents[2] / "examples" / "ideas" / "modern_block.py"


def _common(work: Path) -> list[str]:
    return ["--dataset", str(work / "data"), *TINY, "--model", f"{MODERN}:ModernGPT", "--rope_base", "500",
            "--max_iters", str(STEPS)]


@pytest.fixture(scope="module")
def one_rank(work):  # noqa: F811
    run = work / "idea_one"
    threads, determ = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:  # in this process: a second interpreter start costs ~10 s of CPU here
        assert cli.main(["train", *_common(work), "--gradient_accumulation_steps", "2", "--out_dir", str(run)]) == 0
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(determ)
    return run


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_train_an_idea_as_one_rank_does(work, one_rank, parallel):  # noqa: F811
    if parallel == "fsdp" and _fsdp_unavailable():
        pytest.skip(_fsdp_unavailable())
    run = work / f"idea_{parallel}"
    res = _launch([*_common(work), "--gradient_accumulation_steps", "1", "--parallel", parallel,
                   "--out_dir", str(run)], work, 2)
    assert "world 2 | batch 8 = 2 ranks x 4 x 1 accum" in res.stdout
    _assert_close(_metrics(run, "train"), _metrics(one_rank, "train"))
    _assert_close(_metrics(run, "eval"), _metrics(one_rank, "eval"))
    assert (run / "idea" / "modern_block.py").read_bytes() == MODERN.read_bytes()
