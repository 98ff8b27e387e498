"""The model's size and architecture options: Languini baselines and GPT-2.

Parameter counts are the benchmark's published numbers; a model that differs by one
bias vector fails them, so they pin the whole Languini architecture at once. The
architecture tests then check each option on its own, so a failure says which one.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptlab.config_files import build_config
from gptlab.loss import logits_and_loss
from gptlab.model import GPT, padded_vocab
from gptlab.registry import parameter_count

LANGUINI_PARAMS = {
    "mini": 27_549_696,
    "tiny": 53_912_064,
    "small": 110_615_040,
    "medium": 336_390_144,
    "large": 731_077_632,
}

# layers / h_dim / mlp_dim / heads / head_dim as the benchmark defines them.
LANGUINI_DIMS = {
    "mini": (4, 512, 2048, 8, 32),
    "tiny": (4, 768, 3072, 12, 64),
    "small": (12, 768, 3072, 12, 64),
    "medium": (24, 1024, 4096, 16, 64),
    "large": (24, 1536, 6144, 16, 96),
    "XL": (24, 2048, 8192, 24, 128),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forwards: see conftest


def _meta_model(preset: str, **overrides) -> GPT:
    """The preset's model on the meta device: no storage, so even `large` (731M) is instant.

    Random init is skipped: sizes do not depend on it, and torch's meta-device normal_
    imports torch._dynamo on first use, which takes 10+ s on a busy machine.
    """
    cfg = build_config(preset, overrides=overrides or None)
    keep = lambda t, *a, **k: t  # noqa: E731
    names = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, keep)
        with torch.device("meta"):
            return GPT(cfg.model)
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def _small_model(preset: str, seed: int = 0, **overrides) -> GPT:
    """A real (CPU) model of the preset's architecture, shrunk to test sizes."""
    base = dict(n_layer=2, n_embd=64, mlp_dim=128, n_head=2, head_dim=32, block_size=16, vocab_size=100,
                # the presets score last_n=128 targets at eval, which must divide block_size
                last_n=0)
    base.update(overrides)
    cfg = build_config(preset, overrides=base)
    torch.manual_seed(seed)
    return GPT(cfg.model).init_weights().eval()


@pytest.mark.parametrize("preset", list(LANGUINI_PARAMS))
def test_languini_parameter_counts(preset):
    model = _meta_model(preset)
    assert parameter_count(model) == LANGUINI_PARAMS[preset]
    # Also the plain PyTorch count, in case parameter_count() ever learns to skip something.
    assert sum(p.numel() for p in model.parameters()) == LANGUINI_PARAMS[preset]


@pytest.mark.parametrize("preset", list(LANGUINI_DIMS))
def test_languini_preset_dimensions(preset):
    m = build_config(preset).model
    assert (m.n_layer, m.n_embd, m.mlp_dim, m.n_head, m.head_dim) == LANGUINI_DIMS[preset]
    assert m.block_size == 512 and m.vocab_size == 16384 and m.dropout == 0.0


def test_preset_names_are_case_insensitive():
    assert build_config("xl").preset == "XL"


def test_languini_count_by_hand():
    """The mini count, rebuilt from the architecture's parts: pins what the number means."""
    L, h, ff, H, d, V, T = 4, 512, 2048, 8, 32, 16384, 512
    inner = H * d
    attn = 3 * (h * inner + inner) + inner * h + h  # separate Q/K/V with bias, output projection with bias
    mlp = h * ff + ff + ff * h + h
    block = attn + mlp + 2 * 2 * h  # two LayerNorms with gain and bias
    total = V * h + T * h + L * block + 2 * h + h * V  # untied input and output embeddings
    assert total == LANGUINI_PARAMS["mini"] == parameter_count(_meta_model("mini"))


def test_languini_architecture_options():
    model = _small_model("mini")
    names = dict(model.named_parameters())
    # Separate Q/K/V/O projections, each with a bias; no fused c_attn.
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert f"transformer.h.0.attn.{proj}.weight" in names
        assert f"transformer.h.0.attn.{proj}.bias" in names
    assert "transformer.h.0.attn.c_proj.bias" in names
    assert not any("c_attn" in n for n in names)
    # Untied input and output embeddings.
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    assert "lm_head.weight" in names
    # tanh-approximate GELU, no dropout anywhere.
    assert model.transformer.h[0].mlp.act.approximate == "tanh"
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


@pytest.mark.parametrize("preset, scale", [("mini", math.sqrt(64)), ("gpt2", 1.0)])
def test_embedding_scale(preset, scale):
    """Languini scales token embeddings by sqrt(width) (mini: 64); GPT-2 does not."""
    model = _small_model(preset)
    seen = {}
    model.transformer.h[0].register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].detach()))
    idx = torch.tensor([[5, 7, 11, 3]])
    model(idx)
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    expected = wte[idx[0]] * scale + wpe[:4]
    assert torch.allclose(seen["x"][0], expected, atol=1e-6)


def _std(model: GPT, suffix: str) -> float:
    ws = [p for n, p in model.named_parameters() if n.endswith(suffix)]
    return torch.cat([w.detach().flatten() for w in ws]).std().item()


def test_languini_scaled_init_mlp_only():
    # 8 layers: scaled std 0.02/sqrt(16) = 0.005, far from 0.02 with ~130k samples per matrix.
    model = _small_model("mini", n_layer=8, n_embd=128, mlp_dim=512, n_head=4)
    scaled = 0.02 / math.sqrt(2 * 8)
    assert _std(model, "mlp.c_proj.weight") == pytest.approx(scaled, rel=0.05)
    assert _std(model, "attn.c_proj.weight") == pytest.approx(0.02, rel=0.05)
    assert _std(model, "mlp.c_fc.weight") == pytest.approx(0.02, rel=0.05)
    assert _std(model, "attn.q_proj.weight") == pytest.approx(0.02, rel=0.05)
    for n, p in model.named_parameters():
        if n.endswith(".bias") and "ln_" not in n:
            assert torch.all(p == 0), n


def test_gpt2_scaled_init_attention_and_mlp():
    model = _small_model("gpt2", n_layer=8, n_embd=128, mlp_dim=512, n_head=4, head_dim=32)
    scaled = 0.02 / math.sqrt(2 * 8)
    assert _std(model, "mlp.c_proj.weight") == pytest.approx(scaled, rel=0.05)
    assert _std(model, "attn.c_proj.weight") == pytest.approx(scaled, rel=0.05)
    assert _std(model, "attn.c_attn.weight") == pytest.approx(0.02, rel=0.05)
    # GPT-2 ties the output layer to the token embedding.
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("preset", ["mini", "gpt2"])
def test_padded_vocab_never_in_logits_or_loss(preset):
    model = _small_model(preset, vocab_size=100)
    assert model.padded_vocab == padded_vocab(100, 64) == 128
    assert model.lm_head.weight.shape[0] == 128
    # Make the padding rows dominate: if they reached the logits, they would win every
    # softmax and change the loss.
    with torch.no_grad():
        model.lm_head.weight[100:] = 0.0
        idx = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
        tgt = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(2))
        tgt[0, :5] = -1
        ref_logits, ref_loss = logits_and_loss(model, idx, tgt)
        # (Tied, these rows are also input embeddings of ids >= 100, which never occur.)
        model.lm_head.weight[100:] = 50.0
        logits, loss = logits_and_loss(model, idx, tgt)
    assert torch.equal(logits, ref_logits) and torch.equal(loss, ref_loss)
    assert ref_logits.shape == (2, 16, 100)
    # The loss is the plain mean cross-entropy over the real vocabulary, -1 targets left out.
    keep = tgt != -1
    expected = F.cross_entropy(ref_logits[keep].float(), tgt[keep])
    assert torch.allclose(ref_loss, expected, atol=1e-6)


def test_separate_qkv_weights_computed_as_one_matmul_match_three_projections(monkeypatch):
    """Languini's separate Q/K/V weights (its checkpoint layout) run as one fused matmul;
    the reference computes the three projections apart, as the layout reads."""
    from gptlab.model import CausalSelfAttention

    model = _small_model("mini", seed=4)
    idx = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(0))
    fused = model(idx)
    g_fused = torch.autograd.grad(fused.square().mean(), list(model.parameters()))
    three = lambda self, x: torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)  # noqa: E731
    monkeypatch.setattr(CausalSelfAttention, "qkv", three)
    ref = model(idx)
    g_ref = torch.autograd.grad(ref.square().mean(), list(model.parameters()))
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_separate_qkv_state_dict_keeps_the_languini_layout_and_round_trips():
    model = _small_model("mini", seed=5)
    state = model.state_dict()
    assert {"transformer.h.0.attn.q_proj.weight", "transformer.h.0.attn.k_proj.weight",
            "transformer.h.0.attn.v_proj.weight"} <= set(state)
    assert not any("c_attn" in k for k in state)
    copy = _small_model("mini", seed=6)
    copy.load_state_dict(state)
    idx = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(copy(idx), model(idx))
