"""The example ideas against independent references: the test idea tests/ideas/tiny_gpt.py is the
baseline GPT written independently (the built-in GPT's weights give it the same logits), so the FLOP
counter's count for it is checked against the analytic 6N + 12*L*H*Q*T of the baseline; the modern
block's formula, its causality and its rotary positions are checked on their own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gptlab.config import ModelConfig
from gptlab.ideas import count_flops_per_token, idea_config, load_idea, resolve_options
from gptlab.model import GPT
from tests.tolerances import assert_logits_close

REPO = Path(__file__).resolve().parents[2]
TINY = f"{REPO / 'tests' / 'ideas' / 'tiny_gpt.py'}:TinyGPT"
MODERN = f"{REPO / 'examples' / 'ideas' / 'modern_block.py'}:ModernGPT"
BUILTINS = {"gpt": GPT}

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = {  # tied GPT-2 style; untied with head_dim != n_embd / n_head and a padded vocabulary
    "gpt2": ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=128, vocab_size=128),
    "languini": ModelConfig(
        n_layer=3,
        n_head=3,
        n_embd=48,
        head_dim=24,
        mlp_dim=160,
        block_size=96,
        vocab_size=100,
        tie_embeddings=False,
        bias=False,
    ),
}


def build(spec: str, m: ModelConfig, **given):
    idea = load_idea(spec, BUILTINS)
    return idea, idea_config(m, resolve_options(idea, given))


def baseline(m: ModelConfig) -> GPT:
    return GPT(m)


@pytest.mark.parametrize("shape", SHAPES)
def test_tiny_gpt_is_the_baseline(shape):
    """Loaded with the built-in GPT's weights, the test idea gives its logits: it is the baseline."""
    m = SHAPES[shape]
    torch.manual_seed(0)
    reference = baseline(m).init_weights().eval()
    idea, config = build(TINY, m)
    model = idea.cls(config).eval()
    model.load_state_dict(reference.state_dict())
    idx = torch.randint(0, m.vocab_size, (2, 40))
    with torch.no_grad():
        assert_logits_close(model(idx), reference(idx))


@pytest.mark.parametrize("shape", SHAPES)
def test_counted_flops_of_the_baseline_as_an_idea_match_the_analytic_count(shape):
    m = SHAPES[shape]
    idea, config = build(TINY, m)
    assert not hasattr(idea.cls, "flops_per_token")  # so gptlab has to count
    analytic = baseline(m).flops_per_token(m.block_size)  # 6N + 12*L*H*Q*T
    counted = count_flops_per_token(lambda: idea.cls(config), m.block_size)
    assert counted == pytest.approx(analytic, rel=0.02)


def test_counting_draws_no_random_numbers_and_allocates_nothing():
    m = SHAPES["gpt2"]
    idea, config = build(TINY, m)
    state = torch.get_rng_state()
    count_flops_per_token(lambda: idea.cls(config), m.block_size)
    assert torch.equal(state, torch.get_rng_state())


def test_counting_falls_back_to_the_cpu_for_data_dependent_code(tmp_path):
    """A model that reads a value back (not possible on meta tensors) is counted on one CPU sequence,
    its random draws undone: the count is its two matmuls' 6 * N per token."""
    path = tmp_path / "host_sync.py"
    path.write_text(
        "import torch\nimport torch.nn as nn\n\nclass HostSync(nn.Module):\n"
        "    def __init__(self, config):\n        super().__init__()\n"
        "        self.emb = nn.Embedding(config.padded_vocab, 8)\n"
        "        self.out = nn.Linear(8, config.padded_vocab, bias=False)\n"
        "    def forward(self, idx, return_hidden=False):\n"
        "        x = torch.dropout(self.emb(idx), 0.5, True)\n"
        "        if x.sum().item() > 1e9:\n            x = x * 2\n        return self.out(x)\n"
    )
    m = ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=64)
    idea, config = build(f"{path}:HostSync", m)
    state = torch.get_rng_state()
    assert count_flops_per_token(lambda: idea.cls(config), 16) == 6 * 8 * 64
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("shape", SHAPES)
def test_modern_block_formula_matches_the_counter(shape):
    m = SHAPES[shape]
    idea, config = build(MODERN, m)
    model = idea.cls(config)
    counted = count_flops_per_token(lambda: idea.cls(config), m.block_size)
    assert model.flops_per_token(m.block_size) == pytest.approx(counted, rel=0.02)


def test_modern_block_is_causal_biasless_and_its_hidden_states_give_its_logits():
    m = SHAPES["languini"]
    idea, config = build(MODERN, m, qk_norm="true")
    torch.manual_seed(0)
    model = idea.cls(config)
    model.init_weights()
    model.eval()
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    idx = torch.randint(0, m.vocab_size, (2, 30))
    changed = idx.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % m.vocab_size
    with torch.no_grad():
        logits, hidden = model(idx), model(idx, return_hidden=True)
        assert logits.shape == (2, 30, config.padded_vocab)
        assert_logits_close(model(changed)[:, :20], logits[:, :20])  # no token sees a later one
        assert_logits_close(model.lm_head(hidden), logits)


def test_rotary_scores_depend_only_on_the_distance():
    """q at position i and k at position j, both rotated: their dot product is that of positions
    i + s and j + s, for any shift s (the defining property of rotary positions)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("modern_block_for_test", MODERN.rsplit(":", 1)[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    freqs = 10000.0 ** -(torch.arange(0, 16, 2) / 16)

    def score(i, j):
        turned_q = module.rotate(q, torch.cos(i * freqs), torch.sin(i * freqs))
        return turned_q @ module.rotate(k, torch.cos(j * freqs), torch.sin(j * freqs))

    assert score(7.0, 3.0) == pytest.approx(score(107.0, 103.0).item(), rel=1e-4)
    assert score(7.0, 3.0) != pytest.approx(score(7.0, 5.0).item(), rel=1e-3)


def test_blocks_are_found_for_the_gpt_an_idea_and_a_model_without_any():
    from gptlab.registry import blocks

    m = SHAPES["gpt2"]
    gpt = baseline(m)
    assert blocks(gpt) == list(gpt.transformer.h)
    idea, config = build(MODERN, m)
    modern = idea.cls(config)
    assert blocks(modern) == list(modern.blocks) and len(blocks(modern)) == m.n_layer
    assert blocks(torch.nn.Linear(2, 2)) == []


def test_the_chunked_loss_of_an_idea_equals_its_plain_loss(tmp_path):
    """gptlab's loss works unchanged on an idea: chunked through its lm_head, with gradients, as the
    plain cross-entropy of its logits; an idea without a bias-free lm_head keeps the plain loss."""
    from gptlab.loss import lm_loss

    m = SHAPES["languini"]
    idea, config = build(MODERN, m)
    torch.manual_seed(0)
    model = idea.cls(config)
    model.init_weights()
    x, y = torch.randint(0, m.vocab_size, (2, 24)), torch.randint(0, m.vocab_size, (2, 24))
    y[0, :5] = -1
    plain = torch.nn.functional.cross_entropy(model(x)[..., :m.vocab_size].reshape(-1, m.vocab_size), y.reshape(-1),
                                              ignore_index=-1)
    chunked = lm_loss(model, x, y, ce_chunk=7)
    torch.testing.assert_close(chunked, plain)
    grads = torch.autograd.grad(chunked, list(model.parameters()))
    want = torch.autograd.grad(plain, list(model.parameters()))
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-4)
    del model.lm_head  # no output layer to chunk through: the plain loss, through forward()
    model.forward = lambda idx, return_hidden=False: torch.zeros(idx.shape + (config.padded_vocab,))
    assert lm_loss(model, x, y, ce_chunk=7).item() == pytest.approx(torch.log(torch.tensor(100.0)).item())
