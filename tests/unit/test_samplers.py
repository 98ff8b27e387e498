"""Random-window and document-stream samplers (gptlab.data.samplers)."""

import io

import numpy as np
import pytest
import torch

from gptlab.data import tokens as T
from gptlab.data.samplers import RandomWindowSampler, StreamBatcher, assign_rows
from gptlab.errors import UserError


def _data(n=5000, vocab=1000):
    return (np.arange(n) * 7 % vocab).astype(np.uint16)


def test_random_window_shapes_and_shift():
    data = _data()
    s = RandomWindowSampler(data, batch_size=4, seq_len=16, seed=0)
    x, y = s.next()
    assert x.shape == (4, 16) and y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Every row is a real window of the data.
    for row in x.numpy():
        i = int(np.flatnonzero(data == row[0])[0])
        assert any(np.array_equal(data[j : j + 16], row) for j in np.flatnonzero(data == row[0]))


def test_random_window_resume_exact():
    data = _data()
    a = RandomWindowSampler(data, 3, 8, seed=5)
    for _ in range(7):
        a.next()
    state = a.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    expected = [a.next() for _ in range(5)]
    b = RandomWindowSampler(data, 3, 8, seed=5)
    b.load_state_dict(state)
    got = [b.next() for _ in range(5)]
    for (x1, y1), (x2, y2) in zip(expected, got):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    c = RandomWindowSampler(data, 3, 8, seed=5)  # without the state: different batches
    assert not torch.equal(c.next()[0], expected[0][0])


def test_random_window_ranks_differ_and_seed_check():
    data = _data()
    r0 = RandomWindowSampler(data, 4, 8, seed=1, rank=0, world_size=2).next()[0]
    r1 = RandomWindowSampler(data, 4, 8, seed=1, rank=1, world_size=2).next()[0]
    assert not torch.equal(r0, r1)
    s = RandomWindowSampler(data, 4, 8, seed=2)
    with pytest.raises(UserError, match="seed"):
        s.load_state_dict({"kind": "random_window", "step": 3, "seed": 1})


def test_random_window_on_memmap(tmp_path):
    data = _data()
    w = T.SplitWriter(tmp_path, "train", np.uint16)
    w.append(data)
    info = w.finish()
    T.write_meta(tmp_path, {"tokenizer": {"kind": "gpt2"}, "vocab_size": 1000, "dtype": "uint16", "eot_id": None,
                            "splits": {"train": info}, "source": {}})
    mm = T.load_split(tmp_path, "train")
    a = RandomWindowSampler(mm, 4, 32, seed=3).next()
    b = RandomWindowSampler(data, 4, 32, seed=3).next()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_too_little_data():
    with pytest.raises(UserError, match="too few"):
        RandomWindowSampler(np.arange(10), 2, 16, seed=0)


# ---------------------------------------------------------------- streams

EOT = 999


def _docs(seed=0, n_docs=40):
    """Documents of varied lengths, each closed by EOT, as a bin would hold them."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 900, size=int(rng.integers(20, 200))).tolist() + [EOT] for _ in range(n_docs)]
    data = np.array([t for d in docs for t in d], dtype=np.uint16)
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    return data, starts, docs


def test_assign_rows_balanced_in_order():
    lengths = np.array([5, 3, 8, 1, 1, 9, 2])
    rows = assign_rows(lengths, 3)
    assert rows == [[0, 5], [1, 3, 4, 6], [2]]  # doc 5 ties rows 0 and 1 at 5: lowest index wins
    data, starts, docs = _docs()
    rows = assign_rows(np.array([len(d) for d in docs]), 8)
    totals = [sum(len(docs[i]) for i in r) for r in rows]
    assert max(totals) - min(totals) <= max(len(d) for d in docs)  # greedy balance bound
    assert sorted(i for r in rows for i in r) == list(range(len(docs)))  # each doc exactly once
    assert all(r == sorted(r) for r in rows)  # in order within a row


def test_stream_rows_are_continuous_with_separators():
    data, starts, docs = _docs()
    B, S = 4, 16
    sb = StreamBatcher(data, starts, batch_size=B, seq_len=S, eot_id=EOT)
    rows_tokens = [[] for _ in range(B)]
    for n in range(sb.steps_per_epoch):
        (x, y), = sb.next()
        assert torch.equal(x[:, 1:], y[:, :-1])
        for r in range(B):
            if n == 0:
                rows_tokens[r].extend(x[r].tolist())
            else:  # consecutive batches continue the row: x starts at the previous last target
                assert rows_tokens[r][-1] == x[r, 0].item()
                rows_tokens[r].extend(x[r, 1:].tolist())
            rows_tokens[r].append(y[r, -1].item())
    assert sb.steps_per_epoch > 0
    for r in range(B):
        expect = [t for d in sb.rows[r] for t in docs[d]]
        assert rows_tokens[r] == expect[: len(rows_tokens[r])]  # the row's docs in order, EOT between them


def test_stream_two_ranks_equal_one_rank_with_accumulation():
    data, starts, _ = _docs(seed=1, n_docs=60)
    B, S = 8, 12
    one = StreamBatcher(data, starts, B, S, EOT, rank=0, world_size=1, micro_batches=2)
    r0 = StreamBatcher(data, starts, B, S, EOT, rank=0, world_size=2, micro_batches=1)
    r1 = StreamBatcher(data, starts, B, S, EOT, rank=1, world_size=2, micro_batches=1)
    for _ in range(5):
        mbs = one.next()
        assert len(mbs) == 2 and mbs[0][0].shape == (B // 2, S)
        rows_one = {tuple(r) for x, _ in mbs for r in x.tolist()}
        rows_two = {tuple(r) for x, _ in (r0.next() + r1.next()) for r in x.tolist()}
        assert rows_one == rows_two and len(rows_one) == B


def test_stream_resume_and_wrap():
    data, starts, _ = _docs(seed=2)
    a = StreamBatcher(data, starts, 4, 16, EOT)
    for _ in range(3):
        a.next()
    st = a.state_dict()
    exp = [a.next() for _ in range(a.steps_per_epoch + 2)]  # crosses an epoch boundary
    b = StreamBatcher(data, starts, 4, 16, EOT)
    b.load_state_dict(st)
    got = [b.next() for _ in range(len(exp))]
    assert all(torch.equal(p[0][0], q[0][0]) and torch.equal(p[0][1], q[0][1]) for p, q in zip(exp, got))
    assert b.epoch == 1


def test_stream_rows_wrap_on_their_own():
    # Was: every row restarted when the shortest ran out, dropping the tails of longer rows.
    # Now each row is the endless repetition of its own documents (the benchmark's repeat=True).
    data, starts, docs = _docs(seed=3, n_docs=13)
    B, S = 3, 16
    sb = StreamBatcher(data, starts, B, S, EOT)
    longest = int(sb.row_lengths.max())
    n = 3 * longest // S + 2  # every row wraps at least twice
    rows = [[] for _ in range(B)]
    for _ in range(n):
        (x, y), = sb.next()
        for r in range(B):
            rows[r].extend(x[r].tolist())
    for r in range(B):
        one = [t for d in sb.rows[r] for t in docs[d]]
        expect = (one * (n * S // len(one) + 1))[: n * S]
        assert rows[r] == expect
    assert len(set(int(L) for L in sb.row_lengths)) > 1  # rows of different lengths each wrap at their own point


def test_stream_divisibility_errors():
    data, starts, _ = _docs()
    with pytest.raises(UserError, match="divisible by world size"):
        StreamBatcher(data, starts, 6, 8, EOT, rank=0, world_size=4)
    with pytest.raises(UserError, match="gradient_accumulation_steps"):
        StreamBatcher(data, starts, 8, 8, EOT, rank=0, world_size=2, micro_batches=3)
    with pytest.raises(UserError, match="shortest row"):
        StreamBatcher(data, starts, 64, 512, EOT)  # more rows than documents: some rows are empty
