"""Small shared helpers: precision, compile, data folders."""

import contextlib
import difflib
from pathlib import Path

import torch

from gptlab import registry
from gptlab.config_check import dtype_for
from gptlab.errors import UserError


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype training runs `name` with on `device` (config_check.dtype_for): sample and eval agree
    with it."""
    return getattr(torch, dtype_for(name, device))


def compile_model(model: torch.nn.Module, mode: str, scope: str = "model", dynamic: bool | None = None):
    """torch.compile in one of config.COMPILE_MODES ("none": as it is); scope "blocks" compiles each
    block in place."""
    if mode == "none":
        return model
    kw = {} if mode == "default" else {"mode": mode}
    if scope == "blocks":
        for block in registry.blocks(model):
            block.compile(dynamic=dynamic, **kw)
        return model
    return torch.compile(model, dynamic=dynamic, **kw)


def autocast_ctx(device: torch.device, dtype: torch.dtype):
    """Mixed precision: weights stay fp32, matmuls run in dtype."""
    return (contextlib.nullcontext() if dtype == torch.float32
            else torch.autocast(device_type=device.type, dtype=dtype))


def resolve_data_dir(dataset: str, data_root: str) -> Path:
    """A dataset is a folder with meta.json: a path, or a name under data_root."""
    for p in (Path(dataset), Path(data_root) / dataset):
        if (p / "meta.json").is_file():
            return p
    root = Path(data_root)
    names = [p.name for p in root.iterdir() if (p / "meta.json").is_file()] if root.is_dir() else []
    close = difflib.get_close_matches(Path(dataset).name, names, n=1)
    fix = (f"did you mean --dataset {close[0]}?" if close else
           f"run `gptlab prepare {dataset}` first or pass --data_root/--dataset")
    raise UserError(f"dataset {dataset!r} not found (looked for {root / dataset}/meta.json): {fix}")
