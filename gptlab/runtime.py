"""Small shared helpers: device, precision, data folders, loading a trained run."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from gptlab.errors import UserError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' = bf16 on a GPU that has it, else fp32 (CPU autocast is rarely faster)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"--dtype {name!r}: use auto, bfloat16, float16 or float32")
    return DTYPES[name]


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


def load_run_model(cfg, ckpt_path: Path, device_name: str = "auto", dtype_name: str = "auto"):
    """(model in eval mode on device, device, autocast context, checkpoint's other entries)."""
    from gptlab import checkpoint as ck
    from gptlab.distributed import pick_device

    device = pick_device(device_name)
    state = ck.load_checkpoint(ckpt_path)
    model = build_model_from_config(cfg)
    sd = state.pop("model")
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise UserError(f"checkpoint {ckpt_path} does not fit the config ({str(e).splitlines()[0][:150]}): "
                        "pass the config.json of the run that wrote it") from None
    model.to(device).eval()
    dtype = resolve_dtype(dtype_name, device)
    return model, device, autocast_ctx(device, dtype), state
