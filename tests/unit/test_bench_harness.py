"""The GPU harness's CPU-checkable parts (benchmarks/peers.py, benchmarks/peer_runs.py): the lines it
parses are the ones gptlab and nanoGPT print, levers change only what they name and are undone, and
nanoGPT reads the very tokens gptlab trains on."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import peer_runs  # noqa: E402
import peers  # noqa: E402

from gptlab import startup  # noqa: E402
from gptlab.config_files import build_config  # noqa: E402
from gptlab.model import GPT  # noqa: E402


def test_first_step_line_is_what_the_harness_parses():
    found = peer_runs.FIRST_STEP.search("noise " + startup.first_step_line(torch.device("cpu")))
    assert found and float(found.group(1)) > 0


def test_nanogpt_eval_line_format():
    # nanoGPT train.py prints f"step {iter_num}: train loss {losses['train']:.4f},
    # val loss {losses['val']:.4f}" (one line)
    line = f"step {250}: train loss {1.98765:.4f}, val loss {2.01234:.4f}"
    found = peer_runs.NANOGPT_EVAL.search(line)
    assert found and (int(found.group(1)), float(found.group(3))) == (250, 2.0123)


def test_compile_mode_replaced_once():
    args = ["--batch_size", "16", "--compile", "default", "--dtype", "bfloat16"]
    assert peers._with_compile(args, "reduce-overhead") == [
        "--batch_size",
        "16",
        "--dtype",
        "bfloat16",
        "--compile",
        "reduce-overhead",
    ]
    assert peers._with_compile(["--seq_len", "8"], "default") == [
        "--seq_len",
        "8",
        "--compile",
        "default",
    ]


def test_foreach_lever_keeps_the_groups_and_is_undone():
    from gptlab import bench

    cfg = build_config(
        "baby", overrides=dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20)
    )
    model = GPT(cfg.model).init_weights()
    original = bench.build_optimizer
    with peers.lever_applied("foreach", ["--compile", "none"]) as args:
        assert args == ["--compile", "none"]
        lever = bench.build_optimizer(model, cfg, "cpu")
    assert bench.build_optimizer is original
    plain = original(model, cfg, "cpu")
    assert type(lever) is type(plain) and lever.defaults["foreach"] and not lever.defaults["fused"]
    for a, b in zip(lever.param_groups, plain.param_groups):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        for key in ("lr", "betas", "eps", "weight_decay"):
            assert a[key] == b[key], key


def test_cdt_lever_patches_inductor_only_inside():
    import torch._inductor.config as inductor_config

    before = inductor_config.coordinate_descent_tuning
    with peers.lever_applied("cdt", []):
        assert inductor_config.coordinate_descent_tuning is True
    assert inductor_config.coordinate_descent_tuning == before
    with pytest.raises(ValueError, match="eval_separate"):
        with peers.lever_applied("eval_separate", []):
            pass


def test_nanogpt_reads_the_tokens_gptlab_trains_on(char_dataset, tmp_path):
    from gptlab.data import tokens as tk

    peer_runs.nanogpt_bins_from_gptlab(char_dataset, tmp_path)
    meta = tk.read_meta(char_dataset)
    for split in ("train", "val"):
        theirs = np.fromfile(
            tmp_path / f"{split}.bin", dtype=np.uint16
        )  # how nanoGPT's get_batch reads it
        assert np.array_equal(theirs, np.asarray(tk.load_split(char_dataset, split, meta)))
