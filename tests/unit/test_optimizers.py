"""The built-in muon optimiser: which weights Muon gets, its updates against torch's own optimisers
stepped by hand, and a bit-identical resume through a weights_only checkpoint round trip."""

import io

import pytest
import torch

from gptlab import checkpoint
from gptlab.model import GPT
from gptlab.optimizers import ChainedOptimizer, hidden_matrices, muon_with_adamw


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return GPT(cfg.model).init_weights()


def _step(model, optimizer, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.config.vocab_size, (2, 8), generator=generator)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.roll(-1, 1).flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_muon_gets_exactly_the_block_matrices(tiny_model_config):
    model = _model(tiny_model_config)
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = sorted(names[id(p)] for p in hidden_matrices(model))
    expected = sorted(
        n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2
    )
    assert chosen == expected and chosen  # attention and MLP matrices; never wte, wpe, lm_head or gains
    optimizer = muon_with_adamw(model, tiny_model_config)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert {id(p) for p in muon.param_groups[0]["params"]} == {id(p) for p in hidden_matrices(model)}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert in_adamw == {id(p) for p in model.parameters()} - {id(p) for p in hidden_matrices(model)}
    decayed = adamw.param_groups[0]
    assert (
        all(p.dim() >= 2 for p in decayed["params"])
        and all(p.dim() < 2 for p in adamw.param_groups[1]["params"])
        and adamw.param_groups[1]["weight_decay"] == 0
    )


def test_chained_steps_equal_torch_optimisers_stepped_by_hand(tiny_model_config):
    cfg = tiny_model_config
    model_a, model_b = _model(cfg), _model(cfg)
    chained = muon_with_adamw(model_a, cfg)
    by_name_b = dict(model_b.named_parameters())
    names_a = {id(p): n for n, p in model_a.named_parameters()}
    matrices = [by_name_b[names_a[id(p)]] for p in hidden_matrices(model_a)]
    rest = [p for p in model_b.parameters() if all(p is not m for m in matrices)]
    o = cfg.optim
    muon = torch.optim.Muon(
        matrices, lr=o.learning_rate, weight_decay=o.weight_decay, adjust_lr_fn="match_rms_adamw"
    )  # momentum 0.95, nesterov, 5 steps: torch's defaults
    adamw = torch.optim.AdamW(
        [
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": o.weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=o.learning_rate,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        fused=True,
    )
    for seed in range(3):
        _step(model_a, chained, seed)
        _step(model_b, ChainedOptimizer(muon, adamw), seed)
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(a, b), name


def test_resume_is_bit_identical_through_a_checkpoint(tiny_model_config):
    cfg = tiny_model_config
    straight = _model(cfg)
    optimizer = muon_with_adamw(straight, cfg)
    for seed in range(5):
        _step(straight, optimizer, seed)

    first = _model(cfg)
    optimizer = muon_with_adamw(first, cfg)
    for seed in range(2):
        _step(first, optimizer, seed)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert checkpoint._optimizer_problem(saved["optimizer"]) is None  # the format checkpoints validate
    resumed = _model(cfg, seed=123)  # other weights: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    optimizer = muon_with_adamw(resumed, cfg)
    checkpoint.check_optimizer_fits(saved["optimizer"], optimizer, "ckpt")
    optimizer.load_state_dict(saved["optimizer"])
    for seed in range(2, 5):
        _step(resumed, optimizer, seed)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_state_dict_refuses_another_layout(tiny_model_config):
    optimizer = muon_with_adamw(_model(tiny_model_config), tiny_model_config)
    state = optimizer.state_dict()
    state["param_groups"] = state["param_groups"][:1]
    with pytest.raises(ValueError, match="param groups"):
        optimizer.load_state_dict(state)


def test_the_schedule_scales_groups_that_ask_for_it(tiny_model_config):
    from gptlab.optim import set_lr

    optimizer = muon_with_adamw(_model(tiny_model_config), tiny_model_config)
    optimizer.optimizers[0].param_groups[0]["lr_scale"] = 4.0
    assert set_lr(optimizer, 1e-3) == 1e-3
    assert [g["lr"] for g in optimizer.param_groups] == [4e-3, 1e-3, 1e-3]
