"""Multi-process training on CPU: torchrun starts two gloo ranks inside the test.

The data use the document-stream sampler: with StreamBatcher, N ranks with accumulation
k compute exactly the rows that 1 rank computes with N*k-fold accumulation, so the
losses logged by a 2-rank run must equal those of a 1-rank run with 2-fold accumulation.
Every launch costs seconds of interpreter and process-group start-up, so the runs are
shared through module fixtures and kept to a handful.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from gptlab import distributed as dist_
from gptlab.errors import UserError

REPO = Path(__file__).resolve().parents[2]
STEPS = 6
TINY = ["--sampler", "stream", "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
        "--dropout", "0", "--device", "cpu", "--dtype", "float32", "--deterministic", "true", "--compile", "none",
        "--num_threads", "1", "--train_batch_size", "8", "--lr_decay_iters", str(STEPS), "--warmup_iters", "0",
        "--eval_interval", "3", "--eval_iters", "2", "--log_interval", "1", "--log_metrics_every", "1"]


def _fsdp_unavailable() -> str | None:
    if not tdist.is_available() or not tdist.is_gloo_available():
        return "this torch build has no gloo backend"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no FSDP2 (torch.distributed.fsdp.fully_shard)"
    return None


def _launch(args: list[str], cwd: Path, nproc: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)  # a launcher around pytest must not leak into the runs
    if nproc == 1:
        cmd = [sys.executable, "-m", "gptlab", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "gptlab", "train", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-5000:]}"
    return res


def _train_here(args: list[str]) -> None:
    """A 1-rank run inside the test process: it saves the ~10 s of CPU that importing torch
    again costs on a small machine. The run changes process-wide torch settings
    (threads, deterministic algorithms); they are put back afterwards."""
    from gptlab.config_files import build_config, parse_overrides
    from gptlab.train import train

    threads, determ = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        train(build_config(None, None, parse_overrides(args)))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(determ)


def _metrics(run: Path, kind: str) -> dict:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == kind:
            key = rec["step"] if kind == "train" else (rec["step"], rec.get("split"))
            out[key] = rec["loss"]
    return out


def _assert_close(a: dict, b: dict, keys=None):
    keys = sorted(keys if keys is not None else a)
    assert keys and all(k in a and k in b for k in keys), (keys, sorted(a), sorted(b))
    for k in keys:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (k, a[k], b[k])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny char-level corpus of many documents (the text recipe records their offsets)."""
    from gptlab.data.prepare import prepare

    root = tmp_path_factory.mktemp("dist")
    docs = root / "docs"
    docs.mkdir()
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while two cats sit on warm mats".split()
    for i in range(40):
        docs.joinpath(f"d{i:03d}.txt").write_text(" ".join(rng.choice(words) for _ in range(rng.randint(50, 150))) + "\n")
    prepare("text", input=docs, tokenizer="char", out=root / "data", val_fraction=0.1)
    return root


@pytest.fixture(scope="module")
def reference(work):
    """1 rank, 2-fold accumulation, all steps: the run every distributed one must match."""
    run = work / "ref"
    _train_here(["--dataset", str(work / "data"), *TINY, "--max_iters", str(STEPS), "--gradient_accumulation_steps", "2",
                 "--out_dir", str(run)])
    return run


def test_ddp_two_ranks_match_one_rank_with_accumulation(work, reference):
    run = work / "ddp"
    res = _launch(["--dataset", str(work / "data"), *TINY, "--max_iters", str(STEPS), "--gradient_accumulation_steps",
                   "1", "--out_dir", str(run)], work, 2)
    assert "world 2 | batch 8 = 2 ranks x 4 x 1 accum" in res.stdout
    # Rank 0 alone prints: one training line per step, not two.
    assert res.stdout.count(f"step {STEPS}/{STEPS} |") == 1
    _assert_close(_metrics(run, "train"), _metrics(reference, "train"))
    # Eval deals windows round-robin to the ranks and sums: the same numbers as one rank.
    _assert_close(_metrics(run, "eval"), _metrics(reference, "eval"))
    # Rank 0 wrote ordinary single-file checkpoints with every rank's sampler state.
    from gptlab import checkpoint as ck

    state = ck.load_checkpoint(ck.list_checkpoints(run)[0])
    assert state["world_size"] == 2 and len(state["sampler"]) == 2 and state.get("sharded") is None


def test_ddp_accumulation_syncs_once_and_matches(work, reference):
    """2 ranks x 2 micro-steps (all-reduce on the last one only, gradients as bucket views,
    several small buckets) sees the same 8 rows a step as the 1-rank reference."""
    run = work / "ddp_accum"
    res = _launch(["--dataset", str(work / "data"), *TINY, "--max_iters", str(STEPS), "--gradient_accumulation_steps",
                   "2", "--ddp_bucket_mb", "1", "--out_dir", str(run)], work, 2)
    assert "world 2 | batch 8 = 2 ranks x 2 x 2 accum" in res.stdout
    _assert_close(_metrics(run, "train"), _metrics(reference, "train"))


@pytest.mark.skipif(_fsdp_unavailable() is not None, reason=str(_fsdp_unavailable()))
def test_fsdp_matches_and_resumes_on_another_rank_count(work, reference):
    """FSDP2 on 2 ranks for half the run (DCP checkpoint), then the rest on 1 rank from it."""
    from gptlab import checkpoint as ck
    from gptlab import files
    from gptlab.config_files import load_run_config
    from gptlab.model import GPT

    run = work / "fsdp"
    data = ["--dataset", str(work / "data"), *TINY, "--parallel", "fsdp"]
    _launch([*data, "--max_iters", "3", "--gradient_accumulation_steps", "1", "--out_dir", str(run)], work, 2)
    ckdir = run / "checkpoints"
    assert (ckdir / "dcp_00000003" / ".metadata").is_file()
    state = ck.load_checkpoint(ckdir / "ckpt_00000003.pt")
    assert state["sharded"]["name"] == "dcp_00000003" and state["world_size"] == 2
    assert state["sharded"]["metadata_sha256"] == files.sha256_file(ckdir / "dcp_00000003" / ".metadata")
    # The single file holds full, unsharded weights: sample / eval / export load it as usual.
    model = GPT(load_run_config(run / "config.json").model).init_weights()
    model.load_state_dict(state["model"])
    ref = _metrics(reference, "train")
    _assert_close(_metrics(run, "train"), ref, [1, 2, 3])

    _train_here([*data, "--max_iters", str(STEPS), "--gradient_accumulation_steps", "2", "--out_dir", str(run),
                 "--resume", "true"])
    # Same weights, optimiser moments and stream position after resharding 2 -> 1: same losses.
    _assert_close(_metrics(run, "train"), ref, [4, 5, 6])


def test_single_process_helpers_are_identity():
    d = dist_.Dist()
    t = torch.tensor([1.0, 3.0])
    assert torch.equal(dist_.all_reduce(t, d, "mean"), t) and torch.equal(dist_.all_reduce(t, d, "max"), t)
    assert dist_.gather_objects({"a": 1}, d) == [{"a": 1}]
    m = torch.nn.Linear(2, 2)
    assert dist_.wrap_model(m, d, "fsdp") is m
    assert set(dist_.full_state_dict(m, d)) == {"weight", "bias"}


def test_world_size_without_rank_is_user_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(UserError, match="torchrun"):
        dist_.init("cpu")


def test_missing_sharded_checkpoint_is_user_error(tmp_path):
    (tmp_path / "checkpoints" / "dcp_00000009").mkdir(parents=True)
    with pytest.raises(UserError, match="incomplete"):
        dist_.load_sharded(tmp_path, {"name": "dcp_00000009", "metadata_sha256": "0" * 64}, torch.nn.Linear(2, 2), None)
