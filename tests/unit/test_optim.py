"""Learning-rate schedules and optimiser construction.

Each schedule is checked against a reference written here from its definition (not
from optim.py), at the points where off-by-one mistakes show: the first step, the end
of the ramp/warmup, the middle and the end of the decay, and past the end.
"""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.config_files import build_config
from gptlab.optim import build_optimizer, lr_at


def languini_reference(step: int, max_lr: float, min_lr: float, decay: int, ramp: int = 200) -> float:
    # Benchmark definition: cosine from max_lr to min_lr over decay_steps, multiplied by a
    # linear ramp over the first `ramp` steps (step 0 already trains: (step+1)/ramp),
    # and min_lr once the decay is over.
    if step >= decay:
        return min_lr
    cosine = min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * step / decay))
    return cosine * min(1.0, (step + 1) / ramp)


def gpt_reference(step: int, max_lr: float, min_lr: float, warmup: int, decay: int) -> float:
    # minimal-GPT: linear warmup, cosine from the end of warmup to min_lr at decay, then min_lr.
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step > decay:
        return min_lr
    ratio = (step - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def test_languini_preset_recipe():
    cfg = build_config("small")
    o = cfg.optim
    assert o.schedule == "languini" and o.optimizer == "adam" and o.weight_decay == 0.0
    assert (o.learning_rate, o.min_lr, o.warmup_iters) == (6e-4, 6e-6, 200)
    assert (o.beta1, o.beta2, o.eps) == (0.9, 0.95, 1e-8)
    assert o.grad_clip == 0.0  # no clipping by default
    assert cfg.system.dtype == "float16"


def test_languini_schedule_matches_reference_everywhere():
    cfg = build_config("small", overrides={"decay_steps": 1000, "max_train_steps": 1200})
    for step in range(0, 1300):
        assert lr_at(step, cfg) == pytest.approx(languini_reference(step, 6e-4, 6e-6, 1000), rel=1e-12, abs=1e-15)


def test_languini_schedule_landmarks():
    cfg = build_config("small", overrides={"decay_steps": 18265, "max_train_steps": 18265})
    lr = lambda s: lr_at(s, cfg)  # noqa: E731
    # The ramp: tiny first step, linear growth, full cosine value from step 199 on.
    cos0 = 6e-4  # the cosine barely moves in 200 of 18265 steps
    assert lr(0) == pytest.approx(cos0 / 200, rel=1e-3)
    assert lr(99) == pytest.approx(cos0 * 100 / 200, rel=1e-3)
    assert lr(199) == pytest.approx(languini_reference(199, 6e-4, 6e-6, 18265), rel=1e-12)
    assert lr(199) > lr(198) and lr(199) > lr(200)  # the peak is where the ramp ends
    # The cosine: halfway between max and min at half the decay, min at the end, held after.
    assert lr(18265 // 2) == pytest.approx((6e-4 + 6e-6) / 2, rel=1e-3)
    assert lr(18264) == pytest.approx(6e-6, rel=1e-5)
    assert lr(18265) == lr(20000) == lr(10**6) == 6e-6
    # Monotone down after the ramp, never below min_lr.
    values = [lr(s) for s in range(199, 18300, 7)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert min(values) == 6e-6


def test_languini_schedule_follows_max_and_min_lr_flags():
    cfg = build_config("small", overrides={"max_lr": 1e-3, "min_lr": 1e-5, "decay_steps": 400})
    assert lr_at(200, cfg) == pytest.approx(languini_reference(200, 1e-3, 1e-5, 400), rel=1e-12)
    assert lr_at(400, cfg) == 1e-5


def test_gpt_warmup_cosine_matches_reference():
    cfg = build_config("gpt2", overrides={"warmup_iters": 100, "lr_decay_iters": 1000, "learning_rate": 6e-4,
                                          "min_lr": 6e-5})
    assert cfg.optim.schedule == "cosine"
    for step in range(0, 1200):
        assert lr_at(step, cfg) == pytest.approx(gpt_reference(step, 6e-4, 6e-5, 100, 1000), rel=1e-12)
    assert lr_at(0, cfg) == pytest.approx(6e-4 / 101)
    assert lr_at(100, cfg) == 6e-4  # warmup ends exactly at the peak
    assert lr_at(550, cfg) == pytest.approx((6e-4 + 6e-5) / 2)
    assert lr_at(1000, cfg) == pytest.approx(6e-5) and lr_at(5000, cfg) == 6e-5


@pytest.mark.parametrize("overrides", [{"decay_lr": False}, {"schedule": "constant"}])
def test_constant_schedule(overrides):
    cfg = build_config("gpt2", overrides=dict(overrides, learning_rate=3e-4))
    assert {lr_at(s, cfg) for s in (0, 10, 10**6)} == {3e-4}


def _tiny(preset: str):
    from gptlab.model import GPT

    cfg = build_config(preset, overrides=dict(n_layer=1, n_embd=32, mlp_dim=64, n_head=2, head_dim=16,
                                              block_size=8, vocab_size=64, last_n=0))
    return cfg, GPT(cfg.model)


def test_languini_optimiser_is_adam_without_decay():
    cfg, model = _tiny("mini")
    opt = build_optimizer(model, cfg, "cpu")
    assert type(opt) is torch.optim.Adam
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len(list(model.parameters()))


def test_gpt2_optimiser_decays_matrices_only():
    cfg, model = _tiny("gpt2")
    opt = build_optimizer(model, cfg, "cpu")
    assert type(opt) is torch.optim.AdamW
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == cfg.optim.weight_decay > 0 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
