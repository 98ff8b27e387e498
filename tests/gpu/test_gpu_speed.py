"""GPU checks of the fast paths against the plain ones (skipped without CUDA).

Each lever must compute the same function: loss equal, gradients within bf16 rounding
(relative norm error, fresh random inputs). Models are small so compiles stay short.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch

from gptlab.config_files import build_config
from gptlab.loss import lm_loss
from gptlab.model import GPT, CausalSelfAttention
from gptlab.train import train_step

DEV = torch.device("cuda")
BF16_REL = 2e-2  # bf16 has 8 mantissa bits: ~4e-3 per rounding, a few roundings deep


def _model(preset: str = "gpt2", seed: int = 0, **over) -> GPT:
    base = dict(n_layer=2, n_head=4, n_embd=128, block_size=128, vocab_size=1000, dropout=0.0)
    if preset != "gpt2":
        base.update(head_dim=32, mlp_dim=512, last_n=0)
    base.update(over)
    torch.manual_seed(seed)
    return GPT(build_config(preset, overrides=base).model).init_weights().to(DEV)


def _batch(b=8, t=128, vocab=1000, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    d = torch.randint(0, vocab, (b, t + 1), generator=g)
    # (B, T+1) -> inputs (B, T), targets (B, T)
    return d[:, :-1].contiguous().to(DEV), d[:, 1:].contiguous().to(DEV)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _grads(model, loss) -> list[torch.Tensor]:
    return [g.float() for g in torch.autograd.grad(loss, list(model.parameters()))]


def _worst(model, ga, gb) -> float:
    """Largest per-parameter relative gradient error. The key bias is left out: softmax is
    shift-invariant, so its gradient is zero in exact arithmetic and only rounding noise here."""
    names = [n for n, _ in model.named_parameters()]
    worst, name = max((_rel(a, b), n) for n, a, b in zip(names, ga, gb) if not n.endswith("k_proj.bias"))
    print(f"worst relative gradient error {worst:.2e} ({name})")
    return worst


def _bf16():
    return torch.autocast("cuda", dtype=torch.bfloat16)


@pytest.mark.parametrize("preset", ["gpt2", "small"])
def test_chunked_loss_equals_plain_loss_in_bf16(preset):
    model = _model(preset)
    x, y = _batch()
    y[0, :17] = -1
    with _bf16():
        plain = lm_loss(model, x, y)
    g_plain = _grads(model, plain)
    with _bf16():
        chunked = lm_loss(model, x, y, ce_chunk=300)
    g_chunk = _grads(model, chunked)
    assert abs(plain.item() - chunked.item()) < 1e-2 * plain.item()
    worst = _worst(model, g_chunk, g_plain)
    assert worst < BF16_REL, worst


def test_chunked_loss_under_compile_matches_eager_plain_loss():
    model = _model()
    x, y = _batch()
    with _bf16():
        ref = lm_loss(model, x, y)
    g_ref = _grads(model, ref)
    # The whole loss call compiled (model and chunk loop in one graph), as training runs it.
    fn = torch.compile(lambda m, a, b: lm_loss(m, a, b, ce_chunk=512))
    with _bf16():
        got = fn(model, x, y)
    g_got = _grads(model, got)
    assert abs(got.item() - ref.item()) < 1e-2 * ref.item()
    assert _worst(model, g_got, g_ref) < BF16_REL


def test_chunked_loss_under_no_grad_keeps_no_graph_on_gpu():
    model = _model()
    x, y = _batch()
    torch.cuda.synchronize()
    with torch.no_grad(), _bf16():
        before = torch.cuda.memory_allocated()
        loss = lm_loss(model, x, y, ce_chunk=256)
        torch.cuda.synchronize()
    assert loss.grad_fn is None and torch.isfinite(loss)
    # nothing from the loss survives but the scalar (no saved gradient buffers)
    assert torch.cuda.memory_allocated() - before < 1 << 20


def _train(model, dtype, steps=30, fused=True, lr=3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=fused)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x, y = _batch(seed=0)
    ctx = torch.autocast("cuda", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    losses = [train_step(model, opt, scaler, [(x, y)], ctx=ctx, clip=1.0).loss.item() for _ in range(steps)]
    return losses, opt, scaler


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_steps_learn(dtype):
    losses, _, scaler = _train(_model(), dtype)
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < 0.7 * losses[0], losses
    if dtype == torch.float16:
        assert scaler.get_scale() > 1.0  # the scaler is live (fp16 path), not bypassed


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_fused_optimizer_skips_a_non_finite_step_on_the_device():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    x, y = _batch()
    nan_loss = lambda m, a, b: lm_loss(m, a, b) * float("nan")  # noqa: E731
    before = _params(model)
    out = train_step(model, opt, scaler, [(x, y)], ctx=_bf16(), clip=1.0, loss_fn=nan_loss)
    assert bool(out.bad)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(model)))
    out = train_step(model, opt, scaler, [(x, y)], ctx=_bf16(), clip=1.0)
    assert not bool(out.bad)
    assert not all(torch.equal(a, b) for a, b in zip(before, _params(model)))


def test_fp16_scaler_skips_an_overflowing_step():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16)
    x, y = _batch()
    inf_loss = lambda m, a, b: lm_loss(m, a, b) * float("inf")  # noqa: E731
    before = _params(model)
    train_step(model, opt, scaler, [(x, y)], ctx=torch.autocast("cuda", dtype=torch.float16), clip=1.0, loss_fn=inf_loss)
    assert scaler.get_scale() == 2.0**15  # backed off
    assert all(torch.equal(a, b) for a, b in zip(before, _params(model)))


def test_separate_qkv_fused_compute_matches_three_projections_on_gpu(monkeypatch):
    model = _model("small", seed=3)
    x, _ = _batch()
    with _bf16():
        fused = model(x).float()
    g_fused = _grads(model, fused.square().mean())
    three = lambda self, h: torch.cat([self.q_proj(h), self.k_proj(h), self.v_proj(h)], dim=-1)  # noqa: E731
    monkeypatch.setattr(CausalSelfAttention, "qkv", three)
    with _bf16():
        ref = model(x).float()
    g_ref = _grads(model, ref.square().mean())
    assert _rel(fused, ref) < BF16_REL
    assert _worst(model, g_fused, g_ref) < BF16_REL


@pytest.mark.parametrize("backend", ["CUDNN_ATTENTION", "FLASH_ATTENTION"])
def test_attention_backends_agree_with_the_math_backend(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _model()
    x, y = _batch()
    with sdpa_kernel([SDPBackend.MATH]), _bf16():
        ref = lm_loss(model, x, y)
    g_ref = _grads(model, ref)
    with sdpa_kernel([getattr(SDPBackend, backend)]), _bf16():
        got = lm_loss(model, x, y)
    g_got = _grads(model, got)
    assert abs(got.item() - ref.item()) < 1e-2 * ref.item()
    assert _worst(model, g_got, g_ref) < BF16_REL


def test_prefetch_thread_delivers_device_batches_in_order():
    from gptlab.data.prefetch import Prefetcher

    counter = iter(range(10**6))

    def produce():
        i = next(counter)
        # pinned host tensor copied to the GPU from the worker thread, as the loader does
        t = torch.full((256, 1024), i, dtype=torch.int64).pin_memory().to(DEV, non_blocking=True)
        return i, [t]

    pf = Prefetcher(produce, depth=2)
    try:
        for want in range(20):
            state, (t,) = pf.get()
            assert state == want
            assert int(t.min()) == want == int(t.max())  # .item(): a CPU-GPU sync (test only)
    finally:
        pf.close()
    assert not any(th.name == "gptlab-prefetch" and th.is_alive() for th in threading.enumerate())
