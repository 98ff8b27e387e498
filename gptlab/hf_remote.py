"""Export of a model GPT2LMHeadModel cannot hold (the Languini recipes: head width apart from the
residual width, a scaled tied embedding): a folder with its own modeling and configuration files
(gptlab/hf_code, torch and transformers only), loaded with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from gptlab.files import atomic_write_bytes, atomic_write_json

CODE_DIR = Path(__file__).parent / "hf_code"
CODE_FILES = ("configuration_gptlab.py", "modeling_gptlab.py")
AUTO_MAP = {"AutoConfig": "configuration_gptlab.GptlabConfig",
            "AutoModelForCausalLM": "modeling_gptlab.GptlabForCausalLM"}


def remote_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """gptlab's own names, real vocabulary rows, Q/K/V as three matrices (a fused one split in
    row thirds, the order gptlab's attention splits it), no copy of a tied output layer."""
    shape = model.config
    inner = shape.n_head * shape.head_dim
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if ".attn.c_attn." in name:
            stem, kind = name.split(".c_attn.")
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.split(inner)):
                out[f"{stem}.{proj}.{kind}"] = part.contiguous()
            continue
        if name in ("transformer.wte.weight", "lm_head.weight"):
            tensor = tensor[:shape.vocab_size]
        out[name] = tensor.contiguous()
    if shape.tie_embeddings:
        del out["lm_head.weight"]
    return out


def remote_config(model: nn.Module, common: dict[str, Any]) -> dict[str, Any]:
    """config.json for GptlabConfig: the shape's fields, the auto_map that names the code files."""
    shape = model.config
    return {
        "architectures": ["GptlabForCausalLM"], "model_type": "gptlab_gpt", "auto_map": AUTO_MAP,
        "n_layer": shape.n_layer, "n_head": shape.n_head, "n_embd": shape.n_embd,
        "head_dim": shape.head_dim, "mlp_dim": shape.mlp_dim, "block_size": shape.block_size,
        "bias": shape.bias, "embed_scale": shape.embed_scale, "gelu": shape.gelu,
        "layer_norm_epsilon": 1e-5, "tie_word_embeddings": shape.tie_embeddings, "use_cache": False,
        **common,
    }


def write_remote_model(model: nn.Module, out: Path, common: dict[str, Any]) -> None:
    from safetensors.torch import save

    for name in CODE_FILES:
        shutil.copyfile(CODE_DIR / name, out / name)
    atomic_write_bytes(out / "model.safetensors", save(remote_tensors(model), metadata={"format": "pt"}))
    atomic_write_json(out / "config.json", remote_config(model, common))
