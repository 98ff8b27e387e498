"""gptlab.loss: the chunked linear+cross-entropy equals the plain loss (values and
gradients, fp32 on CPU), does no gradient work under no_grad; the model's forward
contract and meta-device construction with init_weights()."""

import pytest
import torch
import torch.nn.functional as F

from gptlab.config_files import build_config
from gptlab.loss import chunked_cross_entropy, lm_loss, logits_and_loss
from gptlab.model import GPT

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0, **over) -> GPT:
    base = dict(n_layer=2, n_head=2, n_embd=32, head_dim=16, mlp_dim=64, block_size=16, vocab_size=100)
    base.update(over)
    torch.manual_seed(seed)
    return GPT(build_config("baby", overrides=base).model).init_weights()


@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
def test_chunked_ce_matches_cross_entropy_values_and_grads(chunk):
    torch.manual_seed(chunk)
    n, c, vocab, padded = 37, 24, 50, 64  # padded rows must act as if sliced off
    x = torch.randn(n, c, dtype=torch.float32, requires_grad=True)
    w = torch.randn(padded, c, dtype=torch.float32, requires_grad=True)
    t = torch.randint(0, vocab, (n,))
    t[::4] = -1  # ignore_index
    got = chunked_cross_entropy(x, w, t, vocab, chunk)
    gx, gw = torch.autograd.grad(3.0 * got, (x, w))  # a non-unit upstream gradient too
    ref = F.cross_entropy((x @ w.t())[:, :vocab], t, ignore_index=-1)
    rx, rw = torch.autograd.grad(3.0 * ref, (x, w))
    # The softmax runs in fp32 by design (like the plain path's .float()).
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gx, rx, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gw, rw, rtol=1e-5, atol=1e-6)
    assert gw[vocab:].abs().max() == 0  # padded rows get no gradient


def test_chunked_ce_fp16_gradients_do_not_underflow_before_the_loss_scale():
    # fp16 + GradScaler: the upstream gradient carries the loss scale (65536 here). The
    # 1/n_valid of the mean must meet that scale in fp32, not be applied to fp16
    # (softmax - onehot) first: p/n = 1e-3/4096 sits near fp16's subnormal floor.
    torch.manual_seed(0)
    n, c, vocab = 4096, 16, 1000
    x32 = torch.randn(n, c) * 0.1
    w32 = torch.randn(vocab, c) * 0.1
    t = torch.randint(0, vocab, (n,))
    x16 = x32.half().requires_grad_(True)
    w16 = w32.half().requires_grad_(True)
    got = chunked_cross_entropy(x16, w16, t, vocab, 1024)
    gx, gw = torch.autograd.grad(65536.0 * got, (x16, w16))
    xr = x16.detach().double().requires_grad_(True)
    wr = w16.detach().double().requires_grad_(True)
    rx, rw = torch.autograd.grad(65536.0 * F.cross_entropy(xr @ wr.t(), t), (xr, wr))
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all()
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(gx, rx) < 5e-3, rel(gx, rx)
    assert rel(gw, rw) < 5e-3, rel(gw, rw)


@pytest.mark.parametrize("variant", [{}, {"tie_embeddings": False, "qkv": "separate", "embed_scale": True}])
def test_lm_loss_chunked_equals_plain_with_gradients(variant):
    model = _model(**variant)
    x = torch.randint(0, 100, (3, 16))
    y = torch.randint(0, 100, (3, 16))
    y[0, :5] = -1
    plain = lm_loss(model, x, y)
    g_plain = torch.autograd.grad(plain, list(model.parameters()))
    chunked = lm_loss(model, x, y, ce_chunk=10)
    g_chunk = torch.autograd.grad(chunked, list(model.parameters()))
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_plain, g_chunk):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert any(g.abs().max() > 0 for g in g_chunk)


def test_forward_returns_padded_logits_or_hidden_states():
    model = _model()
    x = torch.randint(0, 100, (3, 16))
    logits = model(x)
    hidden = model(x, return_hidden=True)
    assert logits.shape == (3, 16, 128) and hidden.shape == (3, 16, 32)
    torch.testing.assert_close(logits, hidden @ model.lm_head.weight.t())
    sliced, loss = logits_and_loss(model, x)
    assert loss is None and torch.equal(sliced, logits[..., :100])


def test_chunked_loss_under_no_grad_builds_no_graph_and_computes_no_gradient(monkeypatch):
    import gptlab.loss as L

    model = _model()
    x, y = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        ref = lm_loss(model, x, y)
    # The gradient path (an autograd.Function) must not run at all under no_grad.
    monkeypatch.setattr(L._LinearCrossEntropy, "apply", lambda *a: pytest.fail("gradient work under no_grad"))
    with torch.no_grad():
        got = lm_loss(model, x, y, ce_chunk=7)
    assert got.grad_fn is None and not got.requires_grad
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # eval mode alone does not switch gradients off: the graph is still built when asked.
    monkeypatch.undo()
    assert lm_loss(model.eval(), x, y, ce_chunk=7).grad_fn is not None


def test_meta_construction_then_init_weights_equals_a_seeded_model():
    ref = _model(seed=3)
    with torch.device("meta"):
        meta = GPT(ref.config)
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device="cpu")
    torch.manual_seed(3)  # init_weights draws in a fixed order: the seed alone decides the weights
    GPT(ref.config)  # construction's own default draws, as _model made them before init_weights
    meta.init_weights()
    assert meta.lm_head.weight is meta.transformer.wte.weight  # tying survives to_empty
    for (n, a), (_, b) in zip(ref.state_dict().items(), meta.state_dict().items()):
        assert torch.equal(a, b), n


def test_init_weights_replaces_torchs_default_init():
    torch.manual_seed(0)
    model = GPT(_model().config)
    ln = model.transformer.ln_f
    with torch.no_grad():
        ln.weight.fill_(3.0)
    model.init_weights()
    assert torch.equal(ln.weight, torch.ones_like(ln.weight))
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)
    w = model.transformer.h[0].mlp.c_fc.weight
    assert abs(w.std().item() - 0.02) < 0.002  # N(0, 0.02), not torch's uniform(+-1/sqrt(fan_in))


def test_auto_ce_chunk_is_chunked_only_for_large_logits():
    from gptlab.loss import CHUNKED_MIN_VOCAB, resolve_ce_chunk
    from gptlab.model import padded_vocab

    # shakespeare_char's 65 characters (64 padded to 128): the plain loss, compiled or not.
    assert resolve_ce_chunk(-1, "default", padded_vocab(65, 64)) == 0
    assert resolve_ce_chunk(-1, "default", CHUNKED_MIN_VOCAB - 64) == 0
    # GPT-2's 50257 tokens (50304 padded) under torch.compile: the chunked loss; eager: plain.
    assert resolve_ce_chunk(-1, "default", padded_vocab(50257, 64)) == 8192
    assert resolve_ce_chunk(-1, "max-autotune", CHUNKED_MIN_VOCAB) == 8192
    assert resolve_ce_chunk(-1, "none", 50304) == 0
    # An explicit --ce_chunk is kept whatever the vocabulary.
    assert resolve_ce_chunk(7, "default", 128) == 7 and resolve_ce_chunk(0, "default", 50304) == 0
