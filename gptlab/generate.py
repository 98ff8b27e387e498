"""Autoregressive generation with a KV cache, built from two small pure functions:
`logits_to_probs` (temperature, top-k, top-p) and `sample` (one token per row)."""

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
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """(B, V) logits -> (B, V) fp32 probabilities after the filters."""
    return filter_logits(logits.float(), temperature, top_k, top_p).softmax(-1)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B, 1) token ids; temperature 0 is greedy.

    Draws with the exponential race (argmax of p / E, E ~ Exp(1)), which picks token i
    with probability p_i exactly like multinomial but stays on the device: no host sync.
    """
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(-1, keepdim=True)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend idx (B, T) by max_new_tokens tokens.

    The context is always the last block_size tokens. With the cache, each step feeds only
    the new token; once the cache is full it is rebuilt from the last block_size tokens,
    which is exactly the context the uncached path uses - so both paths give the same
    tokens (greedy, or sampling with the same generator). The loop never reads a tensor
    back to the host; the caller's .tolist() is the one sync.
    """
    model.eval()
    block = model.shape.block_size
    cache = None
    for _ in range(max_new_tokens):
        # Pick the model input: the whole window (no cache, or a full cache) or the newest token.
        if not use_cache:
            logits = model(idx[:, -block:])
        elif cache is None or cache.pos >= block:
            cache = model.new_cache(idx.size(0))
            logits = model(idx[:, -block:], cache=cache)
        else:
            logits = model(idx[:, -1:], cache=cache)
        # padded vocab columns (embedding padding) are never sampled
        nxt = sample(logits[:, -1, :model.shape.vocab_size], temperature, top_k, top_p, generator)  # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
    return idx
