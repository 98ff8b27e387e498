"""GPT-2 written out independently of gptlab.model, as a researcher would bring it: learned positions,
LayerNorm, GELU MLP, fused QKV, weights tied as the config says. Parameter names are GPT-2's, so the
built-in GPT's weights load into it. No flops_per_token: gptlab counts its FLOPs. One option, `scale`,
multiplies the logits (1.0 = the baseline)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.width = c.n_head, c.head_dim
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_head * c.head_dim, bias=c.bias)
        self.c_proj = nn.Linear(c.n_head * c.head_dim, c.n_embd, bias=c.bias)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.heads, self.width).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / self.width**0.5
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1, self.ln_2 = (
            nn.LayerNorm(c.n_embd, bias=c.bias),
            nn.LayerNorm(c.n_embd, bias=c.bias),
        )
        self.attn = Attention(c)
        self.mlp = nn.ModuleDict(
            dict(
                c_fc=nn.Linear(c.n_embd, c.mlp_dim, bias=c.bias),
                c_proj=nn.Linear(c.mlp_dim, c.n_embd, bias=c.bias),
            )
        )
        self.gelu = "tanh" if c.gelu == "tanh" else "none"

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate=self.gelu))


class TinyGPT(nn.Module):
    config_defaults = {"scale": 1.0}

    def __init__(self, config):
        super().__init__()
        self.config = c = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(c.padded_vocab, c.n_embd),
                wpe=nn.Embedding(c.block_size, c.n_embd),
                h=nn.ModuleList(Layer(c) for _ in range(c.n_layer)),
                ln_f=nn.LayerNorm(c.n_embd, bias=c.bias),
            )
        )
        self.lm_head = nn.Linear(c.n_embd, c.padded_vocab, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx, return_hidden=False):
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.size(1), device=idx.device))
        for layer in t.h:
            x = layer(x)
        x = t.ln_f(x) * self.config.scale
        return x if return_hidden else self.lm_head(x)
