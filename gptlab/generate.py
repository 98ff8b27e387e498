"""Autoregressive generation with a KV cache: `filter_logits` (temperature, top-k, top-p),
`sample` (one token per row, on the device) and `generate`."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Scale by temperature, keep the top_k most likely and the smallest set whose
    probability reaches top_p; everything else becomes -inf."""
    logits = logits / max(temperature, 1e-8)
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        sorted_probs = sorted_logits.softmax(-1)
        # drop a token if the tokens before it already reach top_p (the first always stays)
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B, 1) token ids; temperature 0 is greedy. The exponential race
    (argmax of p / E, E ~ Exp(1)) picks token i with probability p_i, with no host sync."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = filter_logits(logits.float(), temperature, top_k, top_p).softmax(-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(-1, keepdim=True)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend idx (B, T) by max_new_tokens tokens, the context always the last block_size tokens.
    A full cache is rebuilt from exactly that context, so cached and uncached paths give the same
    tokens. The loop never reads a tensor back to the host (the caller's .tolist() is the sync)."""
    model.eval()
    block = model.config.block_size
    # an idea without a cache recomputes the window
    use_cache = use_cache and hasattr(model, "new_cache")
    cache = None
    for _ in range(max_new_tokens):
        # Model input: the whole window (no cache, or a new or full one, rebuilt) or the newest token.
        if use_cache and (cache is None or cache.pos >= block):
            cache = model.new_cache(idx.size(0))
        whole = cache is None or cache.pos == 0
        window = idx[:, -block:] if whole else idx[:, -1:]
        logits = model(window) if cache is None else model(window, cache=cache)
        # padded vocab columns (embedding padding) are never sampled
        # (B, 1)
        nxt = sample(logits[:, -1, :model.config.vocab_size], temperature, top_k, top_p, generator)
        idx = torch.cat([idx, nxt], dim=1)
    return idx
