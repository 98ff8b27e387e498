"""Run folders: where a run lives, what its folder is called, and how it is (not) reused.

A run lives in `<log_root>/<compute class or "free">/<preset>/<name>/` and holds
config.json, metrics.jsonl, checkpoints/ and TensorBoard events. The name encodes the
hyperparameters that distinguish Languini runs, so two runs of one recipe land in the
same folder and a changed recipe lands in a new one:

    GPT_books16384_bsz128_micro32_sl512_coslr0.0006to6e-06_h768_ff3072_nH12_dH64_nl12_
    clip0.0_decay18k_gpus1_defaultCompile_fp16_seed0[_<comment>]

A folder with contents is never deleted or written over silently: continuing it needs
--resume, starting afresh needs --overwrite, which moves the old folder aside.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from gptlab.config import Config, parse_hours, resolve_batch
from gptlab.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"

_PRECISION = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "auto": "autoPrec"}
_COMPILE = {"none": "noCompile", "default": "defaultCompile",
            "reduce-overhead": "reduceOverheadCompile", "max-autotune": "maxAutotuneCompile",
            "max-autotune-no-cudagraphs": "maxAutotuneNoGraphsCompile"}
# Anything outside this set could split a path or upset a shell; it becomes '-'.
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text.strip()).strip("-.")


def _steps_short(steps: int) -> str:
    # Languini writes decay steps in whole thousands (18265 -> 18k); small counts stay exact
    # so tiny test runs do not all read "decay0k".
    return f"{steps // 1000}k" if steps >= 1000 else str(steps)


def _dataset_label(dataset: str) -> str:
    # A dataset may be given as a path; only its last component names it.
    return _safe(Path(dataset.rstrip("/\\")).name or dataset) or "data"


def run_name(cfg: Config, world_size: int = 1) -> str:
    """The encoded folder name of a run (without the class/preset parents)."""
    m, o, t = cfg.model, cfg.optim, cfg.train
    micro, global_batch = resolve_batch(cfg, world_size)
    constant = o.schedule == "constant" or not o.decay_lr
    lr = f"constlr{o.learning_rate}" if constant else f"coslr{o.learning_rate}to{o.min_lr}"
    parts = [
        "GPT",
        _dataset_label(cfg.data.dataset),
        f"bsz{global_batch}",
        f"micro{micro}",
        f"sl{m.block_size}",
        lr,
        f"h{m.n_embd}",
        f"ff{cfg.mlp_dim}",
        f"nH{m.n_head}",
        f"dH{cfg.head_dim}",
        f"nl{m.n_layer}",
        f"clip{float(o.grad_clip)}",
        f"decay{_steps_short(o.lr_decay_iters)}",
        f"gpus{world_size}",
        _COMPILE.get(cfg.system.compile, _safe(cfg.system.compile) + "Compile"),
        _PRECISION.get(cfg.system.dtype, _safe(cfg.system.dtype)),
        f"seed{t.seed}",
    ]
    comment = _safe(cfg.log.comment)
    if comment:
        parts.append(comment)
    return "_".join(parts)


def class_dir_name(cfg: Config) -> str:
    """'6h' style folder for a compute class ('6', '6h' and '6.0h' all give '6h'), else 'free'."""
    if not cfg.train.compute_class:
        return "free"
    return f"{parse_hours(cfg.train.compute_class):g}h"


def run_dir(cfg: Config, world_size: int = 1) -> Path:
    """Where this run's files go: log.out_dir if set, else log_root/<class>/<preset>/<name>."""
    if cfg.log.out_dir:
        return Path(cfg.log.out_dir)
    name = _safe(cfg.log.name) if cfg.log.name else run_name(cfg, world_size)
    if not name:
        raise UserError(f"--name {cfg.log.name!r} has no usable characters: use letters, digits, '.', '-' or '_'")
    return Path(cfg.log.log_root) / class_dir_name(cfg) / _safe(cfg.preset or "custom") / name


def _has_contents(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _aside_path(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.old-{stamp}")
    n = 1
    # Two overwrites within one second must not collide with each other.
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.old-{stamp}-{n}")
        n += 1
    return candidate


def prepare_run_dir(path: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Make `path` ready for a run and return it.

    - missing or empty folder: created; resume then has nothing to continue (error);
    - folder with contents: resume continues it as is; overwrite renames it to
      `<path>.old-<timestamp>` and starts an empty one; neither is an error.
    Nothing is ever deleted. Call it on rank 0 only, before other ranks write.
    """
    path = Path(path)
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: pass one of them")
    if path.exists() and not path.is_dir():
        raise UserError(f"run folder {str(path)!r} is a file: remove it or choose another --out_dir")
    if _has_contents(path):
        if resume:
            return path
        if overwrite:
            aside = _aside_path(path)
            path.rename(aside)
            path.mkdir(parents=True)
            return path
        raise UserError(f"run folder {str(path)!r} exists: pass --resume to continue it or --overwrite to move it aside")
    if resume:
        raise UserError(f"--resume: run folder {str(path)!r} is missing or empty, so there is nothing to continue: "
                        f"drop --resume to start a new run")
    path.mkdir(parents=True, exist_ok=True)
    return path
