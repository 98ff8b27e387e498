"""Optimiser construction and learning-rate schedules (pure functions of the config)."""

from __future__ import annotations

import math

import torch

from gptlab.config import BUILTIN_OPTIMIZERS, Config
from gptlab.optimizers import from_idea, muon_with_adamw


def build_optimizer(model: torch.nn.Module, cfg: Config, device_type: str,
                    idea=None) -> torch.optim.Optimizer:
    """Adam(W) that decays matrices and embeddings (>= 2-D), never biases or LayerNorm gains; or
    --optimizer muon, or an optimiser idea (`idea`: its loaded function; gptlab.optimizers)."""
    o = cfg.optim
    if o.optimizer == "muon":
        return muon_with_adamw(model, cfg, device_type)
    if o.optimizer not in BUILTIN_OPTIMIZERS:
        return from_idea(model, cfg, idea)
    params = [p for p in model.parameters() if p.requires_grad]
    wd = o.weight_decay if o.optimizer == "adamw" else 0.0
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # The fused kernel does the whole update in a few launches and skips a step on the device
    # (found_inf) without a host sync; torch >= 2.4 has it on CPU too.
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=o.learning_rate, betas=(o.beta1, o.beta2), eps=o.eps,
               fused=device_type in ("cuda", "cpu"))


def lr_at(step: int, cfg: Config) -> float:
    """Learning rate for optimiser step `step` (0-based)."""
    o = cfg.optim
    if not o.decay_lr or o.schedule == "constant":
        return o.learning_rate
    warm, decay = o.warmup_iters, max(1, o.lr_decay_iters)
    if o.schedule == "languini":
        # Languini's CosineLR: cosine from max to min over decay_steps, times a linear ramp over
        # the first warmup steps, min_lr after. Its scheduler has counted step + 1 when optimiser
        # step `step` runs (torch schedulers step once when built): step + 1 in both parts.
        done = min(step + 1, decay)
        cos = o.min_lr + 0.5 * (o.learning_rate - o.min_lr) * (1 + math.cos(math.pi * done / decay))
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
    """Every param group at lr, or at lr x its "lr_scale" where an optimiser idea set one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
    return lr
