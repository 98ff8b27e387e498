"""A modern transformer block as a gptlab idea: rotary positions (no position embedding), RMSNorm,
a SwiGLU MLP (2/3 of mlp_dim, so its three matrices hold as many weights as the GPT's two), no biases.

    gptlab train baby --model examples/ideas/modern_block.py:ModernGPT --rope_base 500000
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rotate(x, cos, sin):
    """Rotary positions: each (first half, second half) pair of a head turned by its angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = c.n_head, c.head_dim, c.dropout
        inner, self.hidden = c.n_head * c.head_dim, 2 * c.mlp_dim // 3
        self.norm_1, self.norm_2 = nn.RMSNorm(c.n_embd), nn.RMSNorm(c.n_embd)
        self.qkv = nn.Linear(c.n_embd, 3 * inner, bias=False)
        self.attn_out = nn.Linear(inner, c.n_embd, bias=False)
        self.q_norm = nn.RMSNorm(c.head_dim) if c.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(c.head_dim) if c.qk_norm else nn.Identity()
        self.gate_up = nn.Linear(c.n_embd, 2 * self.hidden, bias=False)
        self.mlp_out = nn.Linear(self.hidden, c.n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = (
            self.qkv(self.norm_1(x)).view(B, T, 3, self.n_head, self.head_dim).transpose(1, 3).unbind(2)
        )
        q, k = rotate(self.q_norm(q), cos, sin), rotate(self.k_norm(k), cos, sin)  # (B, H, T, D)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        x = x + F.dropout(self.attn_out(y.transpose(1, 2).reshape(B, T, -1)), drop)
        gate, up = self.gate_up(self.norm_2(x)).chunk(2, dim=-1)
        return x + F.dropout(self.mlp_out(F.silu(gate) * up), drop)


class ModernGPT(nn.Module):
    config_defaults = {"rope_base": 10000.0, "qk_norm": False}

    def __init__(self, config):
        super().__init__()
        if config.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {config.head_dim}")
        self.config = c = config
        self.wte = nn.Embedding(c.padded_vocab, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.norm = nn.RMSNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.padded_vocab, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    @torch.no_grad()
    def init_weights(self):
        """N(0, 0.02) weights, std 0.02/sqrt(2L) on the residual outputs, unit norm gains."""
        if self.config.tie_embeddings:  # a meta-device build moved by to_empty() comes untied
            self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                out = name.endswith(("attn_out.weight", "mlp_out.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.config.n_layer) if out else 0.02)

    def forward(self, idx, return_hidden=False):
        c, T = self.config, idx.size(1)
        freqs = c.rope_base ** -(torch.arange(0, c.head_dim, 2, device=idx.device) / c.head_dim)
        angles = torch.arange(T, device=idx.device)[:, None] * freqs[None]  # (T, head_dim / 2)
        cos, sin = angles.cos(), angles.sin()
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, cos.to(x.dtype), sin.to(x.dtype))
        x = self.norm(x)
        return x if return_hidden else self.lm_head(x)

    def flops_per_token(self, seq_len):
        """6N + 12*L*H*Q*T: N the matmul weights (the output layer included), T the sequence length."""
        c = self.config
        inner, hidden = c.n_head * c.head_dim, 2 * c.mlp_dim // 3
        matmul = c.n_layer * (c.n_embd * 4 * inner + 3 * c.n_embd * hidden) + c.n_embd * c.padded_vocab
        return 6 * matmul + 12 * c.n_layer * inner * seq_len
