"""Normalised perplexity, characters and bytes exactly as the Languini benchmark counts them,
on accented, curly-quoted and CJK text, with each tokenizer (char, GPT-2 BPE, SentencePiece).

The reference below re-enacts the benchmark's loader and trainer step by step from their
behaviour (documents dealt to the queue with the fewest tokens, a separator after every
document, windows of seq_len + 1 advancing by last_n while two tokens remain, padding,
the last last_n targets of every window, len(decode(row)) per window row), independently
of gptlab's DocRows/EvalPlan.
"""

from __future__ import annotations

import io
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptlab import evaluate as E
from gptlab.data import tokenizers as T
from gptlab.data.samplers import StreamBatcher

DOCS = ["Zürich — 北京 ☃ snowman ✓ done", "It’s", "naïve café “quoted” text — Ærøskøbing 東京",
        "plain words, then 北京 again ✓", "It’s a “test” — ok"] * 3
SEQ = 16


class PositionBigram(torch.nn.Module):
    """Cheap stand-in for a GPT over any vocabulary: logits depend on the current token and
    its position in the window, so a window placed differently scores differently."""

    def __init__(self, vocab: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.config = types.SimpleNamespace(vocab_size=vocab)
        self.emb = torch.randn(101, 8, generator=g)
        self.pos = torch.randn(SEQ, 8, generator=g)
        self.out = torch.randn(8, vocab, generator=g) * 2

    def forward(self, idx):
        return (self.emb[idx % 101] + self.pos[: idx.shape[1]]) @ self.out


def _sp_tokenizer(tmp_path):
    """A SentencePiece model with the benchmark's settings (<D> user-defined, byte fallback)."""
    spm = pytest.importorskip("sentencepiece")
    lines = [f"{d} {i}" for i in range(30) for d in DOCS[2:5]]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="bpe", vocab_size=320, byte_fallback=True,
        user_defined_symbols=["<D>"], pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        split_digits=True, hard_vocab_limit=False, character_coverage=0.98, minloglevel=2)
    path = tmp_path / "sp.model"
    path.write_bytes(buf.getvalue())
    tok = T.SentencePieceTokenizer(path)
    assert tok.eot_id == 2 and tok.decode([2]) == "<D>"
    return tok, 2


def _gpt2_tokenizer(tmp_path):
    try:
        T.find_gpt2_ranks(allow_fetch=True)
    except Exception:  # noqa: BLE001 - no vocabulary on this machine
        pytest.skip("GPT-2 vocabulary not available offline")
    return T.GPT2Tokenizer(), 50256


def _char_tokenizer(tmp_path):
    return T.CharTokenizer("".join(DOCS) + "\n"), None


TOKENIZERS = {"char": _char_tokenizer, "gpt2": _gpt2_tokenizer, "sentencepiece": _sp_tokenizer}


def _bins(tok, eod):
    """The split as gptlab stores it: documents in order, each followed by eod; doc starts."""
    docs = [tok.encode(d + ("\n" if eod is None else "")) + ([eod] if eod is not None else []) for d in DOCS]
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    return np.array([t for d in docs for t in d], dtype=np.int64), starts


def benchmark_reference(model, tok, eod, seq_len, last_n, streams, max_steps=None):
    """Total NLL, scored tokens and decoded characters, the benchmark's way."""
    docs = [tok.encode(d + ("\n" if eod is None else "")) for d in DOCS]
    queues, loads = [[] for _ in range(streams)], [0] * streams
    for d in docs:  # each document to the queue with the fewest tokens (separators not counted)
        q = loads.index(min(loads))
        queues[q].append(d)
        loads[q] += len(d)
    rows = [[t for d in q for t in d + ([eod] if eod is not None else [])] for q in queues]
    nll, n_tok, n_char, k = 0.0, 0, 0, 0
    while max_steps is None or k < max_steps:
        live = [r for r in rows if len(r) - k * last_n >= 2]
        if not live:
            break
        for r in live:
            seq = r[k * last_n: k * last_n + seq_len + 1]
            real = len(seq) - 1  # targets that are data, not padding
            x = torch.tensor((seq + [0] * (seq_len + 1 - len(seq)))[:seq_len])  # zero-padded, last dropped
            y = seq[1:] + [None] * (seq_len - real)
            logits = model(x[None])[0].float()
            for j in range(seq_len - last_n, seq_len):
                if y[j] is not None:
                    nll += F.cross_entropy(logits[j][None], torch.tensor([y[j]])).item()
                    n_tok += 1
            n_char += len(tok.decode([t for t in y[seq_len - last_n:] if t is not None]))
        k += 1
    return nll, n_tok, n_char


@pytest.mark.parametrize("kind", list(TOKENIZERS))
@pytest.mark.parametrize("last_n,streams,max_steps", [(4, 1, None), (8, 1, None), (16, 1, None), (16, 3, None), (16, 3, 2), (4, 2, 5)])
def test_normalised_ppl_is_the_benchmarks(tmp_path, kind, last_n, streams, max_steps):
    tok, eod = TOKENIZERS[kind](tmp_path)
    data, starts = _bins(tok, eod)
    model = PositionBigram(tok.vocab_size)
    nll, n_tok, n_char = benchmark_reference(model, tok, eod, SEQ, last_n, streams, max_steps)
    m = E.evaluate(model, data, SEQ, 5, torch.device("cpu"), last_n=last_n, max_batches=max_steps, eot_id=eod,
                   tokenizer=tok, byte_lengths=T.token_byte_lengths(tok), doc_offsets=starts,
                   streams=streams)
    assert m["eval_tokens"] == n_tok > 0
    assert m["eval_chars"] == n_char
    assert m["total_loss"] == pytest.approx(nll, rel=1e-6)
    assert m["normalised_ppl"] == pytest.approx(math.exp(nll / n_char), rel=1e-6)
    assert m["normalised_loss"] == pytest.approx(nll / n_char, rel=1e-6)


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_byte_counts_are_true_utf8(tmp_path, kind):
    tok, eod = TOKENIZERS[kind](tmp_path)
    lengths = T.token_byte_lengths(tok)
    assert len(lengths) == tok.vocab_size
    for text in DOCS[:5] + ["".join(DOCS)]:
        ids = tok.encode(text)
        assert int(lengths[ids].sum()) == len(tok.decode(ids).encode("utf-8")) == len(text.encode("utf-8"))
    assert int(lengths[tok.encode("It’s")].sum()) == 6  # was 9: lone pieces of ’ counted as U+FFFD
    assert int(lengths[tok.encode(DOCS[0])].sum()) == 39  # was 51 (GPT-2) / 57 (SentencePiece)
    if kind == "gpt2":
        assert lengths[50256] == 0  # <|endoftext|> stands for no text
    if kind == "sentencepiece":
        assert lengths[0] == lengths[1] == 0 and lengths[2] == 3  # pad, unk; <D> decodes to 3 characters
    # Over a whole split the counted bytes are those of the decoded targets (separators as counted).
    data, starts = _bins(tok, eod)
    m = E.evaluate(PositionBigram(tok.vocab_size), data, SEQ, 4, torch.device("cpu"), last_n=SEQ, eot_id=eod,
                   byte_lengths=lengths, tokenizer=tok)
    targets = data[1:]
    text_ids = [int(t) for t in targets if not (kind == "gpt2" and t == eod)]
    assert m["eval_bytes"] == len(tok.decode(text_ids).encode("utf-8"))
    assert m["bpb"] == pytest.approx(m["total_loss"] / m["eval_bytes"] / math.log(2), rel=1e-12)


def test_characters_are_counted_per_window_not_per_token(tmp_path):
    """A window edge inside a multi-byte character decodes to replacement characters, as the
    benchmark counts them: the character count is not a per-token sum."""
    tok, eod = _sp_tokenizer(tmp_path)
    data, starts = _bins(tok, eod)
    plan = E.eval_plan(len(data), SEQ, 4, starts, 1, data=data, eot_id=eod)
    counts = E.count_targets(plan, data, tok, T.token_byte_lengths(tok))
    whole = len(tok.decode(data[SEQ - 4 + 1:]))
    assert counts["eval_chars"] != whole  # some edge cut a character
    _, _, ref = benchmark_reference(PositionBigram(tok.vocab_size), tok, eod, SEQ, 4, 1)
    assert counts["eval_chars"] == ref


def test_training_rows_are_the_benchmarks_repeating_queues(tmp_path):
    """StreamBatcher rows = the benchmark's repeat=True queues (dealt without separators)."""
    tok, eod = _sp_tokenizer(tmp_path)
    data, starts = _bins(tok, eod)
    docs = [tok.encode(d) for d in DOCS]
    queues, loads = [[] for _ in range(3)], [0] * 3
    for d in docs:
        q = loads.index(min(loads))
        queues[q].append(d)
        loads[q] += len(d)
    rows = [[t for d in q for t in d + [eod]] for q in queues]
    sb = StreamBatcher(data, starts, 3, SEQ, eod)
    for k in range(12):
        (x, y), = sb.next()
        for r in range(3):
            want = [rows[r][(k * SEQ + j) % len(rows[r])] for j in range(SEQ + 1)]
            assert x[r].tolist() == want[:-1] and y[r].tolist() == want[1:]
