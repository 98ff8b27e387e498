"""Batch samplers: CPU int64 (x, y) of shape (rows, seq_len), y = x shifted by one token; deterministic,
resumable from a state_dict() of plain ints (torch.load(weights_only=True) accepts it)."""

from __future__ import annotations

import heapq

import numpy as np
import torch

from gptlab.data.tokens import check_unchanged, file_key
from gptlab.errors import UserError


def _as_reopenable(data):
    """How to re-open a memmap per batch (pages read through a long-lived map stay counted in RSS), and
    the file's key then: a bin replaced or rewritten mid-run stops the run in one line."""
    if isinstance(data, np.memmap) and getattr(data, "filename", None):
        return (str(data.filename), data.dtype, int(data.offset), data.shape, file_key(data.filename))
    return None


def _open(reopen, data):
    if reopen is None:
        return data
    path, dtype, offset = reopen[:3]
    check_unchanged(path, reopen[4])
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=reopen[3])


def _to_xy(block: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(block)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


class RandomWindowSampler:
    """Random windows of seq_len + 1 tokens anywhere in one stream. Batch k of rank r draws its offsets
    from a generator seeded by (seed, rank, k): the whole state is the batch counter, so resuming is
    exact."""

    def __init__(self, data, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if batch_size <= 0 or seq_len <= 0:
            raise UserError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        n = len(data)
        if n < seq_len + 2:
            raise UserError(
                f"the data has {n} tokens, too few for windows of seq_len {seq_len} + 1: use a smaller "
                "seq_len/block_size or more data"
            )
        self._reopen = _as_reopenable(data)
        self._data = None if self._reopen else data
        self.n, self.batch_size, self.seq_len, self.seed = n, batch_size, seq_len, int(seed)
        self.rank, self.world_size, self.step = rank, world_size, 0

    def offsets(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.rank, step])
        return rng.integers(0, self.n - self.seq_len, size=self.batch_size, dtype=np.int64)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        data = _open(self._reopen, self._data)
        # (batch, seq_len + 1) data indices of this batch
        idx = self.offsets(self.step)[:, None] + np.arange(self.seq_len + 1, dtype=np.int64)
        block = np.asarray(data[idx], dtype=np.int64)
        self.step += 1
        return _to_xy(block)

    def state_dict(self) -> dict:
        return {"kind": "random_window", "step": self.step, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "random_window":
            raise UserError(f"sampler state is for a {state.get('kind')!r} sampler, not random windows: "
                            "use the same data.sampler setting as the saved run")
        self.step = int(state["step"])
        if int(state["seed"]) != self.seed:
            raise UserError(f"sampler state was saved with seed {state['seed']} but this run has seed "
                            f"{self.seed}: resume with the same seed")


def assign_rows(doc_lengths: np.ndarray, n_rows: int) -> list[list[int]]:
    """Deal documents in order, each to the row with the smallest total so far
    (ties to the lowest row index). Returns the doc indices of each row."""
    heap = [(0, r) for r in range(n_rows)]
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    for doc, L in enumerate(np.asarray(doc_lengths, dtype=np.int64).tolist()):
        total, r = heapq.heappop(heap)
        rows[r].append(doc)
        heapq.heappush(heap, (total + L, r))
    return rows


class DocRows:
    """Documents dealt to rows (assign_rows); each row is the stream of its documents.
    `indices(row, p0, length, wrap)` maps row positions p0.. to data indices; past the row's end
    it starts over with the row's first document (wrap) or gives -1."""

    def __init__(self, doc_offsets, n_tokens: int, n_rows: int, data=None, eot_id: int | None = None):
        starts = np.asarray(doc_offsets if doc_offsets is not None else [0], dtype=np.int64)
        lengths = np.append(starts[1:], n_tokens) - starts
        self.n_docs = len(starts)
        # The benchmark deals by document length without the separator it appends itself.
        deal = lengths
        if data is not None and eot_id is not None and n_tokens:
            ends = np.asarray(data[np.maximum(starts + lengths - 1, 0)], dtype=np.int64)
            deal = lengths - ((ends == eot_id) & (lengths > 0))
        self.rows = assign_rows(deal, n_rows)
        self.lengths = np.array([int(lengths[r].sum()) for r in self.rows], dtype=np.int64)
        # Per row: data start of each of its docs, and the row position where each doc begins.
        self._maps = []
        for r in self.rows:
            doc_ids = np.array(r, dtype=np.int64)
            pos = np.concatenate([[0], np.cumsum(lengths[doc_ids])[:-1]]).astype(np.int64)
            self._maps.append((starts[doc_ids], pos))

    def indices(self, row: int, p0: int, length: int, wrap: bool) -> np.ndarray:
        dstart, pos = self._maps[row]
        L = int(self.lengths[row])
        p = p0 + np.arange(length, dtype=np.int64)
        past = p >= L
        if wrap:
            p = p % L
        q = np.minimum(p, L - 1)
        k = np.searchsorted(pos, q, side="right") - 1
        idx = dstart[k] + (q - pos[k])
        if not wrap:
            idx[past] = -1
        return idx


class StreamBatcher:
    """Document streams, the Languini way: documents dealt to `batch_size` global rows (DocRows);
    batch k is positions [k*seq_len, k*seq_len + seq_len + 1) of every row, no shuffling. Rank r owns
    rows i % world_size == r, cut into `micro_batches`; `next()` returns one optimiser step's (x, y)
    list. Each row wraps on its own (the benchmark's repeat=True); an epoch ends when the shortest row
    first wraps."""

    def __init__(self, data, doc_offsets, batch_size: int, seq_len: int, eot_id: int | None = None,
                 rank: int = 0, world_size: int = 1, micro_batches: int = 1):
        if batch_size % world_size:
            raise UserError(f"train_batch_size {batch_size} is not divisible by world size "
                            f"{world_size}: pick a multiple")
        per_rank = batch_size // world_size
        if per_rank % micro_batches:
            raise UserError(
                f"train_batch_size {batch_size} / world size {world_size} = {per_rank} rows is not "
                f"divisible by gradient_accumulation_steps {micro_batches}: pick values that divide"
            )
        n = len(data)
        self._reopen = _as_reopenable(data)
        self._data = None if self._reopen else data
        self.batch_size, self.seq_len, self.eot_id = batch_size, seq_len, eot_id
        self.rank, self.world_size, self.micro_batches = rank, world_size, micro_batches
        self.doc_rows = DocRows(doc_offsets, n, batch_size, data, eot_id)
        self.rows, self.row_lengths = self.doc_rows.rows, self.doc_rows.lengths
        shortest = int(self.row_lengths.min())
        if shortest < 2:
            raise UserError(
                f"{self.doc_rows.n_docs} documents ({n} tokens) spread over {batch_size} rows leave the "
                f"shortest row {shortest} tokens, too few to stream: use fewer rows, a shorter seq_len "
                "or more data"
            )
        self.steps_per_epoch = max(1, (shortest - 1) // seq_len)
        self.my_rows = [i for i in range(batch_size) if i % world_size == rank]
        self.batches = 0  # batches taken so far: the whole position of every row

    @property
    def epoch(self) -> int:
        return self.batches // self.steps_per_epoch

    @property
    def step(self) -> int:
        return self.batches % self.steps_per_epoch

    def next(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        data = _open(self._reopen, self._data)
        p0 = self.batches * self.seq_len
        # (rows, seq_len + 1) data indices of this batch
        idx = np.stack([self.doc_rows.indices(r, p0, self.seq_len + 1, wrap=True) for r in self.my_rows])
        block = np.asarray(data[idx], dtype=np.int64)
        self.batches += 1
        mb = len(self.my_rows) // self.micro_batches
        return [_to_xy(block[m * mb : (m + 1) * mb]) for m in range(self.micro_batches)]

    def state_dict(self) -> dict:
        return {"kind": "stream", "epoch": self.epoch, "step": self.step, "batches": self.batches,
                "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "stream":
            raise UserError(f"sampler state is for a {state.get('kind')!r} sampler, not document "
                            "streams: use the same data.sampler setting as the saved run")
        for k in ("batch_size", "seq_len"):
            if int(state[k]) != getattr(self, k):
                raise UserError(f"stream state was saved with {k} {state[k]} but this run has "
                                f"{getattr(self, k)}: resume with the same {k}")
        self.batches = int(state["batches"])
