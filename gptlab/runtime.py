"""Small shared helpers: precision, compile, data folders."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from gptlab.errors import UserError

def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype training runs `name` with on `device` (config.dtype_for): sample and eval agree with it."""
    from gptlab.config import dtype_for

    return getattr(torch, dtype_for(name, device))


def resolve_ce_chunk(ce_chunk: int, compile_mode: str) -> int:
    """Tokens per chunk of the linear+cross-entropy; 0 = the plain loss.

    -1 (auto) picks the chunked loss under torch.compile, which fuses its softmax and
    gradient into one pass over bf16 logits (faster and 2 GiB lighter than the plain loss
    for GPT-2 on an H100, BENCHMARKS.md), and the plain loss in eager mode, where
    F.cross_entropy's own kernels are the fast path.
    """
    if ce_chunk >= 0:
        return ce_chunk
    return 8192 if compile_mode != "none" else 0


def compile_model(model: torch.nn.Module, mode: str, scope: str = "model", dynamic: bool | None = None):
    """torch.compile in one of config.COMPILE_MODES ("none" returns the model as it is).

    scope "blocks" compiles each transformer block in place instead: one graph compiled
    once and reused by every layer (much shorter compile); the loss and embeddings stay eager.
    """
    if mode == "none":
        return model
    kw = {} if mode == "default" else {"mode": mode}
    if scope == "blocks":
        for block in model.transformer.h:
            block.compile(dynamic=dynamic, **kw)
        return model
    return torch.compile(model, dynamic=dynamic, **kw)


def autocast_ctx(device: torch.device, dtype: torch.dtype):
    """Mixed precision: weights stay fp32, matmuls run in dtype."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_data_dir(dataset: str, data_root: str) -> Path:
    """A dataset is a folder with meta.json: a path, or a name under data_root."""
    p = Path(dataset)
    if (p / "meta.json").is_file():
        return p
    q = Path(data_root) / dataset
    if (q / "meta.json").is_file():
        return q
    raise UserError(f"dataset {dataset!r} not found (looked for {q}/meta.json): run `gptlab prepare {dataset}` "
                    f"first or pass --data_root/--dataset")


def token_byte_lengths(meta: dict, data_dir: Path) -> np.ndarray | None:
    """UTF-8 bytes each token id stands for (special tokens count 0), for per-byte metrics."""
    from gptlab.data.tokenizers import tokenizer_from_meta

    try:
        tok = tokenizer_from_meta(meta, Path(data_dir))
    except UserError:
        return None
    fn = getattr(tok, "token_byte_lengths", None)
    if fn is not None:
        return np.asarray(fn(), dtype=np.float64)
    return np.asarray([len(tok.decode([i]).encode("utf-8")) for i in range(tok.vocab_size)], dtype=np.float64)


def build_model_from_config(cfg, vocab_size: int | None = None):
    from gptlab.model import GPT, GPTShape

    return GPT(GPTShape.from_config(cfg.model, vocab_size))
