"""Model behaviour that every variant must keep: causality, learning, padded vocab."""

import pytest
import torch

from gptlab.config_files import build_config
from gptlab.loss import lm_loss, logits_and_loss
from gptlab.model import GPT


@pytest.mark.parametrize("variant", [{}, {"qkv": "separate", "tie_embeddings": False, "embed_scale": True,
                                          "scaled_init": "mlp", "head_dim": 8}])
def test_changing_a_later_token_never_changes_earlier_logits(variant):
    cfg = build_config("baby", overrides=dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, **variant))
    torch.manual_seed(0)
    model = GPT(cfg.model).init_weights().eval()
    x = torch.randint(0, 50, (3, 16))
    base = model(x)
    for t in (3, 9, 15):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % 50
        out = model(y)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
        assert not torch.allclose(out[:, t:], base[:, t:])  # and the change is seen from t on


def test_tiny_model_overfits_one_batch(tiny_model_config):
    torch.manual_seed(0)
    model = GPT(tiny_model_config.model).init_weights()
    x = torch.randint(0, 40, (4, 16))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = lm_loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_loss_ignores_minus_one_targets_and_padding(tiny_model):
    x = torch.randint(0, 40, (2, 8))
    y = torch.randint(0, 40, (2, 8))
    logits, loss = logits_and_loss(tiny_model, x, y)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 40), y.reshape(-1))
    torch.testing.assert_close(loss, ref)
    y2 = y.clone()
    y2[:, :4] = -1
    _, loss2 = logits_and_loss(tiny_model, x, y2)
    ref2 = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 40), y[:, 4:].reshape(-1))
    torch.testing.assert_close(loss2, ref2)
