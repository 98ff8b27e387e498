"""`gptlab model`: what `gptlab train` would build for the same arguments: shape, size, one dummy
batch. The vocab is the config's, else the prepared dataset's, else GPT-2's (assumed)."""

from __future__ import annotations

import math


def main(argv: list[str]) -> int:
    import torch

    from gptlab import registry
    from gptlab.commands.train import config_from_argv
    from gptlab.data.tokens import read_meta
    from gptlab.errors import UserError
    from gptlab.loss import logits_and_loss
    from gptlab.resolve import check_memory
    from gptlab.runtime import resolve_data_dir

    cfg, source = config_from_argv(argv), "set in the config"
    if not cfg.model.vocab_size:
        try:
            data_dir = resolve_data_dir(cfg.data.dataset, cfg.data.data_root)
        except UserError:
            cfg.model.vocab_size, source = 50257, (f"assumed GPT-2 BPE: dataset {cfg.data.dataset!r} is "
                                                   "not prepared here; run `gptlab prepare "
                                                   f"{cfg.data.dataset}` for the exact figure")
        else:
            cfg.model.vocab_size, source = (int(read_meta(data_dir)["vocab_size"]),
                                            f"from {data_dir}/meta.json")
    registry.resolve_model(cfg.model)  # an idea: its options typed
    check_memory(cfg, weights_only=True)
    model = registry.init_weights(registry.build_model(cfg.model))
    shape = model.config
    # the GPT's, or an idea's config's
    padded = getattr(model, "padded_vocab", None) or shape.padded_vocab
    x = torch.randint(0, shape.vocab_size, (2, min(shape.block_size, 64)))
    with torch.no_grad():
        logits, loss = logits_and_loss(model, x, x)
    print(f"preset {cfg.preset}: {shape.n_layer} layers, {shape.n_head} heads x {shape.head_dim}, width "
          f"{shape.n_embd}, mlp {shape.mlp_dim}, block {shape.block_size}, vocab {shape.vocab_size} "
          f"(padded {padded}; {source})")
    print(f"parameters: {registry.parameter_count(model):,}")
    fpt = registry.flops_per_token(model, shape.block_size)
    print(f"FLOPs per token ({registry.flops_note(model)}, T={shape.block_size}): {fpt:,.0f}")
    # .item(): a sync
    print(f"dummy batch {tuple(x.shape)} -> logits {tuple(logits.shape)}, loss {loss.item():.4f} "
          f"(ln vocab = {math.log(shape.vocab_size):.4f})")
    return 0
