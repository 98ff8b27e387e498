"""GPT-2 weights in: Hugging Face folders and the HF cache, read and converted into gptlab's GPT. Names
already follow HF's GPT-2: conversion strips `transformer.`, transposes the Conv1D weights (HF stores
(in, out)), drops the causal-mask buffers and pads the vocabulary rows; logits match transformers' within
float error. The way out is hf_export; gptlab.hf names both."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from gptlab.config import ModelConfig
from gptlab.errors import UserError
from gptlab.files import read_json
from gptlab.model import derived_shape, padded_vocab
from gptlab.registry import build_model

# Short names users type -> today's hub ids (caches filled before the move use the short id).
PRETRAINED = {n: "openai-community/" + n for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
# HF's Conv1D stores weights (in, out); these are the ones to transpose.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# The causal mask (and the -1e4 fill value) that older transformers saved as buffers.
_MASK_BUFFER = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$")
# Both spell the tanh approximation of GELU that GPT-2 was trained with; "gelu" is the exact erf form.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
GELU_NAMES = {**dict.fromkeys(TANH_GELUS, "tanh"), "gelu": "exact"}
_LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which gptlab's blocks use
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _has_weights(d: Path) -> bool:
    return (d / "config.json").is_file() and any((d / f).is_file() for f in WEIGHT_FILES)


def hf_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The huggingface_hub cache: the argument, else what huggingface_hub would use."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    # huggingface_hub's own rule: HF_HUB_CACHE, else HF_HOME/hub, else
    # XDG_CACHE_HOME (~/.cache)/huggingface/hub
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(os.environ.get("HF_HUB_CACHE") or Path(home) / "hub").expanduser()


def _repo_ids(name: str) -> list[str]:
    """The hub ids to look for: today's (openai-community/...) first, then the pre-move one."""
    short = name.removeprefix("openai-community/")
    return [PRETRAINED[short], short] if short in PRETRAINED else [name]


def find_in_cache(name: str, cache_dir: str | Path | None = None) -> Path | None:
    """A complete snapshot of `name` in the HF hub cache (models--{owner}--{name}/snapshots/),
    found without any network: the one refs/main names, else the newest complete one."""
    root = hf_cache_dir(cache_dir)
    for repo in _repo_ids(name):
        base = root / ("models--" + repo.replace("/", "--"))
        snaps = base / "snapshots"
        if not snaps.is_dir():
            continue
        ref = base / "refs" / "main"
        if ref.is_file() and _has_weights(snaps / ref.read_text().strip()):
            return snaps / ref.read_text().strip()
        done = [d for d in snaps.iterdir() if d.is_dir() and _has_weights(d)]
        if done:
            return max(done, key=lambda d: d.stat().st_mtime)
    return None


def _download(name: str, cache_dir: str | Path | None) -> Path | None:
    """Fetch config + weights through huggingface_hub; None when that is impossible."""
    if os.environ.get("GPTLAB_OFFLINE") == "1":  # (huggingface_hub honours HF_HUB_OFFLINE itself)
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    # safetensors first (single file, index, shards): smaller to parse, and no unpickling at all.
    for weights in ("model*.safetensors*", "pytorch_model*.bin*"):
        try:
            d = Path(snapshot_download(repo_id=_repo_ids(name)[0],
                                       allow_patterns=["config.json", weights],
                                       cache_dir=str(cache_dir) if cache_dir else None))
        except Exception:  # no network, unknown repo, proxy: all mean "not obtainable here"
            return None
        if _has_weights(d):
            return d
    return None


def resolve_pretrained(name_or_path: str, cache_dir: str | Path | None = None) -> Path:
    """The folder holding config.json + weights for a GPT-2 name or a local path."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"{p} has no config.json: pass a Hugging Face model folder (config.json + "
                            "model.safetensors)")
        if not _has_weights(p):
            raise UserError(f"{p} has a config.json but no model.safetensors or pytorch_model.bin: "
                            "copy the weights there")
        return p
    # Anything else must look like a hub id ("owner/name"); a mistyped local path must not
    # turn into a network request.
    if name_or_path not in PRETRAINED and not _HUB_ID.fullmatch(name_or_path):
        raise UserError(f"{name_or_path!r} is neither a folder nor one of {', '.join(PRETRAINED)}: "
                        "give a Hugging Face model folder (config.json + model.safetensors) or a GPT-2 "
                        "name")
    d = find_in_cache(name_or_path, cache_dir) or _download(name_or_path, cache_dir)
    if d is None:
        raise UserError(f"{name_or_path} is not in the Hugging Face cache ({hf_cache_dir(cache_dir)}) "
                        f"and could not be downloaded: on a machine with network run `hf download "
                        f"{_repo_ids(name_or_path)[0]} config.json model.safetensors` (pip install "
                        "huggingface_hub) and copy the cache here, or pass a local folder holding "
                        "config.json + model.safetensors")
    return d


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("GPT-2 import and export need the safetensors package: pip install "
                        "safetensors") from None
    return safetensors.torch


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    st = _safetensors()
    try:
        return st.load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise UserError(f"{path} is not a readable safetensors file ({e}): re-download or re-export "
                        "it") from None


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    # weights_only: a checkpoint is data; full unpickling would run whatever code it names.
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} holds more than tensors and will not be unpickled "
                        f"({str(e).splitlines()[0]}): convert it to model.safetensors with a trusted "
                        "tool") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path} is not a readable PyTorch weights file ({e}): re-download it") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} does not hold a flat dict of tensors: pass a Hugging Face GPT-2 "
                        "weights file")
    return sd


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF folder: model.safetensors preferred, sharded indexes followed."""
    folder = Path(folder)
    for single, index, loader in (
            ("model.safetensors", "model.safetensors.index.json", _load_safetensors),
            ("pytorch_model.bin", "pytorch_model.bin.index.json", _load_bin)):
        if (folder / single).is_file():
            return loader(folder / single)
        if (folder / index).is_file():
            try:
                shards = sorted(set(read_json(folder / index, "shard index")["weight_map"].values()))
            except (KeyError, AttributeError, TypeError):
                raise UserError(f"{folder / index} is not a valid shard index: re-download the "
                                "model") from None
            sd: dict[str, torch.Tensor] = {}
            for s in shards:
                # A shard is a plain file name beside its index: never a path that leads elsewhere.
                if not isinstance(s, str) or Path(s).name != s or s in ("", ".", ".."):
                    raise UserError(f"{folder / index} names shard {str(s)[:80]!r} outside its folder: "
                                    "refusing to read it; re-download the model from a source you trust")
                if not (folder / s).is_file():
                    raise UserError(f"{folder} lacks shard {s} listed in {index}: re-download the model")
                sd.update(loader(folder / s))
            return sd
    raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin: copy the weights there")


def overrides_from_hf_config(hf: dict, pad_vocab_multiple: int = 64) -> dict[str, Any]:
    """ModelConfig values for a GPT-2 config.json; UserError for what gptlab cannot express."""
    # What gptlab's blocks compute exactly; any other value is another architecture.
    for key, ok in (("model_type", ("gpt2",)), ("activation_function", tuple(GELU_NAMES)),
                    ("layer_norm_epsilon", (_LN_EPS,)), ("scale_attn_weights", (True,)),
                    ("scale_attn_by_inverse_layer_idx", (False,)), ("add_cross_attention", (False,))):
        if key in hf and hf[key] not in ok:
            raise UserError(f"config.json: {key} {hf[key]!r} is not supported: gptlab imports "
                            f"GPT2LMHeadModel with {key} {' or '.join(map(repr, ok))} only")
    try:
        n_layer, n_head, n_embd = int(hf["n_layer"]), int(hf["n_head"]), int(hf["n_embd"])
        n_pos, vocab = int(hf.get("n_positions", hf.get("n_ctx"))), int(hf["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"config.json: missing or bad GPT-2 field {e}: it must give n_layer, n_head, "
                        "n_embd, n_positions, vocab_size") from None
    if n_embd % n_head:
        raise UserError(f"config.json: n_embd {n_embd} is not divisible by n_head {n_head}: not a valid "
                        "GPT-2 config")
    n_inner = hf.get("n_inner")
    return dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, head_dim=0,
                mlp_dim=0 if n_inner in (None, 4 * n_embd) else int(n_inner), block_size=n_pos,
                vocab_size=vocab, pad_vocab_multiple=pad_vocab_multiple, bias=True,
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)), embed_scale=False, qkv="fused",
                gelu=GELU_NAMES[hf.get("activation_function", "gelu_new")])


def _shape_from_overrides(ov: dict[str, Any], dropout: float = 0.0) -> ModelConfig:
    return derived_shape(dataclasses.replace(ModelConfig(), **ov, dropout=dropout))


def convert_hf_state(hf_sd: dict[str, torch.Tensor], shape: ModelConfig) -> dict[str, torch.Tensor]:
    """HF GPT-2 tensors -> a state dict that build_model(shape).load_state_dict accepts (strict)."""
    src: dict[str, torch.Tensor] = {}
    for k, v in hf_sd.items():
        if _MASK_BUFFER.search(k):
            continue
        # GPT2LMHeadModel saves "transformer.h.0...", GPT2Model (OpenAI's own upload) "h.0...".
        k = k.removeprefix("transformer.")
        src[k if k.startswith("lm_head.") else "transformer." + k] = v
    with torch.device("meta"):  # shapes and names only: no memory for gpt2-xl twice over
        expected = build_model(shape).state_dict()
    out: dict[str, torch.Tensor] = {}
    # real and padded vocabulary rows
    V, P = shape.vocab_size, padded_vocab(shape.vocab_size, shape.pad_vocab_multiple)
    for name, ref in expected.items():
        if name == "lm_head.weight" and shape.tie_embeddings:
            continue  # filled below with the very same tensor as wte
        if name not in src:
            raise UserError(f"weights lack {name.removeprefix('transformer.')}: the folder is not a "
                            "complete GPT-2 checkpoint for its config.json")
        t = src.pop(name).to(torch.float32)
        if name.endswith(CONV1D_SUFFIXES) and t.dim() == 2:
            t = t.t()
        if name in ("transformer.wte.weight", "lm_head.weight") and len(t) == V:
            # Padded rows are zero: never produced as logits (forward trims them) and zero
            # keeps them inert for weight decay and tied gradients.
            t = torch.cat([t, t.new_zeros(P - V, *t.shape[1:])])
        if tuple(t.shape) != tuple(ref.shape):
            raise UserError(f"{name} has shape {tuple(t.shape)} but config.json implies "
                            f"{tuple(ref.shape)}: weights and config.json do not belong together")
        out[name] = t.contiguous()
    if shape.tie_embeddings:
        src.pop("lm_head.weight", None)  # tied: HF ignores a saved copy on load as well
        out["lm_head.weight"] = out["transformer.wte.weight"]
    if src:
        extra = ", ".join(sorted(src)[:4]) + (" ..." if len(src) > 4 else "")
        raise UserError(f"weights hold tensors a GPT-2 LM does not have ({extra}): not a plain "
                        "GPT2LMHeadModel checkpoint")
    return out


def load_gpt2_state(name_or_path: str, cache_dir: str | Path | None = None,
                    pad_vocab_multiple: int = 64) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(ModelConfig overrides, state dict) for a GPT-2 name or HF folder: GPT of the overridden
    config loads the state strictly (vocabulary rows padded to pad_vocab_multiple)."""
    folder = resolve_pretrained(name_or_path, cache_dir)
    hf = read_json(folder / "config.json", "model config")
    if not isinstance(hf, dict):
        raise UserError(f"{folder / 'config.json'} does not hold a config object")
    ov = overrides_from_hf_config(hf, pad_vocab_multiple)
    return ov, convert_hf_state(read_weights(folder), _shape_from_overrides(ov))


def gpt_from_pretrained(name_or_path: str, dropout: float = 0.0, block_size: int | None = None,
                        cache_dir: str | Path | None = None,
                        pad_vocab_multiple: int = 64) -> torch.nn.Module:
    """A GPT with GPT-2's weights; block_size below n_positions crops the position table."""
    ov, state = load_gpt2_state(name_or_path, cache_dir, pad_vocab_multiple)
    if block_size is not None and block_size > ov["block_size"]:
        raise UserError(f"--block_size {block_size} exceeds the {ov['block_size']} positions "
                        f"{name_or_path} was trained with: use --block_size {ov['block_size']} or less")
    model = build_model(_shape_from_overrides(ov, dropout))
    model.load_state_dict(state)
    if block_size is not None and block_size < ov["block_size"]:
        model.crop_block_size(block_size)
    return model

