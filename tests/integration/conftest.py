"""Integration tests run gptlab in-process too: each test leaves torch's process-wide settings as it found them."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """The in-process runs set threads and deterministic mode for the whole process."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
