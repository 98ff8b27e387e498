"""The one eval routine: which targets it scores, from which context, and the numbers it reports.

The reference here does not use window_plan or build_batch: for every target position t
it derives the context the protocol promises (window 0 for t <= seq_len, else the window
of seq_len tokens that ends at the end of t's last_n-block) and runs the model on exactly
that context. A plan that scores a token twice, skips one, or predicts it from a
different (even one token shorter) context gives a different total NLL.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptlab import evaluate as E
from gptlab.config import build_config
from gptlab.errors import UserError
from gptlab.loss import logits_and_loss
from gptlab.model import GPT, GPTShape

VOCAB = 37
SEQ = 16


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forwards: see conftest


@pytest.fixture(scope="module")
def model():
    cfg = build_config("mini", overrides=dict(n_layer=2, n_embd=32, mlp_dim=64, n_head=2, head_dim=16,
                                              block_size=SEQ, vocab_size=VOCAB, last_n=0))
    torch.manual_seed(0)
    m = GPT(GPTShape.from_config(cfg.model)).init_weights().eval()
    # Random init gives near-uniform predictions that hardly depend on context; larger
    # weights make the context (and position) matter, so a wrong context shows.
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(8.0)
    return m


def _tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n).astype(np.uint16)


def reference_context_start(t: int, seq_len: int, last_n: int) -> int:
    """Start of the context the protocol assigns to target position t (1-based targets)."""
    if t <= seq_len:
        return 0  # the first window scores all of its targets
    # Windows k>=1 start at k*last_n and score targets k*last_n+seq_len-last_n+1 .. k*last_n+seq_len.
    k = math.ceil((t - seq_len) / last_n)
    return k * last_n


@torch.no_grad()
def brute_force(model, tokens: np.ndarray, seq_len: int, last_n: int, byte_lengths=None) -> dict:
    toks = torch.as_tensor(tokens.astype(np.int64))
    nll = hit1 = hit10 = nbytes = 0.0
    contexts = []
    for t in range(1, len(tokens)):
        s = reference_context_start(t, seq_len, last_n)
        assert 0 < t - s <= seq_len
        contexts.append(t - s)
        logits, _ = logits_and_loss(model, toks[s:t][None])
        last = logits[0, -1].float()
        nll += F.cross_entropy(last[None], toks[t][None], reduction="sum").item()
        top = last.topk(10).indices
        hit1 += float(top[0] == toks[t])
        hit10 += float((top == toks[t]).any())
        if byte_lengths is not None:
            nbytes += byte_lengths[int(toks[t])]
    return {"nll": nll, "tokens": len(tokens) - 1, "acc1": hit1 / (len(tokens) - 1),
            "acc10": hit10 / (len(tokens) - 1), "bytes": nbytes, "contexts": contexts}


def scored_positions(n: int, seq_len: int, last_n: int) -> list[tuple[int, int]]:
    """(target position, context length) for every target the plan scores."""
    out = []
    tokens = np.arange(n) % 60000  # token value = its position, so targets reveal where they came from
    starts = E.window_plan(n, seq_len, last_n)
    _, y = E.build_batch(tokens.astype(np.int64), starts, seq_len, last_n)
    for row, s in zip(y.numpy(), starts):
        for j, v in enumerate(row):
            if v >= 0:
                assert v == s + j + 1  # target j of the window at s is the token at s+j+1
                out.append((int(v), j + 1))
    return out


@pytest.mark.parametrize("n", [2, 5, 16, 17, 18, 33, 48, 49, 50, 100, 203, 1000])
@pytest.mark.parametrize("last_n", [1, 4, 8, 16])
def test_every_target_scored_once_with_enough_context(n, last_n):
    got = scored_positions(n, SEQ, last_n)
    positions = [t for t, _ in got]
    assert sorted(positions) == list(range(1, n)), "every target exactly once, no padding"
    for t, ctx in got:
        if t <= SEQ:
            assert ctx == t  # first window: all it has
        else:
            assert ctx >= SEQ - last_n  # the protocol's promise
            assert ctx == t - reference_context_start(t, SEQ, last_n)


def test_first_window_scores_all_targets():
    tokens = _tokens(200)
    starts = E.window_plan(len(tokens), SEQ, 4)
    assert starts[0] == 0
    _, y = E.build_batch(tokens, starts[:2], SEQ, 4)
    assert (y[0] >= 0).all()
    assert (y[1, : SEQ - 4] == -1).all() and (y[1, SEQ - 4:] >= 0).all()


@pytest.mark.parametrize("n,last_n", [(203, 4), (203, 8), (203, 16), (120, 1), (12, 8), (17, 4)])
def test_evaluate_matches_brute_force(model, n, last_n):
    tokens = _tokens(n, seed=n + last_n)
    lengths = np.random.default_rng(1).integers(0, 5, size=VOCAB).astype(np.float64)  # some tokens 0 bytes
    ref = brute_force(model, tokens, SEQ, last_n, lengths)
    for batch_size in (1, 3, 64):  # batching (and the padded last batch) must not change anything
        m = E.evaluate(model, tokens, SEQ, batch_size, torch.device("cpu"), last_n=last_n, byte_lengths=lengths)
        assert m["tokens"] == ref["tokens"] == n - 1
        assert m["loss"] * m["tokens"] == pytest.approx(ref["nll"], rel=1e-5)
        assert m["ppl"] == pytest.approx(math.exp(ref["nll"] / ref["tokens"]), rel=1e-5)
        assert m["acc1"] == pytest.approx(ref["acc1"]) and m["acc10"] == pytest.approx(ref["acc10"])
        assert m["bytes"] == ref["bytes"]
        assert m["loss_per_byte"] == pytest.approx(ref["nll"] / ref["bytes"], rel=1e-5)
        assert m["bpb"] == pytest.approx(ref["nll"] / ref["bytes"] / math.log(2), rel=1e-5)
        assert m["normalised_ppl"] == pytest.approx(math.exp(ref["nll"] / ref["bytes"]), rel=1e-5)
    assert all(c >= SEQ - last_n for c in ref["contexts"][SEQ:])


def test_brute_force_can_tell_contexts_apart(model):
    """Guard for the reference itself: one token less context gives another NLL."""
    tokens = _tokens(203, seed=3)
    good = E.evaluate(model, tokens, SEQ, 8, torch.device("cpu"), last_n=4)
    ref = brute_force(model, tokens, SEQ, 4)
    assert good["loss"] * good["tokens"] == pytest.approx(ref["nll"], rel=1e-5)
    # last_n=8 scores the same tokens from shorter contexts: a different total.
    other = E.evaluate(model, tokens, SEQ, 8, torch.device("cpu"), last_n=8)
    assert abs(other["loss"] - good["loss"]) > 1e-3


def test_overlap_helps_a_model_that_uses_context(model):
    """last_n = seq_len (no overlap) starts every window cold; the metric must see that."""
    tokens = _tokens(400, seed=5)
    full = brute_force(model, tokens, SEQ, SEQ)
    m = E.evaluate(model, tokens, SEQ, 8, torch.device("cpu"), last_n=SEQ)
    assert m["loss"] * m["tokens"] == pytest.approx(full["nll"], rel=1e-5)
    assert m["windows"] == math.ceil((400 - 1) / SEQ)


@pytest.mark.parametrize("last_n", [3, 5, 7, 17, -1])
def test_last_n_must_divide_seq_len(model, last_n):
    tokens = _tokens(100)
    if last_n == -1:  # negative means "all" in window_plan; evaluate treats 0 the same way
        assert list(E.window_plan(100, SEQ, last_n)) == list(E.window_plan(100, SEQ, SEQ))
        return
    with pytest.raises(UserError, match="last_n"):
        E.window_plan(100, SEQ, last_n)
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
    tokens = _tokens(9)  # shorter than one window: 8 targets, 8 padded slots
    m = E.evaluate(model, tokens, SEQ, 4, torch.device("cpu"), last_n=4)
    ref = brute_force(model, tokens, SEQ, 4)
    assert m["tokens"] == 8 and m["windows"] == 1
    assert m["loss"] * 8 == pytest.approx(ref["nll"], rel=1e-5)


class _Spy:
    """Wraps build_batch to record the window starts each evaluate() call uses."""

    def __init__(self, monkeypatch):
        self.calls: list[list[int]] = []
        self.current: list[int] = []
        real = E.build_batch

        def spy(tokens, starts, seq_len, last_n):
            self.current.extend(int(s) for s in starts)
            return real(tokens, starts, seq_len, last_n)

        monkeypatch.setattr(E, "build_batch", spy)

    def run(self, *args, **kwargs):
        self.current = []
        out = E.evaluate(*args, **kwargs)
        self.calls.append(self.current)
        return out


def test_capped_eval_uses_the_same_windows_every_call(model, monkeypatch):
    tokens = _tokens(2000, seed=7)
    spy = _Spy(monkeypatch)
    dev = torch.device("cpu")
    model.train()  # the in-training eval is called on a training model
    a = spy.run(model, tokens, SEQ, 4, dev, last_n=8, max_batches=3)
    b = spy.run(model, tokens, SEQ, 4, dev, last_n=8, max_batches=3)
    assert model.training, "evaluate restores the training mode"
    model.eval()
    assert a == b
    assert spy.calls[0] == spy.calls[1]
    starts = spy.calls[0]
    plan = E.window_plan(len(tokens), SEQ, 8)
    assert len(starts) == len(set(starts)) == 12 == a["windows"]
    assert set(starts) <= set(plan.tolist())
    # Spread over the whole split, not just its beginning.
    assert starts[0] == plan[0] and starts[-1] == plan[-1]
    # A capped eval scores exactly the targets of those windows (the last one may end
    # past the stream's end: its padding is not counted).
    last_target = len(tokens) - 1
    expected = sum(SEQ if s == 0 else min(8, last_target - (s + SEQ - 8)) for s in starts)
    assert a["tokens"] == expected


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
    assert int(total[1]) == one["tokens"] == 149


def test_format_metrics_mentions_every_number(model):
    tokens = _tokens(100)
    lengths = np.ones(VOCAB)
    m = E.evaluate(model, tokens, SEQ, 4, torch.device("cpu"), last_n=8, byte_lengths=lengths)
    text = E.format_metrics(m)
    for word in ("loss", "ppl", "bpb", "norm_ppl", "acc1", "acc10", "tokens", "bytes"):
        assert word in text
