"""Shared fixtures: a tiny model config and a tiny prepared character dataset."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Tests run on CPU, deterministic, and with few threads: CI has 2 cores.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny CPU models: on a busy 2-core machine one intra-op thread is far faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model_config():
    from gptlab.config_files import build_config

    return build_config("baby", overrides=dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40,
                                                dropout=0.0, batch_size=4))


@pytest.fixture
def tiny_model(tiny_model_config):
    from gptlab.model import GPT

    torch.manual_seed(0)
    return GPT(tiny_model_config.model).init_weights().eval()


SAMPLE_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
) * 60


@pytest.fixture
def char_dataset(tmp_path):
    """A prepared char-level dataset folder (train/val bins + meta.json)."""
    from gptlab.data.prepare import prepare

    src = tmp_path / "input.txt"
    src.write_text(SAMPLE_TEXT, encoding="utf-8")
    out = tmp_path / "data" / "tiny_char"
    prepare("text", input=src, tokenizer="char", out=out)
    return out


def run_cli(args: list[str], cwd: Path | None = None, timeout: int = 300, env: dict | None = None):
    """Run `python -m gptlab ARGS` in a subprocess; returns CompletedProcess."""
    import subprocess

    e = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "gptlab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=e)
