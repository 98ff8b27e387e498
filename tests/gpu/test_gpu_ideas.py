"""A model idea on the GPU (skipped without CUDA): the modern block compiled computes what it
computes eagerly (loss equal within bf16 rounding, gradients too), and with the chunked loss
(it has a bias-free lm_head) the loss of the plain one."""

from __future__ import annotations

from pathlib import Path

import torch

from gptlab import registry
from gptlab.config_files import build_config, parse_overrides
from gptlab.loss import lm_loss

DEV = torch.device("cuda")
BF16_REL = 2e-2
MODERN = Path(__file__).resolve().parents[2] / "examples" / "ideas" / "modern_block.py"


def _idea_model(seed: int = 0):
    args = ["--model", f"{MODERN}:ModernGPT", "--n_layer", "2", "--n_head", "4", "--n_embd", "128",
            "--block_size", "128", "--vocab_size", "9000", "--qk_norm", "true"]
    cfg = build_config("baby", None, parse_overrides(args, options=True))
    registry.resolve_model(cfg.model)
    torch.manual_seed(seed)
    return registry.init_weights(registry.build_model(cfg.model)).to(DEV)


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def test_compiled_idea_matches_eager_and_the_chunked_loss_matches_the_plain_one():
    model = _idea_model()
    x = torch.randint(0, 9000, (4, 128), device=DEV)
    y = torch.randint(0, 9000, (4, 128), device=DEV)
    params = list(model.parameters())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = lm_loss(model, x, y)
        eager_grads = torch.autograd.grad(eager, params)
        compiled_model = torch.compile(model)
        compiled = lm_loss(compiled_model, x, y)
        compiled_grads = torch.autograd.grad(compiled, params)
        chunked = lm_loss(compiled_model, x, y, ce_chunk=256)
    assert abs(compiled.item() - eager.item()) <= BF16_REL * eager.item()
    assert abs(chunked.item() - eager.item()) <= BF16_REL * eager.item()
    assert max(_rel(a, b) for a, b in zip(compiled_grads, eager_grads)) < BF16_REL
