"""Autoregressive generation with a KV cache, and the sampling filters."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token if the tokens before it already reach top_p (the first always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, temperature: float, top_k, top_p, generator) -> torch.Tensor:
    if temperature == 0:  # greedy
        return logits.argmax(-1, keepdim=True)
    probs = F.softmax(filter_logits(logits.float(), temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None, stop_id: int | None = None) -> torch.Tensor:
    """Extend idx (B, T) by up to max_new_tokens tokens.

    The context is always the last block_size tokens. With the cache, each step feeds only
    the new token; once the cache is full it is rebuilt from the last block_size tokens,
    which is exactly the context the uncached path uses - so both paths give the same
    tokens (greedy, or sampling with the same generator). The speed-up is within the
    first block_size tokens; past them each step is a full forward, as without a cache.
    """
    model.eval()
    block = model.shape.block_size
    cache = None
    for _ in range(max_new_tokens):
        if use_cache:
            if cache is None or cache.pos >= block:
                cache = model.new_cache(idx.size(0))
                logits = model(idx[:, -block:], cache=cache)
            else:
                logits = model(idx[:, -1:], cache=cache)
        else:
            logits = model(idx[:, -block:])
        # padded vocab columns (embedding padding) are never sampled
        nxt = next_token(logits[:, -1, :model.shape.vocab_size], temperature, top_k, top_p, generator)
        idx = torch.cat([idx, nxt], dim=1)
        if stop_id is not None and bool((nxt == stop_id).all()):
            break
    return idx
