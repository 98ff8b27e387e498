"""Batch samplers. All yield CPU int64 tensors (x, y) of shape (rows, seq_len),
y being x shifted by one token. They are deterministic and resumable: their
state_dict() holds plain ints that torch.load(weights_only=True) accepts.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np
import torch

from gptlab.errors import UserError


def _as_reopenable(data):
    """Remember how to re-open a memmap instead of holding one open.

    Pages read through a long-lived np.memmap stay mapped (and counted in the
    process's RSS) for as long as the map lives, so over a long run the whole
    corpus would appear resident. Re-opening the map per batch drops those
    pages each time; opening a map is microseconds.
    """
    if isinstance(data, np.memmap) and getattr(data, "filename", None):
        return (str(data.filename), data.dtype, int(data.offset), data.shape)
    return None


def _open(reopen, data):
    if reopen is None:
        return data
    path, dtype, offset, shape = reopen
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _gather(data: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    idx = starts[:, None] + np.arange(length, dtype=np.int64)[None, :]
    return np.asarray(data[idx], dtype=np.int64)


def _to_xy(block: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(block)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


class RandomWindowSampler:
    """Random windows of seq_len + 1 tokens anywhere in one stream.

    Batch k of rank r draws its offsets from a generator seeded by
    (seed, rank, k): each rank has its own stream, and the whole state is the
    batch counter, so resuming is exact by construction.
    """

    def __init__(self, data, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size <= 0 or seq_len <= 0:
            raise UserError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        n = len(data)
        if n < seq_len + 2:
            raise UserError(
                f"the data has {n} tokens, too few for windows of seq_len {seq_len} + 1: use a smaller seq_len/block_size or more data"
            )
        self._reopen = _as_reopenable(data)
        self._data = None if self._reopen else data
        self.n = n
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.step = 0

    def offsets(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.rank, step])
        return rng.integers(0, self.n - self.seq_len, size=self.batch_size, dtype=np.int64)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        data = _open(self._reopen, self._data)
        block = _gather(data, self.offsets(self.step), self.seq_len + 1)
        self.step += 1
        return _to_xy(block)

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def state_dict(self) -> dict:
        return {"kind": "random_window", "step": self.step, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind", "random_window") != "random_window":
            raise UserError(f"sampler state is for a {state.get('kind')!r} sampler, not random windows: use the same data.sampler setting as the saved run")
        self.step = int(state["step"])
        if "seed" in state and int(state["seed"]) != self.seed:
            raise UserError(f"sampler state was saved with seed {state['seed']} but this run has seed {self.seed}: resume with the same seed")


class FixedBatches:
    """The same held-out batches on every pass (for in-training eval)."""

    def __init__(self, data, batch_size: int, seq_len: int, n_batches: int, seed: int = 1337):
        self.sampler = RandomWindowSampler(data, batch_size, seq_len, seed=seed)
        self.n_batches = n_batches

    def __len__(self):
        return self.n_batches

    def __iter__(self):
        s = self.sampler
        for k in range(self.n_batches):
            data = _open(s._reopen, s._data)
            yield _to_xy(_gather(data, s.offsets(k), s.seq_len + 1))


def eval_batches(data, batch_size: int, seq_len: int, n_batches: int, seed: int = 1337) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n_batches fixed random-window batches; identical on every call with the same arguments."""
    return list(FixedBatches(data, batch_size, seq_len, n_batches, seed))


def assign_rows(doc_lengths: np.ndarray, n_rows: int) -> list[list[int]]:
    """Deal documents in order, each to the row with the smallest total so far
    (ties to the lowest row index). Returns the doc indices of each row."""
    heap = [(0, r) for r in range(n_rows)]
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    for d, L in enumerate(np.asarray(doc_lengths, dtype=np.int64).tolist()):
        total, r = heapq.heappop(heap)
        rows[r].append(d)
        heapq.heappush(heap, (total + L, r))
    return rows


class StreamBatcher:
    """Document streams, the Languini way.

    Documents are dealt in order to `batch_size` rows (global, across ranks),
    each to the row with the smallest total so far. Each row is one continuous
    stream of its documents; the bins already hold the end-of-document token
    after every document, so `<D>` sits between documents. Batch k takes
    positions [k*seq_len, k*seq_len + seq_len + 1) of every row: consecutive
    batches continue each row and overlap by the one target token. No shuffling.

    Rank r owns rows i with i % world_size == r; those rows are cut into
    `micro_batches` consecutive micro-batches, so N ranks together compute the
    same rows as one rank with N-fold accumulation.

    An epoch ends when the shortest row cannot fill another window (the
    balanced dealing keeps what is left of longer rows small). Then `next()`
    starts the next epoch from position 0 if wrap=True, else raises
    StopIteration. `next()` returns the list of micro-batches (x, y) of one
    optimiser step.
    """

    def __init__(self, data, doc_offsets, batch_size: int, seq_len: int, eot_id: int | None = None,
                 rank: int = 0, world_size: int = 1, micro_batches: int = 1, wrap: bool = True):
        if batch_size % world_size:
            raise UserError(f"train_batch_size {batch_size} is not divisible by world size {world_size}: pick a multiple")
        per_rank = batch_size // world_size
        if per_rank % micro_batches:
            raise UserError(
                f"train_batch_size {batch_size} / world size {world_size} = {per_rank} rows is not divisible by "
                f"gradient_accumulation_steps {micro_batches}: pick values that divide"
            )
        n = len(data)
        starts = np.asarray(doc_offsets if doc_offsets is not None else [0], dtype=np.int64)
        ends = np.append(starts[1:], n)
        lengths = ends - starts
        self._reopen = _as_reopenable(data)
        self._data = None if self._reopen else data
        self.batch_size, self.seq_len, self.eot_id = batch_size, seq_len, eot_id
        self.rank, self.world_size, self.micro_batches, self.wrap = rank, world_size, micro_batches, wrap
        self.rows = assign_rows(lengths, batch_size)
        self.row_lengths = np.array([int(lengths[r].sum()) for r in self.rows], dtype=np.int64)
        self.steps_per_epoch = int((self.row_lengths.min() - 1) // seq_len) if batch_size else 0
        if self.steps_per_epoch <= 0:
            raise UserError(
                f"{len(starts)} documents ({n} tokens) spread over {batch_size} rows leave the shortest row "
                f"{int(self.row_lengths.min())} tokens, less than seq_len {seq_len} + 1: use fewer rows, a shorter seq_len or more data"
            )
        self.my_rows = [i for i in range(batch_size) if i % world_size == rank]
        # Per owned row: data start of each of its docs, and the row position where each doc begins.
        self._row_maps = []
        for i in self.my_rows:
            d = np.array(self.rows[i], dtype=np.int64)
            L = lengths[d]
            pos = np.concatenate([[0], np.cumsum(L)[:-1]]).astype(np.int64)
            self._row_maps.append((starts[d], pos))
        self.epoch = 0
        self.step = 0

    def _row_indices(self, j: int, p0: int, length: int) -> np.ndarray:
        dstart, pos = self._row_maps[j]
        p = p0 + np.arange(length, dtype=np.int64)
        k = np.searchsorted(pos, p, side="right") - 1
        return dstart[k] + (p - pos[k])

    def next(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.step >= self.steps_per_epoch:
            if not self.wrap:
                raise StopIteration
            self.epoch += 1
            self.step = 0
        data = _open(self._reopen, self._data)
        p0 = self.step * self.seq_len
        idx = np.stack([self._row_indices(j, p0, self.seq_len + 1) for j in range(len(self.my_rows))])
        block = np.asarray(data[idx], dtype=np.int64)
        self.step += 1
        mb = len(self.my_rows) // self.micro_batches
        return [_to_xy(block[m * mb : (m + 1) * mb]) for m in range(self.micro_batches)]

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def state_dict(self) -> dict:
        return {"kind": "stream", "epoch": self.epoch, "step": self.step, "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind", "stream") != "stream":
            raise UserError(f"sampler state is for a {state.get('kind')!r} sampler, not document streams: use the same data.sampler setting as the saved run")
        for k in ("batch_size", "seq_len"):
            if k in state and int(state[k]) != getattr(self, k):
                raise UserError(f"stream state was saved with {k} {state[k]} but this run has {getattr(self, k)}: resume with the same {k}")
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
