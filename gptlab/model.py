"""The GPT model: GPT-2 and its Languini variant as options of one class. Token ids in, logits over the
padded vocabulary (or final hidden states) out; the loss is gptlab/loss.py. init_weights() is separate
from construction (meta-device builds). Parameter names follow HF's GPT-2: weights convert by
transposition alone."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.config import ModelConfig


def padded_vocab(vocab_size: int, multiple: int) -> int:
    """Embedding rows rounded up: matmuls with a multiple-of-64 dimension run faster."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


def derived_shape(config: ModelConfig) -> ModelConfig:
    """A copy of config with the derived sizes filled in (head_dim, mlp_dim: 0 = derived)."""
    if not config.vocab_size:
        raise ValueError("vocab_size unknown: set it in the config or read it from the dataset")
    return replace(config, head_dim=config.head_dim or config.n_embd // config.n_head,
                   mlp_dim=config.mlp_dim or 4 * config.n_embd)


class KVCache:
    """Keys and values of every layer for generation, preallocated to max_len."""

    def __init__(self, n_layer: int, batch: int, n_head: int, head_dim: int, max_len: int, device,
                 dtype):
        shape = (batch, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.pos = 0  # tokens already stored


class CausalSelfAttention(nn.Module):
    def __init__(self, s: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = s.n_head, s.head_dim
        inner = s.n_head * s.head_dim  # may differ from n_embd (Languini mini, XL)
        self.fused = s.qkv == "fused"
        if self.fused:
            self.c_attn = nn.Linear(s.n_embd, 3 * inner, bias=s.bias)
        else:
            self.q_proj = nn.Linear(s.n_embd, inner, bias=s.bias)
            self.k_proj = nn.Linear(s.n_embd, inner, bias=s.bias)
            self.v_proj = nn.Linear(s.n_embd, inner, bias=s.bias)
        self.c_proj = nn.Linear(inner, s.n_embd, bias=s.bias)
        self.dropout = s.dropout
        self.resid_drop = nn.Dropout(s.dropout)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, 3*H*D) in one matmul; separate Q/K/V weights (the Languini layout,
        kept in state_dicts) are concatenated per call, a copy tiny next to the matmul."""
        if self.fused:
            return self.c_attn(x)
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        b = None if self.q_proj.bias is None else torch.cat([self.q_proj.bias, self.k_proj.bias,
                                                             self.v_proj.bias])
        return F.linear(x, w, b)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.n_head * self.head_dim, dim=2)
        # (B, T, H*D) -> (B, H, T, D)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        drop = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:
            p = cache.pos
            cache.k[layer][:, :, p:p + T] = k
            cache.v[layer][:, :, p:p + T] = v
            k_all, v_all = cache.k[layer][:, :, :p + T], cache.v[layer][:, :, :p + T]
            if T == 1:  # one new token sees everything cached: no mask needed
                y = F.scaled_dot_product_attention(q, k_all, v_all)
            else:  # query i (absolute position p+i) sees keys 0..p+i
                mask = torch.ones(T, p + T, dtype=torch.bool, device=x.device).tril(diagonal=p)
                y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, s: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(s.n_embd, s.mlp_dim, bias=s.bias)
        self.act = nn.GELU(approximate="tanh" if s.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(s.mlp_dim, s.n_embd, bias=s.bias)
        self.drop = nn.Dropout(s.dropout)

    def forward(self, x):
        return self.drop(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, s: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(s.n_embd, bias=s.bias)
        self.attn = CausalSelfAttention(s)
        self.ln_2 = nn.LayerNorm(s.n_embd, bias=s.bias)
        self.mlp = MLP(s)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = s = derived_shape(config)
        self.padded_vocab = padded_vocab(s.vocab_size, s.pad_vocab_multiple)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(self.padded_vocab, s.n_embd),
            wpe=nn.Embedding(s.block_size, s.n_embd),
            drop=nn.Dropout(s.dropout),
            h=nn.ModuleList([Block(s) for _ in range(s.n_layer)]),
            ln_f=nn.LayerNorm(s.n_embd, bias=s.bias),
        ))
        self.lm_head = nn.Linear(s.n_embd, self.padded_vocab, bias=False)
        if s.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.embed_multiplier = math.sqrt(s.n_embd) if s.embed_scale else 1.0

    @torch.no_grad()
    def init_weights(self) -> "GPT":
        """Draw the initial weights: Linear/embedding ~ N(0, 0.02), biases 0, LayerNorm 1/0, and
        std 0.02/sqrt(2L) on the residual output projections (GPT-2: attention and MLP; Languini:
        MLP only). Draw order is fixed, so a seed gives the same weights on any device."""
        s = self.config
        if s.tie_embeddings:  # again: moving a meta-device model (to_empty) unties them
            self.lm_head.weight = self.transformer.wte.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        scaled = {"all": ("attn.c_proj.weight", "mlp.c_proj.weight"), "mlp": ("mlp.c_proj.weight",),
                  "none": ()}[s.scaled_init]
        for name, p in self.named_parameters():
            if name.endswith(scaled):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * s.n_layer))
        return self

    def forward(self, idx: torch.Tensor, return_hidden: bool = False,
                cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, padded_vocab), or with return_hidden the hidden states
        (B, T, n_embd) after the final LayerNorm; columns >= vocab_size are sliced off by gptlab.loss."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size "
                             f"{self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.wte(idx)
        if self.embed_multiplier != 1.0:
            x = x * self.embed_multiplier
        x = self.transformer.drop(x + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += T
        return x if return_hidden else self.lm_head(x)

    def crop_block_size(self, block_size: int) -> None:
        """Shorter context for fine-tuning: keep the first block_size position embeddings."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(
            self.transformer.wpe.weight[:block_size].detach().clone())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N + 12*L*H*Q*T (forward + backward, with attention), where N counts
        every Linear weight and the output layer (embeddings are lookups; biases and norms are ignored,
        as the PaLM-style estimate does)."""
        s, T = self.config, seq_len or self.config.block_size
        inner = s.n_head * s.head_dim
        per_block = s.n_embd * 3 * inner + inner * s.n_embd + 2 * s.n_embd * s.mlp_dim
        matmul_params = s.n_layer * per_block + s.n_embd * self.padded_vocab
        return 6 * matmul_params + 12 * s.n_layer * s.n_head * s.head_dim * T

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = next(self.parameters())
        s = self.config
        return KVCache(s.n_layer, batch, s.n_head, s.head_dim, max_len or s.block_size, p.device,
                       p.dtype)
