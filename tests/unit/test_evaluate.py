"""The one eval routine: which targets it scores, from which context, and the numbers it reports.

The reference here does not use eval_plan: for every target position t it derives the
window the benchmark scores it in (the one whose last last_n targets hold t; targets
before seq_len - last_n + 1 are never scored) and runs the model on exactly that context. A plan that scores a token twice, skips one, or predicts it from a
different (even one token shorter) context gives a different total NLL.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptlab import evaluate as E
from gptlab.config_files import build_config
from gptlab.errors import UserError
from gptlab.loss import logits_and_loss
from gptlab.model import GPT

VOCAB = 37
SEQ = 16


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forwards: see conftest


@pytest.fixture(scope="module")
def model():
    cfg = build_config("mini", overrides=dict(n_layer=2, n_embd=32, mlp_dim=64, n_head=2, head_dim=16,
                                              block_size=SEQ, vocab_size=VOCAB, last_n=0))
    torch.manual_seed(0)
    m = GPT(cfg.model).init_weights().eval()
    # Random init gives near-uniform predictions that hardly depend on context; larger
    # weights make the context (and position) matter, so a wrong context shows.
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(8.0)
    return m


def _tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n).astype(np.uint16)


def reference_context_start(t: int, seq_len: int, last_n: int) -> int | None:
    """Start of the window the benchmark scores target position t in (None: never scored).

    Windows start at k*last_n and score their last last_n targets, k*last_n+seq_len-last_n+1
    .. k*last_n+seq_len - window 0 included, so targets 1..seq_len-last_n are never scored.
    """
    if t < seq_len - last_n + 1:
        return None
    return max(0, math.ceil((t - seq_len) / last_n)) * last_n


@torch.no_grad()
def brute_force(model, tokens: np.ndarray, seq_len: int, last_n: int, byte_lengths=None) -> dict:
    toks = torch.as_tensor(tokens.astype(np.int64))
    nll = hit1 = hit10 = nbytes = n = 0.0
    contexts = []
    for t in range(1, len(tokens)):
        s = reference_context_start(t, seq_len, last_n)
        if s is None:
            continue
        assert 0 < t - s <= seq_len
        contexts.append(t - s)
        logits, _ = logits_and_loss(model, toks[s:t][None])
        last = logits[0, -1].float()
        nll += F.cross_entropy(last[None], toks[t][None], reduction="sum").item()
        top = last.topk(10).indices
        hit1 += float(top[0] == toks[t])
        hit10 += float((top == toks[t]).any())
        n += 1
        if byte_lengths is not None:
            nbytes += byte_lengths[int(toks[t])]
    return {"nll": nll, "tokens": int(n), "acc1": hit1 / n, "acc10": hit10 / n, "bytes": nbytes, "contexts": contexts}


def scored_positions(n: int, seq_len: int, last_n: int, streams: int = 1, doc_offsets=None) -> list[tuple[int, int]]:
    """(target position, context length) for every target the plan scores."""
    out = []
    tokens = np.arange(n, dtype=np.int64)  # token value = its position, so targets reveal where they came from
    plan = E.eval_plan(n, seq_len, last_n, doc_offsets, streams)
    x, y = E._batch(plan, tokens, np.arange(len(plan.items)))
    for (row, s), xr, yr in zip(plan.items.tolist(), x.numpy(), y.numpy()):
        for j, v in enumerate(yr):
            if v >= 0:
                if streams == 1:
                    assert v == s + seq_len - last_n + j + 1  # scored target j of the window at s
                out.append((int(v), seq_len - last_n + j + 1))
    return out


@pytest.mark.parametrize("n", [2, 5, 16, 17, 18, 33, 48, 49, 50, 100, 203, 1000])
@pytest.mark.parametrize("last_n", [1, 4, 8, 16])
def test_scored_targets_are_the_benchmarks(n, last_n):
    got = scored_positions(n, SEQ, last_n)
    positions = [t for t, _ in got]
    # Every target from seq_len - last_n + 1 on, once; window 0 scores only its last last_n too.
    assert sorted(positions) == list(range(SEQ - last_n + 1, n))
    for t, ctx in got:
        assert ctx >= SEQ - last_n + 1  # the protocol's promise
        assert ctx == t - reference_context_start(t, SEQ, last_n)


def test_window_zero_scores_only_its_last_n_targets():
    # The openbooks figure: 434,734 tokens scored before, 434,350 = 434,734 - (512 - 128) now.
    plan = E.eval_plan(434_735, 512, 128)
    x, y = E._batch(plan, np.arange(434_735), np.arange(2))
    assert y[0].tolist() == list(range(512 - 128 + 1, 513))
    assert y[1].tolist() == list(range(513, 513 + 128))
    assert E.count_targets(plan, np.zeros(434_735, np.int64))["eval_tokens"] == 434_350


@pytest.mark.parametrize("n,last_n", [(203, 4), (203, 8), (203, 16), (120, 1), (12, 8), (17, 4)])
def test_evaluate_matches_brute_force(model, n, last_n):
    tokens = _tokens(n, seed=n + last_n)
    lengths = np.random.default_rng(1).integers(0, 5, size=VOCAB).astype(np.float64)  # some tokens 0 bytes
    ref = brute_force(model, tokens, SEQ, last_n, lengths)
    for batch_size in (1, 3, 64):  # batching (and the padded last batch) must not change anything
        m = E.evaluate(model, tokens, SEQ, batch_size, torch.device("cpu"), last_n=last_n, byte_lengths=lengths)
        assert m["eval_tokens"] == ref["tokens"] == n - 1 - (SEQ - last_n)
        assert m["total_loss"] == pytest.approx(ref["nll"], rel=1e-5)
        assert m["loss"] * m["eval_tokens"] == pytest.approx(ref["nll"], rel=1e-5)
        assert m["ppl"] == pytest.approx(math.exp(ref["nll"] / ref["tokens"]), rel=1e-5)
        assert m["acc1"] == pytest.approx(ref["acc1"]) and m["acc10"] == pytest.approx(ref["acc10"])
        assert m["eval_bytes"] == ref["bytes"]
        assert m["loss_per_byte"] == pytest.approx(ref["nll"] / ref["bytes"], rel=1e-5)
        assert m["bpb"] == pytest.approx(ref["nll"] / ref["bytes"] / math.log(2), rel=1e-5)
        assert "normalised_ppl" not in m  # no tokenizer, no characters
    assert all(c >= SEQ - last_n + 1 for c in ref["contexts"])


def test_brute_force_can_tell_contexts_apart(model):
    """Guard for the reference itself: one token less context gives another NLL."""
    tokens = _tokens(203, seed=3)
    good = E.evaluate(model, tokens, SEQ, 8, torch.device("cpu"), last_n=4)
    ref = brute_force(model, tokens, SEQ, 4)
    assert good["total_loss"] == pytest.approx(ref["nll"], rel=1e-5)
    # The same targets from other contexts (starts shifted by one): a different total.
    shifted = brute_force(model, tokens[1:], SEQ, 4)
    assert abs(shifted["nll"] - ref["nll"]) > 1e-3


def test_overlap_helps_a_model_that_uses_context(model):
    """last_n = seq_len (no overlap) starts every window cold; the metric must see that."""
    tokens = _tokens(400, seed=5)
    full = brute_force(model, tokens, SEQ, SEQ)
    m = E.evaluate(model, tokens, SEQ, 8, torch.device("cpu"), last_n=SEQ)
    assert m["total_loss"] == pytest.approx(full["nll"], rel=1e-5)
    assert m["eval_windows"] == math.ceil((400 - 1) / SEQ) == m["eval_batches"]


@pytest.mark.parametrize("last_n", [3, 5, 7, 17, -1])
def test_last_n_must_divide_seq_len(model, last_n):
    tokens = _tokens(100)
    with pytest.raises(UserError, match="last_n"):
        E.eval_plan(100, SEQ, last_n)
    with pytest.raises(UserError, match="last_n"):
        E.evaluate(model, tokens, SEQ, 4, torch.device("cpu"), last_n=last_n)


def test_last_n_validated_in_config():
    with pytest.raises(UserError, match="last_n"):
        build_config("mini", overrides={"seq_len": 512, "last_n": 100})
    assert build_config("mini", overrides={"seq_len": 512, "last_n": 128}).train.last_n == 128


def test_too_short_split_is_user_error(model):
    with pytest.raises(UserError, match="at least 2"):
        E.evaluate(model, _tokens(1), SEQ, 4, torch.device("cpu"), last_n=4)


def test_short_split_pads_and_excludes_padding(model):
    tokens = _tokens(9)  # shorter than one window: 8 targets, all inside the scored last 16
    m = E.evaluate(model, tokens, SEQ, 4, torch.device("cpu"), last_n=SEQ)
    ref = brute_force(model, tokens, SEQ, SEQ)
    assert m["eval_tokens"] == 8 and m["eval_windows"] == 1
    assert m["total_loss"] == pytest.approx(ref["nll"], rel=1e-5)
    # With last_n = 4 the 8 targets lie before the scored tail of window 0: nothing is scored.
    assert E.evaluate(model, tokens, SEQ, 4, torch.device("cpu"), last_n=4)["eval_tokens"] == 0


def test_streams_take_the_first_batches_the_same_every_call(model):
    data = _tokens(3000, seed=7)
    offsets = np.array([0, 400, 450, 1300, 1310, 2000, 2900])
    dev = torch.device("cpu")
    plan = E.eval_plan(len(data), SEQ, 0, offsets, streams=4, max_batches=5)
    model.train()  # the in-training eval is called on a training model
    a = E.evaluate(model, data, SEQ, 3, dev, plan=plan)
    b = E.evaluate(model, data, SEQ, 7, dev, plan=plan)
    assert model.training, "evaluate restores the training mode"
    model.eval()
    assert a["total_loss"] == pytest.approx(b["total_loss"], rel=1e-6) and a["eval_tokens"] == b["eval_tokens"]
    # Batch k = window k of every row; only the first 5 batches; rows in the benchmark's order.
    assert plan.items[:, 1].max() == 4 * SEQ and len(plan.items) == 4 * 5 == a["eval_windows"]
    assert plan.items[:4].tolist() == [[r, 0] for r in range(4)]
    assert a["eval_tokens"] == 4 * 5 * SEQ  # rows are long enough: no padding


def test_ranks_split_the_work_and_sum_to_one_rank(model):
    tokens = _tokens(150, seed=11)
    dev = torch.device("cpu")
    captured = []

    def keep(t):
        captured.append(t.clone())
        return t

    one = E.evaluate(model, tokens, SEQ, 3, dev, last_n=4, reduce=keep)
    total_one = captured.pop()
    for r in range(3):
        E.evaluate(model, tokens, SEQ, 3, dev, last_n=4, rank=r, world_size=3, reduce=keep)
    total = sum(captured)
    # (plain allclose: torch.testing's first import costs seconds on a busy machine)
    assert torch.allclose(total, total_one, rtol=1e-9, atol=1e-9)
    assert int(total[1]) == one["eval_tokens"] == 149 - (SEQ - 4)


def test_format_metrics_mentions_every_number(model):
    from gptlab.data.tokenizers import CharTokenizer

    tok = CharTokenizer([chr(ord("a") + i) for i in range(VOCAB)])
    tokens = _tokens(100)
    m = E.evaluate(model, tokens, SEQ, 4, torch.device("cpu"), last_n=8, byte_lengths=np.ones(VOCAB), tokenizer=tok)
    text = E.format_metrics(m)
    for word in ("loss", "ppl", "bpb", "norm_ppl", "acc1", "acc10", "tokens", "chars", "bytes"):
        assert word in text


@pytest.mark.parametrize("args,word", [
    (["--seq_len", "-4"], "--seq_len -4"),
    (["--last_n", "0"], "--last_n 0"),
    (["--max_eval_steps", "0"], "--max_eval_steps 0"),
    (["--eval_batch_size", "-1"], "--eval_batch_size -1"),
    (["--streams", "0"], "--streams 0"),
    (["--json", "no/such/folder/m.json"], "its folder does not exist"),
])
def test_eval_cli_rejects_bad_arguments_before_loading(tmp_path, capsys, args, word):
    from gptlab import cli

    # The run does not exist: the argument is reported first, in one line, exit 2.
    code = cli.main(["eval", "--run", str(tmp_path / "no_run"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and word in err[0], err


def test_eval_refuses_data_of_another_tokenizer():
    run_meta = {"vocab_size": 300, "tokenizer": {"kind": "sentencepiece", "model_file": "t.model", "fingerprint": "a" * 64}}
    E.check_same_tokenizer(run_meta, run_meta, "data")  # the same: fine
    E.check_same_tokenizer(None, run_meta, "data")  # a run without data_meta.json: nothing to compare
    other = {"vocab_size": 300, "tokenizer": {"kind": "sentencepiece", "model_file": "t.model", "fingerprint": "b" * 64}}
    with pytest.raises(UserError, match="different tokenizer"):
        E.check_same_tokenizer(run_meta, other, "data")
    # Kind, vocabulary size and characters count too.
    a = {"vocab_size": 3, "tokenizer": {"kind": "char", "chars": ["a", "b", "c"]}}
    b = {"vocab_size": 3, "tokenizer": {"kind": "char", "chars": ["a", "b", "d"]}}
    E.check_same_tokenizer(a, a, "data")
    with pytest.raises(UserError, match="different tokenizer"):
        E.check_same_tokenizer(a, b, "data")
    with pytest.raises(UserError, match="different tokenizer"):
        E.check_same_tokenizer({"vocab_size": 50257, "tokenizer": {"kind": "gpt2"}}, a, "data")


def test_progress_prints_a_line_every_few_percent(capsys, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    tick = E._progress("eval test")
    for i in range(1, 201):
        tick(i, 200)
    lines = capsys.readouterr().err.strip().splitlines()
    assert 15 <= len(lines) <= 22 and lines[-1].startswith("eval test: 200/200 batches (100%")
