"""The model registry: the one place that builds a model. The built-in GPT is registered here; a
researcher's model plugs in beside it. Contract: Module(model_config); optional init_weights() and
flops_per_token(seq_len)."""

from __future__ import annotations

import torch.nn as nn

from gptlab.config import ModelConfig
from gptlab.model import GPT

BUILTIN_MODELS: dict[str, type[nn.Module]] = {"gpt": GPT}


def build_model(model_config: ModelConfig) -> nn.Module:
    """The model the config describes, allocated (on the default or current meta device), not initialised."""
    return BUILTIN_MODELS["gpt"](model_config)


def init_weights(model: nn.Module) -> nn.Module:
    """Draw the initial weights where the model defines how; its construction's draws otherwise."""
    if hasattr(model, "init_weights"):
        model.init_weights()
    return model


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: the model's own count (the GPT's analytic 6N + 12*L*H*Q*T)."""
    if not hasattr(model, "flops_per_token"):
        raise NotImplementedError(f"{type(model).__name__} defines no flops_per_token(seq_len)")
    return model.flops_per_token(seq_len)


def parameter_count(model: nn.Module, non_embedding: bool = False) -> int:
    """Parameters, a tied matrix once (parameters() yields it once); non_embedding leaves out the
    position embeddings of a model that has them, as nanoGPT's get_num_params does."""
    total = sum(p.numel() for p in model.parameters())
    position = getattr(getattr(model, "transformer", None), "wpe", None)
    if non_embedding and position is not None:
        total -= position.weight.numel()
    return total
