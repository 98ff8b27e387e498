"""The background prefetcher hands out batches in order, each with the sampler state before it."""

import numpy as np
import pytest

from gptlab.data.prefetch import Prefetcher
from gptlab.data.samplers import RandomWindowSampler


def test_prefetched_batches_and_states_match_inline_drawing():
    data = np.arange(10_000, dtype=np.uint16)
    a = RandomWindowSampler(data, 4, 16, seed=3)
    b = RandomWindowSampler(data, 4, 16, seed=3)

    def produce():
        st = a.state_dict()
        return st, a.next()

    pf = Prefetcher(produce, depth=2, enabled=True)
    try:
        for _ in range(10):
            state, (x, y) = pf.get()
            assert state == b.state_dict()  # the state a checkpoint would record for this batch
            bx, by = b.next()
            assert (x == bx).all() and (y == by).all()
        # resuming from a recorded state redraws the very same batch
        state, (x, _) = pf.get()
        c = RandomWindowSampler(data, 4, 16, seed=3)
        c.load_state_dict(state)
        assert (c.next()[0] == x).all()
    finally:
        pf.close()


def test_worker_errors_reach_the_consumer():
    calls = iter([1, 2])

    def produce():
        return None, next(calls)  # StopIteration on the third call

    pf = Prefetcher(produce, depth=1, enabled=True)
    assert pf.get() == (None, 1) and pf.get() == (None, 2)
    with pytest.raises(StopIteration):
        pf.get()
    pf.close()
