"""Configuration of a gptlab GPT exported for transformers (self-contained: torch and transformers
only)."""

from transformers import PretrainedConfig


class GptlabConfig(PretrainedConfig):
    """The shape of a gptlab GPT: GPT-2's pre-LN blocks with Languini's options (token-embedding scale,
    head width independent of the residual width, exact or tanh GELU, optional biases, untied head)."""

    model_type = "gptlab_gpt"
    attribute_map = {"hidden_size": "n_embd", "num_attention_heads": "n_head",
                     "num_hidden_layers": "n_layer", "max_position_embeddings": "block_size"}

    def __init__(self, n_layer=12, n_head=12, n_embd=768, head_dim=64, mlp_dim=3072, block_size=1024,
                 vocab_size=50257, bias=True, embed_scale=False, gelu="tanh", layer_norm_epsilon=1e-5,
                 tie_word_embeddings=True, **kwargs):
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.head_dim, self.mlp_dim, self.block_size = head_dim, mlp_dim, block_size
        self.vocab_size, self.bias, self.embed_scale = vocab_size, bias, embed_scale
        self.gelu, self.layer_norm_epsilon = gelu, layer_norm_epsilon
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
