"""The language-model loss beside the model: plain, or chunked linear+cross-entropy.

GPT.forward returns logits over the padded vocabulary or the final hidden states; the
functions here turn those into the mean cross-entropy over targets != -1. Padded vocab
columns never take part. Both paths give the same value (tests/unit/test_loss.py).
"""

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
    vocab = raw_model(model).shape.vocab_size
    logits = model(idx)[..., :vocab]
    if targets is None:
        return logits, None
    # (B, T, V) -> (B*T, V): the softmax in fp32 whatever the autocast dtype
    loss = F.cross_entropy(logits.reshape(-1, vocab).float(), targets.reshape(-1), ignore_index=-1)
    return logits, loss


def lm_loss(model, idx: torch.Tensor, targets: torch.Tensor, ce_chunk: int = 0) -> torch.Tensor:
    """Mean cross-entropy of model(idx) against targets (-1 = not counted).

    ce_chunk > 0: the loss from the hidden states, ce_chunk tokens of logits at a time
    (chunked_cross_entropy): full (B*T, vocab) logits are never stored. Sharded (DTensor)
    output weights live only inside the wrapped forward, so FSDP keeps the plain loss.
    """
    gpt = raw_model(model)
    head = gpt.lm_head.weight
    if ce_chunk <= 0 or type(head).__name__ == "DTensor":
        return logits_and_loss(model, idx, targets)[1]
    hidden = model(idx, return_hidden=True)
    return chunked_cross_entropy(hidden, head, targets, gpt.shape.vocab_size, ce_chunk)


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
    """One chunk's summed loss, d/d hc (in hc's dtype) and d/d w (fp32), of the summed loss.

    Pointwise expressions of the logits (no in-place fill, no scatter), so that
    torch.compile fuses them into one kernel that reads the logits for the log-sum-exp
    and writes the low-precision gradient: fp32 logits/gradients are never stored.
    """
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
    """Mean cross-entropy of (h @ w.T) over targets != -1, computed chunk by chunk.

    Each chunk's logits live only inside the loop: the gradients for h and w are
    computed right there (softmax - one-hot needs nothing else), so the full
    (N, vocab) logits - 1.6 GB in bf16, 3.2 GB in fp32 for GPT-2 at 16x1024 - are never
    stored for backward. Same matmul FLOPs as the plain path (one forward, two
    gradient products). Used only when a gradient is wanted (see chunked_cross_entropy).

    The 1/n_valid of the mean and the upstream gradient (which carries fp16's loss
    scale) are applied in backward, in fp32: (softmax - onehot) is at most 1 in
    magnitude, so the fp16/bf16 products below never underflow, whereas dividing by
    16K tokens first would push fp16 gradients under its smallest normal number.
    """

    @staticmethod
    def forward(ctx, h, w, targets, vocab: int, chunk: int):
        valid, safe_t, n_valid, cols = _prepare(h, w, targets)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h)
        grad_w = None
        step = _fused(_chunk_loss_and_grads, h.device)
        for s in range(0, h.size(0), chunk):
            part, gh, gw = step(h[s:s + chunk], w, safe_t[s:s + chunk], valid[s:s + chunk], cols, vocab)
            loss = loss + part
            grad_h[s:s + chunk] = gh
            grad_w = gw if grad_w is None else grad_w + gw
        ctx.save_for_backward(grad_h, grad_w, n_valid)
        ctx.w_dtype = w.dtype
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, n_valid = ctx.saved_tensors
        factor = grad_out.float() / n_valid
        return (grad_h.float() * factor).to(grad_h.dtype), (grad_w * factor).to(ctx.w_dtype), None, None, None


def _prepare(h, w, targets):
    """Counted-row mask, targets safe to gather, the count (on device: no host sync), column ids."""
    valid = targets != -1
    # 0 valid targets gives nan, as F.cross_entropy does.
    n_valid = valid.sum().to(torch.float32)
    safe_t = torch.where(valid, targets, torch.zeros_like(targets))
    cols = torch.arange(w.size(0), device=h.device)
    return valid, safe_t, n_valid, cols


def _chunked_loss_only(h, w, targets, vocab: int, chunk: int) -> torch.Tensor:
    """The same mean loss with no gradient work at all (evaluation, no_grad)."""
    valid, safe_t, n_valid, cols = _prepare(h, w, targets)
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    part = _fused(_chunk_loss, h.device)
    for s in range(0, h.size(0), chunk):
        loss = loss + part(h[s:s + chunk], w, safe_t[s:s + chunk], valid[s:s + chunk], cols, vocab)
    return loss / n_valid


def chunked_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab: int,
                          chunk_tokens: int = 4096) -> torch.Tensor:
    """F.cross_entropy(x @ weight.T[:, :vocab], targets, ignore_index=-1) without full logits.

    Matmuls run in the autocast dtype when autocast is on (as nn.Linear would), the
    softmax in fp32 (as the plain path's .float() does). Gradients are computed in the
    forward only when autograd will ask for them.
    """
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    # (B, T, C) -> (B*T, C)
    h = x.reshape(-1, x.size(-1)).to(dtype)
    w = weight.to(dtype)
    chunk = max(1, int(chunk_tokens))
    wants_grad = torch.is_grad_enabled() and (h.requires_grad or w.requires_grad)
    with torch.autocast(dev, enabled=False):
        if not wants_grad:
            return _chunked_loss_only(h, w, targets.reshape(-1), vocab, chunk)
        return _LinearCrossEntropy.apply(h, w, targets.reshape(-1), vocab, chunk)
