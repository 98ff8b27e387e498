"""Start-up speed (issue 23): evaluation through the training graph (no second compile, the same
numbers), the choice of evaluation path, the compile cache folder, the first-step line, and data
verification off the critical path.

Compiles are counted with torch._dynamo.testing.CompileCounter as the backend: it counts every graph
Dynamo hands to a backend, so a recompile (a new guard failing: eval mode, no_grad, another shape or
argument) shows as a larger count, whatever backend would then lower it."""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from gptlab import startup
from gptlab.config_files import build_config
from gptlab.errors import UserError
from gptlab.evaluate import EvalForward, TrainGraphForward, eval_plan, evaluate
from gptlab.model import GPT
from gptlab.train import train, train_step

VOCAB, SEQ, BATCH = 40, 16, 4


@pytest.fixture(autouse=True)
def _fresh_dynamo(one_thread):
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(dropout=0.0, seed=0):
    cfg = build_config(
        "baby",
        overrides=dict(
            n_layer=2,
            n_head=2,
            n_embd=32,
            block_size=SEQ,
            vocab_size=VOCAB,
            dropout=dropout,
            batch_size=BATCH,
        ),
    )
    torch.manual_seed(seed)
    return GPT(cfg.model).init_weights(), cfg


def _tokens(n=23 * SEQ + 5, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.uint16)


def _one_train_step(compiled, ce_chunk):
    opt = torch.optim.SGD(compiled.parameters(), lr=0.0)
    x = torch.randint(0, VOCAB, (BATCH, SEQ))
    train_step(
        compiled,
        opt,
        torch.amp.GradScaler("cpu", enabled=False),
        [(x, torch.roll(x, -1, 1))],
        ctx=torch.autocast("cpu", enabled=False),
        clip=1.0,
        ce_chunk=ce_chunk,
    )


@pytest.mark.parametrize(
    "ce_chunk", [0, 24]
)  # the plain loss (logits) and the chunked one (hidden states)
def test_eval_through_the_training_graph_adds_no_compile_and_scores_like_eval_mode(ce_chunk):
    model, _ = _model()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    _one_train_step(compiled, ce_chunk)  # lr 0: the weights stay as the reference sees them
    after_training = counter.frame_count
    assert after_training >= 1
    tokens = _tokens()
    plan = eval_plan(len(tokens), SEQ, 4, data=tokens)
    assert len(plan.items) % BATCH, "the last batch must be short, so that the padding is exercised"
    fast = evaluate(
        compiled,
        tokens,
        SEQ,
        7,
        torch.device("cpu"),
        plan=plan,
        forward=TrainGraphForward(compiled, BATCH, hidden=ce_chunk > 0),
    )
    assert counter.frame_count == after_training  # no second graph
    assert compiled.training  # train mode kept
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind
    reference = evaluate(
        model, tokens, SEQ, 7, torch.device("cpu"), plan=plan
    )  # eager, eval mode, no_grad
    for key in ("loss", "acc1", "acc10", "eval_tokens"):
        assert fast[key] == pytest.approx(reference[key], rel=1e-6, abs=0), (
            key
        )  # fp32 rounding only
    # The counter does see recompiles: the old path (eval mode, no_grad) traces a new graph.
    evaluate(compiled, tokens, SEQ, BATCH, torch.device("cpu"), plan=plan)
    assert counter.frame_count > after_training


def _documents_dataset(root):
    """A char dataset of 40 documents (one file each), for the stream sampler."""
    from gptlab.data.prepare import prepare
    from tests.conftest import SAMPLE_TEXT

    folder = root / "docs"
    folder.mkdir()
    for i in range(40):
        (folder / f"doc{i:02d}.txt").write_text(SAMPLE_TEXT[i * 150 : i * 150 + 400], encoding="utf-8")
    prepare("text", input=folder, tokenizer="char", out=root / "data" / "docs")
    return root / "data" / "docs"


@pytest.mark.parametrize("sampler", ["random", "stream"])  # the stream's micro-batch: train_batch_size/accum
def test_training_run_with_compile_evaluates_without_a_second_graph(
    char_dataset, tmp_path, monkeypatch, sampler
):
    """A whole `train` run with --compile default on CPU (the compile backend swapped for a counter):
    evaluations at steps 2 and 4 reuse the training graph, and score what an eager run scores."""
    counter = CompileCounter()
    monkeypatch.setattr(
        "gptlab.train.compile_model", lambda model, mode: torch.compile(model, backend=counter)
    )

    data = char_dataset if sampler == "random" else _documents_dataset(tmp_path)

    def run(name, compile_mode):
        o = dict(
            dataset=str(data),
            out_dir=str(tmp_path / name),
            n_layer=2,
            n_head=2,
            n_embd=32,
            block_size=16,
            batch_size=4,
            gradient_accumulation_steps=2,
            sampler=sampler,
            max_iters=4,
            eval_interval=2,
            eval_iters=3,
            eval_batch_size=3,
            dropout=0.0,
            device="cpu",
            dtype="float32",
            compile=compile_mode,
            progress="off",
            tensorboard="false",
            log_interval=1,
        )
        train(build_config("baby", overrides=o))
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["kind"] == "eval"]

    compiled = run("compiled", "default")
    assert counter.frame_count == 1, "the evaluations compiled a graph of their own"
    eager = run("eager", "none")
    assert len(compiled) == len(eager) == 4  # train and val at steps 2 and 4
    for a, b in zip(compiled, eager):
        assert a["loss"] == pytest.approx(
            b["loss"], rel=1e-5
        )  # fp32: the same training, rounding apart


def test_eval_forward_choice(monkeypatch):
    plain, _ = _model()
    dropping, _ = _model(dropout=0.1)
    compiled = torch.compile(plain, backend="eager")
    kw = dict(
        compiled_mode="default", batch_size=BATCH, ce_chunk=0, distributed=False, eval_only=False
    )
    monkeypatch.delenv(startup.EVAL_GRAPH_ENV, raising=False)
    assert isinstance(startup.eval_forward(compiled, plain, **kw), TrainGraphForward)
    eager = startup.eval_forward(torch.compile(dropping, backend="eager"), dropping, **kw)
    assert (
        type(eager) is EvalForward and eager.model is dropping
    )  # dropout: the plain module, eval mode
    for changed in (
        dict(distributed=True),
        dict(eval_only=True),
        dict(compiled_mode="reduce-overhead"),
    ):
        chosen = startup.eval_forward(compiled, plain, **dict(kw, **changed))
        assert type(chosen) is EvalForward and chosen.model is compiled
    none = startup.eval_forward(plain, plain, **dict(kw, compiled_mode="none"))
    assert type(none) is EvalForward and none.model is plain
    monkeypatch.setenv(startup.EVAL_GRAPH_ENV, "separate")
    assert startup.eval_forward(compiled, plain, **kw).model is compiled
    monkeypatch.setenv(startup.EVAL_GRAPH_ENV, "train")
    with pytest.raises(UserError, match="dropout 0"):
        startup.eval_forward(compiled, dropping, **kw)
    monkeypatch.setenv(startup.EVAL_GRAPH_ENV, "fast")
    with pytest.raises(UserError, match=startup.EVAL_GRAPH_ENV):
        startup.eval_forward(compiled, plain, **kw)


def test_a_bad_eval_graph_setting_is_refused_before_anything_is_written(
    char_dataset, tmp_path, monkeypatch
):
    monkeypatch.setenv(startup.EVAL_GRAPH_ENV, "fast")
    cfg = build_config(
        "baby",
        overrides=dict(
            dataset=str(char_dataset),
            out_dir=str(tmp_path / "run"),
            n_layer=1,
            max_iters=1,
            device="cpu",
            progress="off",
            tensorboard="false",
        ),
    )
    with pytest.raises(UserError, match=startup.EVAL_GRAPH_ENV):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_compile_cache_folder_on_cuda_only(monkeypatch, tmp_path):
    monkeypatch.setenv(
        "TORCHINDUCTOR_CACHE_DIR", ""
    )  # recorded, so that what the call sets is undone
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(tmp_path / "cache"))
    assert startup.use_compile_cache(torch.device("cpu"), "default") is None
    assert startup.use_compile_cache(torch.device("cuda"), "none") is None
    folder = startup.use_compile_cache(torch.device("cuda"), "default")
    assert folder == tmp_path / "cache" / "inductor" and folder.is_dir()
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(folder)  # where inductor's FX graph and AOTAutograd caches now go
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice wins
    assert startup.use_compile_cache(torch.device("cuda"), "default") == tmp_path / "mine"


def test_first_step_line_counts_from_the_process_start():
    started = startup.process_started()
    assert started <= time.time() and time.time() - started < 24 * 3600
    line = startup.first_step_line(torch.device("cpu"))
    found = re.fullmatch(r"time to first step: ([\d.]+) s \(compile ([\d.]+) s\)", line)
    assert found and float(found.group(1)) >= 0 and float(found.group(2)) >= 0


def test_compile_seconds_grows_with_a_compile():
    before = startup.compile_seconds()
    fn = torch.compile(lambda x: torch.sin(x) + 1, backend="eager")
    fn(torch.ones(3))
    assert startup.compile_seconds() > before


def test_background_verification_reports_at_join(char_dataset, monkeypatch):
    from gptlab.data import tokens as tk

    meta = tk.read_meta(char_dataset)
    splits = list(meta["splits"])
    inline = startup.verify_in_background(tk.verify_bins, char_dataset, meta, splits, tk.bin_path)
    assert inline.thread is None  # a small dataset: checked before anything is written
    meta["splits"]["train"]["sha256"] = "0" * 64  # as if the bin had changed since prepare
    with pytest.raises(UserError, match="sha256"):
        startup.verify_in_background(tk.verify_bins, char_dataset, meta, splits, tk.bin_path)
    monkeypatch.setattr(startup, "BACKGROUND_VERIFY_BYTES", 0)
    late = startup.verify_in_background(tk.verify_bins, char_dataset, meta, splits, tk.bin_path)
    assert late.thread is not None
    with pytest.raises(UserError, match="sha256.*no checkpoint"):
        startup.join_verification(late, char_dataset / "run")  # what the stopped run left is said
    late.join()  # reported once


def test_training_graph_padding_rows_do_not_change_scores():
    """A short batch is padded to the training rows: the scored rows equal an unpadded forward."""
    model, _ = _model()
    x = torch.randint(0, VOCAB, (3, SEQ))
    with torch.no_grad():
        ref = model.eval()(x)[..., :VOCAB]
    model.train()
    got = TrainGraphForward(model, BATCH, hidden=True)(x)
    assert got.shape == ref.shape and not got.requires_grad
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * math.sqrt(32))
