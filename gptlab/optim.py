"""Optimiser construction and learning-rate schedules (pure functions of the config)."""

from __future__ import annotations

import inspect
import math

import torch

from gptlab.config import Config


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings (>= 2-D); never biases or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg: Config, device_type: str) -> torch.optim.Optimizer:
    o = cfg.optim
    wd = o.weight_decay if o.optimizer == "adamw" else 0.0
    groups = param_groups(model, wd)
    kwargs = dict(lr=o.learning_rate, betas=(o.beta1, o.beta2), eps=o.eps)
    # The fused kernel does the whole update in a few launches and can skip a step on
    # device (found_inf) without a host sync. CPU has it since torch 2.4.
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    if "fused" in inspect.signature(cls).parameters and device_type in ("cuda", "cpu"):
        kwargs["fused"] = True
    return cls(groups, **kwargs)


def lr_at(step: int, cfg: Config) -> float:
    """Learning rate for optimiser step `step` (0-based)."""
    o = cfg.optim
    if not o.decay_lr or o.schedule == "constant":
        return o.learning_rate
    warm, decay = o.warmup_iters, max(1, o.lr_decay_iters)
    if o.schedule == "languini":
        # Cosine from max to min over decay_steps, times a linear ramp over the first
        # warmup steps; held at min_lr after decay_steps.
        if step >= decay:
            return o.min_lr
        cos = o.min_lr + 0.5 * (o.learning_rate - o.min_lr) * (1 + math.cos(math.pi * step / decay))
        ramp = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        return cos * ramp
    # minimal-GPT: linear warmup to max, cosine down to min_lr at lr_decay_iters, then min_lr.
    if step < warm:
        return o.learning_rate * (step + 1) / (warm + 1)
    if step >= decay:
        return o.min_lr
    ratio = (step - warm) / max(1, decay - warm)
    return o.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (o.learning_rate - o.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
