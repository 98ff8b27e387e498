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


def test_eta_rate_is_smoothed_not_the_last_window():
    from gptlab.metrics import StepRate

    rate = StepRate()
    rate.update(5.0)  # warm-up and compilation: replaced by the next window
    for _ in range(20):
        rate.update(1.0)
    assert rate.eta(100) == pytest.approx(100.0, rel=1e-6)
    # One window ten times slower (an eval nearby) moves the ETA by a fifth of the excess, not to 1,000 s.
    rate.update(10.0)
    assert rate.eta(100) == pytest.approx(100 * (1.0 + 0.2 * 9.0))
    # Windows that swing 0.5 s <-> 2 s keep the ETA within the swing, never at an extreme.
    etas = [rate.eta(100) for seconds in [0.5, 2.0] * 20 if rate.update(seconds)]
    assert all(100 < eta < 150 for eta in etas[20:]), etas  # the swing is 50..200 s
    # A lasting change of speed is followed: 30 windows at 3 s/step reach it within 1%.
    for _ in range(30):
        rate.update(3.0)
    assert rate.eta(100) == pytest.approx(300.0, rel=0.01)
