"""The language-model loss: mean cross-entropy over targets != -1 from GPT.forward's logits
(plain) or hidden states (chunked linear+cross-entropy); padded vocab columns never take part."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def raw_model(model: torch.nn.Module) -> torch.nn.Module:
    """The GPT inside DDP (.module) and torch.compile (._orig_mod) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def logits_and_loss(model, idx: torch.Tensor, targets: torch.Tensor | None = None):
    """(logits (B, T, vocab) without padded columns, mean CE over targets != -1 or None)."""
    vocab = raw_model(model).config.vocab_size
    logits = model(idx)[..., :vocab]
    if targets is None:
        return logits, None
    # (B, T, V) -> (B*T, V): the softmax in fp32 whatever the autocast dtype
    loss = F.cross_entropy(logits.reshape(-1, vocab).float(), targets.reshape(-1), ignore_index=-1)
    return logits, loss


# Below this padded vocabulary the full logits are small: the plain loss is as light, and faster.
CHUNKED_MIN_VOCAB = 8192


def resolve_ce_chunk(ce_chunk: int, compile_mode: str, padded_vocab: int) -> int:
    """Tokens per chunk of the linear+cross-entropy; 0 = the plain loss. -1 (auto): chunked under
    torch.compile (fused, lighter: BENCHMARKS.md) when the logits are large (padded_vocab >=
    CHUNKED_MIN_VOCAB); plain in eager mode (F.cross_entropy is the fast path) or for a small vocab."""
    return ce_chunk if ce_chunk >= 0 else (8192 if compile_mode != "none"
                                           and padded_vocab >= CHUNKED_MIN_VOCAB else 0)


def chunkable(model: torch.nn.Module) -> bool:
    """Can the chunked loss run through this (unwrapped) model's output layer: a bias-free nn.Linear
    `lm_head` (the GPT's; an idea's if it has one) whose weight is not sharded (FSDP2's DTensor)?"""
    head = getattr(model, "lm_head", None)
    return (isinstance(head, torch.nn.Linear) and head.bias is None
            and type(head.weight).__name__ != "DTensor")


def lm_loss(model, idx: torch.Tensor, targets: torch.Tensor, ce_chunk: int = 0) -> torch.Tensor:
    """Mean cross-entropy of model(idx) against targets (-1 = not counted); ce_chunk > 0: from the
    hidden states, ce_chunk tokens of logits at a time (full logits never stored). Sharded (DTensor)
    output weights live only inside the wrapped forward, so FSDP keeps the plain loss."""
    gpt = raw_model(model)
    if ce_chunk <= 0 or not chunkable(gpt):
        return logits_and_loss(model, idx, targets)[1]
    return chunked_cross_entropy(model(idx, return_hidden=True), gpt.lm_head.weight, targets,
                                 gpt.config.vocab_size, ce_chunk)


def _chunk_logits(hc, w, vocab: int, cols):
    """fp32 logits of one chunk; embedding-padding columns (>= vocab) masked to -inf."""
    x = (hc @ w.t()).float()
    if w.size(0) > vocab:
        x = torch.where(cols < vocab, x, float("-inf"))
    return x


def _chunk_nll(x, tc, vc):
    """Sum of -log p(target) over the chunk's counted rows, and the log-sum-exp per row."""
    lse = torch.logsumexp(x, dim=-1)
    picked = x.gather(1, tc.unsqueeze(1)).squeeze(1)
    return torch.where(vc, lse - picked, 0.0).sum(), lse


def _chunk_loss(hc, w, tc, vc, cols, vocab: int):
    """One chunk's summed loss (no gradient)."""
    return _chunk_nll(_chunk_logits(hc, w, vocab, cols), tc, vc)[0]


def _chunk_loss_and_grads(hc, w, tc, vc, cols, vocab: int):
    """One chunk's summed loss, d/d hc (in hc's dtype) and d/d w (fp32). Pointwise expressions
    only (no in-place fill, no scatter): torch.compile fuses them, fp32 logits are never stored."""
    x = _chunk_logits(hc, w, vocab, cols)
    part, lse = _chunk_nll(x, tc, vc)
    # d(sum of losses)/d logits = softmax - onehot on counted rows, 0 elsewhere.
    onehot = cols.unsqueeze(0) == tc.unsqueeze(1)
    g = ((torch.exp(x - lse.unsqueeze(1)) - onehot.to(x.dtype)) * vc.unsqueeze(1)).to(hc.dtype)
    return part, g @ w, (g.t() @ hc).float()


_COMPILED: dict = {}


def _fused(fn, device: torch.device):
    """fn compiled on CUDA (its pointwise work fused), whether or not the caller is compiled;
    inside a compiled caller it is simply traced along. Eager elsewhere."""
    if device.type != "cuda":
        return fn
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean CE of (h @ w.T) over targets != -1, chunk by chunk: each chunk's gradients for h and w are
    computed in the forward (softmax - one-hot), so (N, vocab) logits are never stored; same matmul
    FLOPs. 1/n_valid and the upstream gradient (fp16's loss scale) are applied in backward, in fp32:
    dividing by 16K tokens first would push fp16 gradients under its smallest normal number."""

    @staticmethod
    def forward(ctx, h, w, targets, vocab: int, chunk: int):
        loss, n_valid, grad_h, grad_w = _chunk_loop(h, w, targets, vocab, chunk, grads=True)
        ctx.save_for_backward(grad_h, grad_w, n_valid)
        ctx.w_dtype = w.dtype
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, n_valid = ctx.saved_tensors
        factor = grad_out.float() / n_valid
        return ((grad_h.float() * factor).to(grad_h.dtype), (grad_w * factor).to(ctx.w_dtype),
                None, None, None)


def _chunk_loop(h, w, targets, vocab: int, chunk: int, grads: bool):
    """(summed loss, count of targets != -1, and with grads the summed d/d h and d/d w)."""
    valid = targets != -1
    # on the device: no host sync; 0 gives nan, as F.cross_entropy
    n_valid = valid.sum().to(torch.float32)
    safe_t = torch.where(valid, targets, torch.zeros_like(targets))
    cols = torch.arange(w.size(0), device=h.device)
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h, grad_w = (torch.empty_like(h) if grads else None), None
    fn = _fused(_chunk_loss_and_grads if grads else _chunk_loss, h.device)
    for s in range(0, h.size(0), chunk):
        out = fn(h[s:s + chunk], w, safe_t[s:s + chunk], valid[s:s + chunk], cols, vocab)
        if not grads:
            loss = loss + out
            continue
        loss = loss + out[0]
        grad_h[s:s + chunk] = out[1]
        grad_w = out[2] if grad_w is None else grad_w + out[2]
    return loss, n_valid, grad_h, grad_w


def chunked_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab: int,
                          chunk_tokens: int = 4096) -> torch.Tensor:
    """F.cross_entropy(x @ weight.T[:, :vocab], targets, ignore_index=-1) without full logits:
    matmuls in the autocast dtype (as nn.Linear), softmax in fp32; gradient work only when wanted."""
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    # (B, T, C) -> (B*T, C)
    h = x.reshape(-1, x.size(-1)).to(dtype)
    w = weight.to(dtype)
    chunk = max(1, int(chunk_tokens))
    wants_grad = torch.is_grad_enabled() and (h.requires_grad or w.requires_grad)
    with torch.autocast(dev, enabled=False):
        if not wants_grad:  # evaluation, no_grad: no gradient work at all
            loss, n_valid, _, _ = _chunk_loop(h, w, targets.reshape(-1), vocab, chunk, grads=False)
            return loss / n_valid
        return _LinearCrossEntropy.apply(h, w, targets.reshape(-1), vocab, chunk)
