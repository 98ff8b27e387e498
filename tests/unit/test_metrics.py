"""MFU: one formula, a peak table that never guesses."""

from dataclasses import replace

import pytest
import torch

from gptlab.config_files import build_config
from gptlab.metrics import mfu, peak_for_name
from gptlab.model import GPT


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989.4e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A10G", 70e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362.05e12),
    ("NVIDIA L40", None), ("Tesla T4", None), ("NVIDIA GeForce GTX 1080", None),
])
def test_peak_table_matches_whole_names_and_never_guesses(name, peak):
    assert peak_for_name(name) == peak


def test_mfu_uses_the_model_flops_formula():
    with torch.device("meta"):
        fpt = GPT(replace(build_config("gpt2").model, vocab_size=50257)).flops_per_token()
    # 6N + 12*L*H*Q*T with N the matmul weights (padded vocab head included, no wpe)
    n = 12 * (768 * 3 * 768 + 768 * 768 + 2 * 768 * 3072) + 768 * 50304
    assert fpt == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert mfu(fpt, 400_000, 989.4e12) == pytest.approx(fpt * 400_000 / 989.4e12)
    assert mfu(fpt, 400_000, None) is None
