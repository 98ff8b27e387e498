"""Config validation: impossible values, devices and memory are user errors found before anything is
built or written; the dtype a device runs."""

from __future__ import annotations

import difflib
import math
import os
import re

from gptlab.config import BUILTIN_OPTIMIZERS, FIELD_INFO, Config, parse_hours
from gptlab.errors import UserError

# ~1.1e12: above any real step count, interval or size; a typo like 1e18 is refused
INT_CEILING = 1 << 40


def validate(cfg: Config) -> None:
    """Impossible values are user errors, found before anything is built or written."""
    m, o, t = cfg.model, cfg.optim, cfg.train
    for k in ("learning_rate", "eps"):
        if cfg.get(k) <= 0:
            raise UserError(f"--{k} must be > 0, got {cfg.get(k)}")
    for k in ("dropout", "beta1", "beta2"):
        if not 0 <= cfg.get(k) < 1:
            raise UserError(f"--{k} must be in [0, 1), got {cfg.get(k)}")
    for k, fld in FIELD_INFO.items():
        v, low, high = cfg.get(k), fld.metadata["low"], fld.metadata["high"]
        if fld.type not in ("int", "float"):
            continue
        if isinstance(v, float) and not math.isfinite(v):  # NaN is refused when parsed, infinities here
            raise UserError(f"--{k} must be a finite number, got {v}")
        high = high or (INT_CEILING if fld.type == "int" else 0)  # no count gptlab reads may be absurd
        if v < low or (high and v > high):
            raise UserError(f"--{k} {v} is out of range: "
                            "use " + (f"{low} to {high}" if high else f"at least {low}"))
    if t.batch_size <= 0 and t.train_batch_size <= 0:
        raise UserError("set --batch_size (per-rank micro batch) or --train_batch_size (global batch) "
                        "to a positive number")
    if o.min_lr > o.learning_rate and o.decay_lr and o.schedule != "constant":
        raise UserError(f"--min_lr must be in [0, learning_rate={o.learning_rate}], got {o.min_lr}")
    if m.head_dim == 0 and m.n_embd % m.n_head:
        raise UserError(f"--n_embd {m.n_embd} is not divisible by --n_head {m.n_head}: change one, or "
                        "set --head_dim")
    if t.last_n and m.block_size % t.last_n:
        raise UserError(f"--last_n {t.last_n} must divide --block_size/--seq_len {m.block_size}")
    cores = os.cpu_count() or 1
    # far past the cores torch's thread pool crashes rather than slows
    if cfg.system.num_threads > 4 * cores:
        raise UserError(f"--num_threads {cfg.system.num_threads} is far more than this machine's "
                        f"{cores} cores: use at most {cores}, or 0 for torch's default")
    if t.compute_class and not t.tokens_per_second:
        raise UserError("--compute_class needs --tokens_per_second (the config's reference throughput)")
    if t.compute_class:
        parse_hours(t.compute_class)
    check_device_name(cfg.system.device)
    check_optimizer_spec(o.optimizer)


_SPEC = re.compile(r"(?P<target>.+):(?P<function>[A-Za-z_][A-Za-z0-9_]*)")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_optimizer_spec(spec: str) -> None:
    """A built-in optimiser's name, or FILE.py:function / module.path:function (not loaded here)."""
    if spec in BUILTIN_OPTIMIZERS:
        return
    found = _SPEC.fullmatch(spec)
    target = found["target"] if found else ""
    if not found or not (target.endswith(".py") or _MODULE.fullmatch(target)):
        close = difflib.get_close_matches(spec, BUILTIN_OPTIMIZERS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserError(f"--optimizer {spec!r}: {hint}use {', '.join(BUILTIN_OPTIMIZERS)}, "
                        "path/to/opt.py:function or package.module:function (a function (model, config) "
                        "-> optimiser)")


def check_device_name(name: str) -> None:
    """A device string torch understands, among those gptlab runs on (no torch import)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N (N = GPU "
                        "index) or mps")


def check_device(name: str) -> None:
    """The device exists on this machine, checked before anything is loaded or written."""
    check_device_name(name)
    if name in ("auto", "cpu"):
        return
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = ("a CPU-only build" if torch.version.cuda is None
                     else f"built for CUDA {torch.version.cuda}")
            raise UserError(f"--device {name}: no CUDA GPU is usable here (torch {torch.__version__} is "
                            f"{build}): use --device cpu, or install a CUDA build of torch (pip install "
                            "torch --index-url https://download.pytorch.org/whl/cu124)")
        n = torch.cuda.device_count()
        if ":" in name and int(name.split(":")[1]) >= n:
            raise UserError(f"--device {name}: this machine has {n} GPU(s), numbered 0..{n - 1}: use "
                            "one of those")
    elif not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's Metal backend is not available here: use --device cpu")


def dtype_for(name: str, device) -> str:
    """auto = bf16 on a GPU that has it, fp16 (with a loss scaler) on one that has not, fp32
    elsewhere; fp16 on a CPU or MPS runs as fp32 (autocast there is slow, and presets ask for it)."""
    import torch

    name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)
    if name not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"--dtype {name!r}: use auto, bfloat16, float16 or float32")
    if device.type != "cuda":
        return "bfloat16" if name == "bfloat16" else "float32"
    if name in ("auto", "bfloat16"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return name
