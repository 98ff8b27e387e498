"""A gptlab GPT as a transformers causal LM (self-contained: torch and transformers only).

Parameter names are gptlab's own, so an export copies tensors without renaming. The forward pass is
the one gptlab trains: token embedding (times sqrt(n_embd) when embed_scale) plus learned positions,
pre-LN blocks with causal scaled-dot-product attention over n_head heads of head_dim, a GELU MLP,
a final LayerNorm and the output layer over the real vocabulary. No cache: every step recomputes."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_gptlab import GptlabConfig

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


class GptlabAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        inner = config.n_head * config.head_dim
        self.q_proj = nn.Linear(config.n_embd, inner, bias=config.bias)
        self.k_proj = nn.Linear(config.n_embd, inner, bias=config.bias)
        self.v_proj = nn.Linear(config.n_embd, inner, bias=config.bias)
        self.c_proj = nn.Linear(inner, config.n_embd, bias=config.bias)

    def forward(self, hidden):
        batch, length, _ = hidden.shape
        heads = [proj(hidden).view(batch, length, self.n_head, self.head_dim).transpose(1, 2)
                 for proj in (self.q_proj, self.k_proj, self.v_proj)]
        attended = F.scaled_dot_product_attention(*heads, is_causal=True)
        attended = attended.transpose(1, 2).contiguous().view(batch, length, self.n_head * self.head_dim)
        return self.c_proj(attended)


class GptlabMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_dim, bias=config.bias)
        self.act = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(config.mlp_dim, config.n_embd, bias=config.bias)

    def forward(self, hidden):
        return self.c_proj(self.act(self.c_fc(hidden)))


class GptlabBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps, bias=config.bias)
        self.attn = GptlabAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps, bias=config.bias)
        self.mlp = GptlabMLP(config)

    def forward(self, hidden):
        hidden = hidden + self.attn(self.ln_1(hidden))
        return hidden + self.mlp(self.ln_2(hidden))


class GptlabModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList([GptlabBlock(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.embed_multiplier = math.sqrt(config.n_embd) if config.embed_scale else 1.0
        self.block_size = config.block_size

    def forward(self, input_ids):
        length = input_ids.shape[1]
        if length > self.block_size:
            raise ValueError(f"{length} tokens exceed the model's context of {self.block_size}")
        hidden = self.wte(input_ids)
        if self.embed_multiplier != 1.0:
            hidden = hidden * self.embed_multiplier
        hidden = hidden + self.wpe(torch.arange(length, device=input_ids.device))
        for block in self.h:
            hidden = block(hidden)
        return self.ln_f(hidden)


class GptlabPreTrainedModel(PreTrainedModel):
    config_class = GptlabConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["GptlabBlock"]

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class GptlabForCausalLM(GptlabPreTrainedModel, GenerationMixin):
    # transformers 5 maps target -> source; 4.x lists the tied targets.
    _tied_weights_keys = ({"lm_head.weight": "transformer.wte.weight"} if _TRANSFORMERS_MAJOR >= 5
                          else ["lm_head.weight"])

    def __init__(self, config):
        super().__init__(config)
        self.transformer = GptlabModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, value):
        self.transformer.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("padding is not supported: pass sequences of equal length without padding")
        logits = self.lm_head(self.transformer(input_ids))
        loss = None
        if labels is not None:  # next-token loss, labels aligned with input_ids as transformers does
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)
