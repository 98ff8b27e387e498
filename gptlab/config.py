"""The one config system: a tree of dataclasses, named presets, TOML/nanoGPT files, CLI overrides.

Every leaf has a default, a one-line help and aliases (nanoGPT's and Languini's names); leaf names
are unique, so a flat `--key value` reaches one field. Order: defaults -> preset -> file -> CLI.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import json
import math
import os
import operator
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from gptlab.errors import UserError
from gptlab.files import closest_path, read_json, read_toml

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _f(default, help: str, aliases: tuple[str, ...] = (), choices: tuple | None = None, low: int = 0, high: int = 0):
    # low/high: a number's range (validate); 0 means "off", "derived" or "auto" where the help says so.
    return field(default=default, metadata={"help": help, "aliases": aliases, "choices": choices, "low": low, "high": high})


@dataclass
class ModelConfig:
    n_layer: int = _f(12, "transformer blocks", ("n_layers",), low=1)
    n_head: int = _f(12, "attention heads per block", ("n_heads",), low=1)
    n_embd: int = _f(768, "residual stream width", ("h_dim",), low=1)
    head_dim: int = _f(0, "width of one attention head; 0 = n_embd / n_head")
    mlp_dim: int = _f(0, "hidden width of the MLP; 0 = 4 * n_embd", ("ff_dim",))
    block_size: int = _f(1024, "context length in tokens (training sequence length)", ("seq_len",), low=1)
    vocab_size: int = _f(0, "tokenizer vocabulary; 0 = read from the dataset's meta.json", high=2**31 - 1)
    pad_vocab_multiple: int = _f(64, "pad the embedding/logit rows up to a multiple of this, for speed", low=1)
    bias: bool = _f(True, "biases in Linear and LayerNorm layers (GPT-2: true)")
    dropout: float = _f(0.0, "dropout on embeddings, attention and residual branches")
    tie_embeddings: bool = _f(True, "share the token embedding with the output layer")
    embed_scale: bool = _f(False, "multiply token embeddings by sqrt(n_embd) (Languini)")
    qkv: str = _f("fused", "attention input projection: one fused QKV matrix or separate Q/K/V", choices=("fused", "separate"))
    gelu: str = _f("tanh", "GELU form: exact erf or the tanh approximation GPT-2 used", choices=("exact", "tanh"))
    scaled_init: str = _f("all", "which residual output projections get std 0.02/sqrt(2L): attention+MLP or MLP only", choices=("all", "mlp", "none"))


@dataclass
class DataConfig:
    dataset: str = _f("shakespeare_char", "prepared dataset name (folder under data_root) or a path", ("data",))
    data_root: str = _f("data", "folder that holds prepared datasets")
    sampler: str = _f("random", "training batches: random windows, or Languini document streams", choices=("random", "stream"))
    train_split: str = _f("train", "split used for training")
    val_split: str = _f("val", "split used for in-training evaluation (falls back to 'test')")


@dataclass
class OptimConfig:
    optimizer: str = _f("adamw", "adamw (decoupled decay on >=2-D weights) or adam (no decay)", choices=("adamw", "adam"))
    learning_rate: float = _f(6e-4, "peak learning rate", ("max_lr", "lr"))
    min_lr: float = _f(6e-5, "learning rate at the end of the decay")
    weight_decay: float = _f(0.1, "AdamW weight decay on matrices and embeddings")
    beta1: float = _f(0.9, "Adam beta1")
    beta2: float = _f(0.95, "Adam beta2")
    eps: float = _f(1e-8, "Adam epsilon")
    grad_clip: float = _f(1.0, "clip the global gradient norm at this value; 0 = off", ("grad_clip_norm",))
    schedule: str = _f("cosine", "cosine: linear warmup then cosine to min_lr; languini: cosine times a linear ramp; constant", choices=("cosine", "languini", "constant"))
    decay_lr: bool = _f(True, "false = constant learning rate (same as schedule=constant)")
    warmup_iters: int = _f(2000, "steps of linear warmup (languini ramp length)", ("warmup_steps",))
    lr_decay_iters: int = _f(600000, "step at which the cosine reaches min_lr", ("decay_steps",))


@dataclass
class TrainConfig:
    batch_size: int = _f(12, "micro-batch per rank (sequences); 0 = derived from train_batch_size")
    train_batch_size: int = _f(0, "global batch per optimiser step = world * batch_size * accumulation; 0 = derived")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimiser step on each rank", low=1)
    max_iters: int = _f(5000, "optimiser steps to train", ("max_train_steps", "max_steps"), low=1)
    compute_class: str = _f("", "Languini compute class like '6h': sets max_iters and decay from tokens_per_second")
    tokens_per_second: float = _f(0.0, "reference throughput of this config (Languini); turns tokens into accelerator-hours")
    eval_interval: int = _f(250, "evaluate every N steps (and at the end); 0 = only at the end", ("eval_every",))
    eval_iters: int = _f(20, "held-out batches per in-training evaluation", ("max_eval_steps",), low=1)
    eval_cap: float = _f(0.5, "in-training eval scores at most this share of the run's training tokens "
                              "(fewer batches on a short run, announced); 0 = eval_iters always")
    eval_batch_size: int = _f(0, "sequences per eval batch; 0 = batch_size", ("test_batch_size",))
    eval_only: bool = _f(False, "evaluate once and exit (baselines)")
    last_n: int = _f(0, "score only the last N targets of each eval window (0 = all); must divide block_size")
    checkpoint_interval: int = _f(0, "write a checkpoint every N steps (and at the end); 0 = at evaluations", ("log_ckpt_every",))
    eval_at_start: bool = _f(False, "also evaluate before the first step (step 0)")
    always_save_checkpoint: bool = _f(True, "write 'last' at every eval even without improvement")
    keep_last: int = _f(2, "numbered checkpoints to keep besides best")
    init_from: str = _f("scratch", "scratch | resume | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | RUN_DIR | checkpoint file")
    resume: bool = _f(False, "continue the run in out_dir from its newest checkpoint")
    overwrite: bool = _f(False, "allow training into an existing run folder (renames the old one aside)")
    seed: int = _f(1337, "base random seed (ranks derive theirs from it)", high=2**63 - 1)
    max_nonfinite: int = _f(5, "stop after this many consecutive non-finite steps", low=1)


@dataclass
class LogConfig:
    out_dir: str = _f("", "run folder; empty = logs/<class or free>/<preset>/<encoded name>")
    log_root: str = _f("logs", "parent of auto-named run folders")
    name: str = _f("", "run name; empty = encoded from the hyperparameters")
    comment: str = _f("", "free text appended to the run name")
    log_interval: int = _f(10, "print a training line every N steps", ("log_terminal_every",), low=1)
    log_metrics_every: int = _f(10, "write train metrics to metrics.jsonl/TensorBoard every N steps", low=1)
    log_grads_every: int = _f(0, "weight/grad/update/logit statistics every N steps; 0 = off")
    tensorboard: bool = _f(True, "write TensorBoard events (if tensorboard is installed)")
    wandb_log: bool = _f(False, "log to Weights & Biases (optional dependency)")
    wandb_project: str = _f("gptlab", "W&B project", ("wandb_project_name",))
    wandb_run: str = _f("", "W&B run name; empty = the run folder's name", ("wandb_run_name",))
    logger_type: str = _f("", "sinks besides metrics.jsonl (Languini); empty = --tensorboard/--wandb_log", choices=("", "tb", "wandb", "all"))
    relative_log_path: str = _f("", "folder under log_root for auto-named runs; empty = <class or free>/<preset>")
    progress: str = _f("auto", "progress bar: auto (on a terminal), on, off", choices=("auto", "on", "off"))


@dataclass
class SystemConfig:
    device: str = _f("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = _f("auto", "auto (bf16 where supported, else fp32) | bfloat16 | float16 | float32", ("precision",))
    compile: str = _f("auto", "torch.compile mode; auto = default on CUDA, none on CPU/MPS", choices=("auto",) + COMPILE_MODES)
    parallel: str = _f("ddp", "multi-process strategy under torchrun: ddp or fsdp (FSDP2)", choices=("ddp", "fsdp"))
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact resume on CPU)")
    num_threads: int = _f(0, "CPU threads for torch; 0 = torch's default")
    ce_chunk: int = _f(-1, "tokens per chunk of a chunked linear+CE (no full fp32 logits); 0 = off, -1 = auto", low=-1)
    ddp_bucket_mb: int = _f(100, "DDP gradient bucket size in MB (100 beat torch's 25 on 4 H200s, BENCHMARKS.md)", low=1)
    ddp_bucket_view: bool = _f(True, "DDP gradients are views into the all-reduce buckets (one copy and its memory saved)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    preset: str = "custom"

    def get(self, key: str) -> Any:
        key = canonical_key(key)
        return getattr(getattr(self, SECTION_OF[key]), key)

    def set(self, key: str, value: Any) -> None:
        key = canonical_key(key)
        setattr(getattr(self, SECTION_OF[key]), key, coerce(key, value))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls(preset=str(d.get("preset", "custom")))
        for section, values in d.items():
            if section != "preset" and (section not in SECTIONS or not isinstance(values, dict)):
                raise UserError(f"config: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
            for k, v in values.items() if section != "preset" else ():
                if SECTION_OF.get(ALIASES.get(k, k)) != section:
                    raise UserError(unknown_key_message(k))
                cfg.set(k, v)
        return cfg


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Config) if f.name != "preset"}
# Every key's field and section, and every alias's key; a duplicate name would make a flat --key ambiguous.
FIELD_INFO: dict[str, dataclasses.Field] = {f.name: f for c in SECTIONS.values() for f in fields(c)}
SECTION_OF: dict[str, str] = {f.name: s for s, c in SECTIONS.items() for f in fields(c)}
ALIASES: dict[str, str] = {a: f.name for f in FIELD_INFO.values() for a in f.metadata["aliases"]}
ALL_KEYS = sorted(n for c in SECTIONS.values() for f in fields(c) for n in (f.name, *f.metadata["aliases"]))
assert len(ALL_KEYS) == len(set(ALL_KEYS)), "duplicate config key or alias"


def canonical_key(key: str, where: str = "") -> str:
    key = key.replace("-", "_")
    if key in FIELD_INFO or key in ALIASES:
        return ALIASES.get(key, key)
    raise UserError(where + unknown_key_message(key))


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, ALL_KEYS, n=1, cutoff=0.5)
    hint = f"did you mean --{close[0]}?" if close else "see `gptlab train --help` for the list"
    return f"unknown config key {key!r}: {hint}"


BOOL_WORDS = dict.fromkeys(("1", "true", "yes", "on", "y", "t"), True) | dict.fromkeys(("0", "false", "no", "off", "n", "f"), False)
# Languini passes compile None / default / ...; nanoGPT passes True / False.
_COMPILE_WORDS = {"false": "none", "0": "none", "off": "none", "true": "default", "1": "default"}


def _to_bool(v: Any) -> bool:
    return v if isinstance(v, bool) else BOOL_WORDS[str(v).strip().lower()]


def _to_int(v: Any) -> int:
    s = str(v).strip().replace("_", "")
    digits = s.lstrip("+-").isdigit()
    if isinstance(v, bool) or not (digits or float(s).is_integer()):  # 1e4 and 5.0 are step counts too
        raise ValueError
    return int(s) if digits else int(float(s))


def _to_float(v: Any) -> float:
    if isinstance(v, bool) or math.isnan(float(v)):
        raise ValueError
    return float(v)


_CONVERT = {"bool": _to_bool, "int": _to_int, "float": _to_float, "str": lambda v: "" if v is None else str(v)}


def coerce(key: str, value: Any) -> Any:
    """Turn a CLI string / TOML / JSON value into the field's type, or raise UserError."""
    fld = FIELD_INFO[key]
    typ = getattr(fld.type, "__name__", fld.type)
    if key == "compile":
        value = str(value).strip().lower()
        value = _COMPILE_WORDS.get(value, value)
    try:
        out = _CONVERT[typ](value)
    except (TypeError, ValueError, KeyError, OverflowError):
        raise UserError(f"--{key}: expected {typ}, got {value!r}") from None
    choices = fld.metadata["choices"]
    if choices and out not in choices:
        raise UserError(f"--{key}: {out!r} is not one of {', '.join(map(str, choices))}")
    return out


# Presets: plain dicts of overrides over the defaults above.
# nanoGPT's GPT-2 recipe: a global batch of 12 x 40 x 1024 = 491,520 tokens per step. The 40 accumulation
# steps are global (train_batch_size unset): 40 on 1 GPU, 5 on each of 8 (resolve_batch).
_GPT2 = dict(bias=True, tie_embeddings=True, gelu="tanh", dropout=0.0, block_size=1024, dataset="openwebtext", batch_size=12,
             gradient_accumulation_steps=40, max_iters=600000, lr_decay_iters=600000, warmup_iters=2000,
             learning_rate=6e-4, min_lr=6e-5, eval_interval=1000, eval_iters=200)
# Languini Kitchen's GPT recipe, with the benchmark's eval (16 document streams, 500 batches, every 1,000 steps as its
# projects/gpt/configs.py sets eval_every) and logging cadence.
_LANGUINI = dict(
    block_size=512, vocab_size=16384, bias=True, dropout=0.0, tie_embeddings=False, embed_scale=True, qkv="separate",
    gelu="tanh", scaled_init="mlp", dataset="books16384", sampler="stream", val_split="test", optimizer="adam",
    weight_decay=0.0, beta1=0.9, beta2=0.95, eps=1e-8, learning_rate=6e-4, min_lr=6e-6, schedule="languini",
    warmup_iters=200, lr_decay_iters=18265, max_iters=18265, grad_clip=0.0, dtype="float16", train_batch_size=128,
    batch_size=0, gradient_accumulation_steps=4, eval_interval=1000, eval_iters=500, eval_batch_size=16,
    log_interval=100, checkpoint_interval=1000, log_grads_every=1000, compute_class="", compile="auto", seed=0, last_n=0)
# Languini sizes: n_layer, n_embd (h_dim), mlp_dim, n_head, head_dim, reference throughput (tokens/s, the best of
# the benchmark's sweep on its RTX 3090; 0 = unmeasured: large and XL did not fit there).
LANGUINI_SIZES = {"mini": (4, 512, 2048, 8, 32, 238719), "tiny": (4, 768, 3072, 12, 64, 141864),
                  "small": (12, 768, 3072, 12, 64, 55416), "medium": (24, 1024, 4096, 16, 64, 16618),
                  "large": (24, 1536, 6144, 16, 96, 0), "XL": (24, 2048, 8192, 24, 128, 0)}
# The benchmark's published GPT recipes per compute class (its GPT README): size, global batch, accumulation
# steps; the steps follow from budget.steps_for_budget (18265, 36529, 36529, 21908, 43817, as published).
LANGUINI_RECIPES = {"6h": ("small", 128, 4), "12h": ("small", 128, 4), "24h": ("small", 256, 8),
                    "48h": ("medium", 256, 32), "96h": ("medium", 256, 32)}


def languini_recipe(preset: str | None, compute_class: str) -> dict[str, Any]:
    """A Languini size's overrides under a compute class: its throughput; the class's batch if its recipe is this size."""
    if preset not in LANGUINI_SIZES or not compute_class:
        return {}
    tps = LANGUINI_SIZES[preset][-1]
    out: dict[str, Any] = {"tokens_per_second": tps} if tps else {}
    size, batch, accum = LANGUINI_RECIPES.get(f"{parse_hours(compute_class):g}h", ("", 0, 0))
    if size == preset:
        out.update(train_batch_size=batch, gradient_accumulation_steps=accum)
    return out


# The well-known character-level recipe (a GPU run of a few minutes).
_CHAR = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=True, dataset="shakespeare_char",
             batch_size=64, gradient_accumulation_steps=1, learning_rate=1e-3, min_lr=1e-4, max_iters=5000,
             lr_decay_iters=5000, warmup_iters=100, beta2=0.99, eval_interval=250, eval_iters=200, log_interval=10,
             always_save_checkpoint=False)
_GPT2_SIZES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}
PRESETS: dict[str, dict[str, Any]] = {
    **{k: dict(_GPT2, n_layer=L, n_head=H, n_embd=C) for k, (L, H, C) in _GPT2_SIZES.items()},
    "shakespeare_char": _CHAR,
    # The CPU recipe: trains to val loss < 2.0 on tiny Shakespeare in a few CPU minutes.
    "baby": dict(_CHAR, n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, batch_size=12, max_iters=2000,
                 lr_decay_iters=2000, eval_iters=20, log_interval=50, always_save_checkpoint=True, device="cpu",
                 dtype="float32"),
    # One-layer GPT-2 on the synthetic 0/1 data (entropy bound H(1/3) = 0.6365 nats/word).
    "zero_one": dict(
        n_layer=1, n_head=12, n_embd=768, block_size=512, dropout=0.0, bias=True, dataset="zero_one", batch_size=64,
        gradient_accumulation_steps=1, learning_rate=2e-3, min_lr=2e-4, max_iters=200, lr_decay_iters=200,
        warmup_iters=10, eval_interval=10, eval_iters=4, log_interval=10, checkpoint_interval=200),
    **{k: dict(_LANGUINI, **dict(zip(("n_layer", "n_embd", "mlp_dim", "n_head", "head_dim"), v)))
       for k, v in LANGUINI_SIZES.items()},
    # Evaluation-only recipes for OpenAI's released weights (the well-known baselines).
    **{"eval_" + k.replace("-", "_"): dict(_GPT2, n_layer=L, n_head=H, n_embd=C, init_from=k, eval_only=True,
                                           batch_size=8, eval_iters=500, gradient_accumulation_steps=1)
       for k, (L, H, C) in _GPT2_SIZES.items()},
    "finetune_shakespeare": dict(
        _GPT2, n_layer=48, n_head=25, n_embd=1600, init_from="gpt2-xl", dataset="shakespeare", batch_size=1,
        gradient_accumulation_steps=32, max_iters=20, learning_rate=3e-5, min_lr=3e-6, decay_lr=False, eval_interval=5,
        eval_iters=40, always_save_checkpoint=False),
}


# Flags of the two reference trainers that have no meaning in gptlab: accepted, with this note.
NO_MEANING: dict[str, str] = {
    "log_activations_every": "activations are not logged; --log_grads_every N logs weight/grad/update/logit statistics",
    "debug": "there is no debug mode; --log_interval 1 --deterministic true gives step-by-step, reproducible runs",
    "use_flash": "attention always uses torch's scaled_dot_product_attention, which picks flash kernels itself",
    "backend": "the process-group backend is picked per device (nccl on CUDA, gloo on CPU)",
}

# nanoGPT's train.py defaults (its GPT-2 124M recipe): the base a nanoGPT config file (config/*.py) overrides, so
# `gptlab train config/train_gpt2.py` trains what `python train.py config/train_gpt2.py` does.
# bias=False and the exact GELU are nanoGPT's from-scratch model (gptlab's presets follow GPT-2).
NANOGPT_BASE: dict[str, Any] = dict(_GPT2, n_layer=12, n_head=12, n_embd=768, bias=False, gelu="exact", out_dir="out",
                                    eval_interval=2000, log_interval=1, wandb_project="owt", wandb_run="gpt2")


def layer_key(key: str, where: str = "") -> str | None:
    """The canonical key, or None (after a note) for a flag with no meaning here; `where` (file:line) opens both."""
    bare = key.replace("-", "_")
    if bare in NO_MEANING:
        print(f"note: {where}--{bare} is accepted but has no effect: {NO_MEANING[bare]}", file=sys.stderr)
        return None
    return canonical_key(bare, where)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.USub: operator.neg,
        ast.UAdd: operator.pos}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _literal(node: ast.AST, known: dict[str, Any]) -> Any:
    """A literal's value (numbers, strings, booleans, arithmetic, earlier names), else ValueError; nothing runs."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.Name) and node.id in known:
        return known[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS and _number(v := _literal(node.operand, known)):
        return _OPS[type(node.op)](v)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _literal(node.left, known), _literal(node.right, known)
        if _number(a) and _number(b) and not (isinstance(node.op, ast.Pow) and abs(b) > 64):  # 10**9 yes, 10**10**10 no
            try:
                return _OPS[type(node.op)](a, b)
            except ArithmeticError:
                pass
        elif isinstance(node.op, ast.Add) and isinstance(a, str) and isinstance(b, str):
            return a + b
    raise ValueError


def _py_value(p: Path, stmt: ast.stmt, name: str, key: str | None, known: dict[str, Any]) -> bool:
    """Record `name = value` of a config file in `known`; False for a computed name-only value (noted, skipped)."""
    try:
        known[name] = _literal(stmt.value, known)
        return True
    except ValueError:
        if key == "wandb_run":  # only names things: nanoGPT's 'ft-' + str(time.time()) is dropped, not refused
            print(f"note: {p}:{stmt.lineno}: {name} is computed, not a literal; ignored (the run folder's "
                  "name is used)", file=sys.stderr)
            return False
        raise UserError(f"{p}:{stmt.lineno}: `{ast.unparse(stmt.value)[:60]}` is not a literal value: gptlab "
                        f"reads config files without running them; write the value itself, e.g. {name} = 5 * 8"
                        ) from None


def load_py_config(path: str | Path) -> dict[str, Any]:
    """A nanoGPT-style config file (`key = value` lines), read with ast and never executed."""
    p = Path(path)
    try:
        tree = ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
    except (SyntaxError, UnicodeDecodeError) as e:
        line = getattr(e, "lineno", None)
        raise UserError(f"{p}{f':{line}' if line else ''}: not a readable Python config file ({e.__class__.__name__}): "
                        "fix that line") from None
    known: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) or \
                (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
            continue  # imports and docstrings do nothing without code that uses them
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if \
            isinstance(stmt, ast.AnnAssign) and stmt.value is not None else []
        if not targets or not all(isinstance(t, ast.Name) for t in targets):
            raise UserError(f"{p}:{stmt.lineno}: only `key = value` lines are read, got `{ast.unparse(stmt)[:60]}`: "
                            "gptlab reads config files without running them")
        for name in (t.id for t in targets):
            key = layer_key(name, f"{p}:{stmt.lineno}: ")
            if _py_value(p, stmt, name, key, known) and key is not None:
                out[key] = known[name]
    return out


def load_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(values, base layer, preset label) of a .toml, a nanoGPT .py (over NANOGPT_BASE) or a run's config.json."""
    p = Path(path)
    if not p.is_file():
        close = closest_path(p, (".toml", ".py", ".json"))
        raise UserError(f"config file {str(p)!r} not found" + (f": did you mean {str(close)!r}?" if close else
                        ": give the path of a .toml, a nanoGPT .py or a run's config.json"))
    if p.suffix == ".py":  # train_shakespeare_char.py -> runs under .../train_shakespeare_char/
        return load_py_config(p), NANOGPT_BASE, "".join(c if c.isalnum() or c in "._-" else "-" for c in p.stem)
    if p.suffix == ".json":
        saved = load_run_config(p)
        return {k: saved.get(k) for k in FIELD_INFO}, {}, saved.preset
    # TOML: flat keys and/or [section] tables, plus an optional `preset = "..."`.
    flat: dict[str, Any] = {}
    for k, v in read_toml(p, "config file").items():
        if isinstance(v, dict) and k not in SECTIONS:
            raise UserError(f"{p}: unknown section [{k}]; sections are {', '.join(SECTIONS)}")
        flat.update(v if isinstance(v, dict) else {k: v})
    return flat, {}, None


def parse_overrides(argv: list[str]) -> dict[str, str]:
    """`--key=value` or `--key value` pairs; a bare `--flag` means true."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        if not argv[i].startswith("--"):
            raise UserError(f"unexpected argument {argv[i]!r}: overrides look like --key=value or --key value")
        key, eq, value = argv[i][2:].partition("=")
        if not eq:  # the next argument is the value unless it is another --flag
            has_value = i + 1 < len(argv) and not (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2)
            value = argv[i + 1] if has_value else "true"
            i += has_value
        i += 1
        key = layer_key(key)
        if key is not None:
            out[key] = value
    return out


def build_config(preset: str | None = None, config_file: str | None = None,
                 overrides: dict[str, Any] | None = None, check: bool = True) -> Config:
    """defaults -> preset (or NANOGPT_BASE under a .py file) -> config file -> overrides; validated unless check=False."""
    cfg = Config()
    file_values, base, label = load_config_file(config_file) if config_file else ({}, {}, None)
    preset = preset or file_values.get("preset")
    file_values.pop("preset", None)
    overrides = overrides or {}
    if preset and not isinstance(preset, str):  # e.g. `preset = 5` in a TOML file
        raise UserError(f"preset must be a name like 'baby' or 'small', got {preset!r}")
    if preset:  # "xl" works for "XL"
        preset = cfg.preset = {k.lower(): k for k in PRESETS}.get(preset.lower(), preset)
    if preset and preset not in PRESETS:
        close = difflib.get_close_matches(preset, list(PRESETS), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}?" if close else f"presets: {', '.join(PRESETS)}"
        raise UserError(f"unknown preset {preset!r}: {hint}")
    if label and not preset:
        cfg.preset = label
    # A Languini preset under --compute_class takes that class's published recipe, below what
    # the config file and the command line set.
    chosen = {canonical_key(k): v for k, v in {**file_values, **overrides}.items()}
    recipe = languini_recipe(preset, str(chosen.get("compute_class", "")))
    for layer in (base, PRESETS[preset] if preset else {}, recipe, file_values, overrides):
        keys = {canonical_key(k) for k in layer}
        # Two ways to say the batch size: the one a layer names wins over the other.
        if "batch_size" in keys and "train_batch_size" not in keys:
            cfg.train.train_batch_size = 0
        if "train_batch_size" in keys and "batch_size" not in keys:
            cfg.train.batch_size = 0
        for k, v in layer.items():
            cfg.set(k, v)
    if check:
        validate(cfg)
    return cfg


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
        if v < low or (high and v > high):
            raise UserError(f"--{k} {v} is out of range: use " + (f"{low} to {high}" if high else f"at least {low}"))
    if t.batch_size <= 0 and t.train_batch_size <= 0:
        raise UserError("set --batch_size (per-rank micro batch) or --train_batch_size (global batch) to a positive number")
    if o.min_lr > o.learning_rate and o.decay_lr and o.schedule != "constant":
        raise UserError(f"--min_lr must be in [0, learning_rate={o.learning_rate}], got {o.min_lr}")
    if m.head_dim == 0 and m.n_embd % m.n_head:
        raise UserError(f"--n_embd {m.n_embd} is not divisible by --n_head {m.n_head}: change one, or set --head_dim")
    if t.last_n and m.block_size % t.last_n:
        raise UserError(f"--last_n {t.last_n} must divide --block_size/--seq_len {m.block_size}")
    cores = os.cpu_count() or 1
    if cfg.system.num_threads > 4 * cores:  # far past the cores torch's thread pool crashes rather than slows
        raise UserError(f"--num_threads {cfg.system.num_threads} is far more than this machine's {cores} cores: "
                        f"use at most {cores}, or 0 for torch's default")
    if t.compute_class and not t.tokens_per_second:
        raise UserError("--compute_class needs --tokens_per_second (the config's reference throughput)")
    if t.compute_class:
        parse_hours(t.compute_class)
    check_device_name(cfg.system.device)


def check_device_name(name: str) -> None:
    """A device string torch understands, among those gptlab runs on (no torch import)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N (N = GPU index) or mps")


def check_device(name: str) -> None:
    """The device exists on this machine, checked before anything is loaded or written."""
    check_device_name(name)
    if name in ("auto", "cpu"):
        return
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise UserError(f"--device {name}: no CUDA GPU is usable here (torch {torch.__version__} is {build}): use --device "
                            "cpu, or install a CUDA build of torch (pip install torch --index-url https://download.pytorch.org/whl/cu124)")
        n = torch.cuda.device_count()
        if ":" in name and int(name.split(":")[1]) >= n:
            raise UserError(f"--device {name}: this machine has {n} GPU(s), numbered 0..{n - 1}: use one of those")
    elif not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's Metal backend is not available here: use --device cpu")


def check_memory(cfg: Config, weights_only: bool = False) -> None:
    """Refuse shapes that fit nowhere here: 16 bytes a parameter (fp32 weights, grads, Adam moments; FSDP-shared; 4 for
    eval_only/weights_only) plus >= 16 bytes per token, layer and width of a micro-batch, against host + GPU memory."""
    import torch

    m, t = cfg.model, cfg.train
    try:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        avail = 0
    if avail <= 0:
        return  # the host's memory is unknown: no check
    width, heads = m.n_embd, m.n_head * (m.head_dim or max(1, m.n_embd // m.n_head))
    per_layer = width * (3 * heads + heads) + 2 * width * (m.mlp_dim or 4 * width)
    params = m.n_layer * per_layer + max(m.vocab_size, 1) * width * (1 if m.tie_embeddings else 2) + m.block_size * width
    shards = max(1, int(os.environ.get("WORLD_SIZE", "1"))) if cfg.system.parallel == "fsdp" else 1
    micro = t.batch_size or max(1, t.train_batch_size // max(1, t.gradient_accumulation_steps))
    if t.eval_only or weights_only:  # weights alone: no gradients, optimiser state or stored activations
        need = 4 * params // shards
    else:
        need = 16 * params // shards + 16 * micro * m.block_size * m.n_layer * width
    if need > avail:  # no CUDA: device_count() is 0
        avail += sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    if need > avail:
        raise UserError(f"this model needs at least {need / 2**30:,.0f} GiB (n_layer {m.n_layer}, n_embd "
                        f"{width}, vocab_size {m.vocab_size}, block_size {m.block_size}, batch {micro}) but this machine "
                        f"has {avail / 2**30:,.0f} GiB: reduce --vocab_size, --block_size, --batch_size or the model size")


def parse_hours(text: str, flag: str = "--compute_class") -> float:
    """Hours from '6', '6h' or '6.0h'; a UserError naming `flag` otherwise."""
    try:
        h = float(text.strip().lower().removesuffix("h"))
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected hours like '6h' or '12h'") from None
    if not 0 < h < math.inf:
        raise UserError(f"{flag} {text!r} must be a positive number of hours, like 6h")
    return h


# How one optimiser step's batch is cut (sequences): micro per forward/backward on one rank x accum
# micro-batches per step on each rank x world ranks = global_batch.
BatchSplit = NamedTuple("BatchSplit", [("micro", int), ("accum", int), ("global_batch", int)])


def resolve_batch(cfg: Config, world_size: int) -> BatchSplit:
    """The split for world_size ranks. train_batch_size set (Languini): the global batch, gradient_accumulation_steps
    per rank. Unset (nanoGPT): batch_size is the micro batch, gradient_accumulation_steps the global count divided
    over the ranks (40 = 5 on each of 8 GPUs), so the global batch does not change with the rank count."""
    t = cfg.train
    accum = t.gradient_accumulation_steps
    if t.train_batch_size > 0:
        if t.train_batch_size % (world_size * accum):
            raise UserError(f"--train_batch_size {t.train_batch_size} is not divisible by world_size {world_size} x "
                            f"gradient_accumulation_steps {accum}: pick a multiple of {world_size * accum}")
        micro = t.train_batch_size // (world_size * accum)
        if t.batch_size and t.batch_size != micro:
            raise UserError(f"--batch_size {t.batch_size} disagrees with --train_batch_size {t.train_batch_size} "
                            f"/ {world_size} ranks / {accum} accumulation = {micro}: set only one")
        return BatchSplit(micro, accum, t.train_batch_size)
    if accum == 1:
        return BatchSplit(t.batch_size, 1, t.batch_size * world_size)
    if accum % world_size:
        raise UserError(f"--gradient_accumulation_steps {accum} is the global count (nanoGPT's meaning) and does not "
                        f"divide over {world_size} ranks: use a multiple of {world_size}, or set --train_batch_size")
    return BatchSplit(t.batch_size, accum // world_size, t.batch_size * accum)


def help_text(cfg: Config | None = None) -> str:
    """Every key with its value (cfg's, * where not the default), aliases and meaning, by section."""
    title = f"values of {cfg.preset} (* = differs from the default)" if cfg else "defaults"
    lines = [f"config keys, {title} (--key=value or --key value; aliases in brackets):"]
    for section, cls in SECTIONS.items():
        lines.append(f"\n[{section}]")
        for fld in fields(cls):
            al, ch = fld.metadata["aliases"], fld.metadata["choices"]
            alias, choice = f" [{', '.join(al)}]" if al else "", f" {{{'|'.join(ch)}}}" if ch else ""
            value = getattr(getattr(cfg, section), fld.name) if cfg else fld.default
            mark = "*" if value != fld.default else ""
            lines.append(f"  --{fld.name}{alias} = {value!r}{mark}{choice}\n      {fld.metadata['help']}")
    lines.append("\naccepted with a note (no meaning here): " + ", ".join("--" + k for k in NO_MEANING))
    lines.append("presets: " + ", ".join(PRESETS))
    return "\n".join(lines)


def load_run_config(path: str | Path) -> Config:
    """Rebuild a Config from a run's config.json (every caller has checked that the file exists)."""
    d = read_json(Path(path), "run config")
    if not isinstance(d, dict):
        raise UserError(f"{path} does not hold a config object")
    return Config.from_dict(d)


# The final config of a run: resolved once, before anything reads it; never edited after.
# What a resumed run may change: cadences, outputs, the machine, and the knobs a diverged
# run is resumed with. Any other key that differs from the run's config.json is refused.
RESUME_MAY_CHANGE = frozenset({f.name for f in fields(SystemConfig)} | {
    "max_iters", "eval_interval", "eval_iters", "eval_batch_size", "eval_at_start", "eval_only", "checkpoint_interval",
    "keep_last", "always_save_checkpoint", "log_interval", "log_metrics_every", "log_grads_every", "tensorboard", "wandb_log",
    "wandb_project", "logger_type", "progress", "max_nonfinite", "learning_rate", "min_lr", "grad_clip", "resume", "overwrite",
    "init_from", "out_dir", "log_root", "name", "comment", "data_root", "batch_size", "gradient_accumulation_steps"})


def resolve(cfg: Config, *, world_size: int, device, data_meta: dict | None, init_source: dict | None = None,
            resume_config: Config | None = None) -> Config:
    """The config a run trains with, a new Config: dtype/compile per device, vocab from the data, architecture from
    init_source (ModelConfig values), compute-class steps, batch split, absolute dataset path. With resume_config
    (the run's config.json) a differing key outside RESUME_MAY_CHANGE is a UserError."""
    out = _resolved(cfg, world_size, device, data_meta, init_source)
    if resume_config is None:
        return out
    for k in FIELD_INFO:
        v, old = out.get(k), resume_config.get(k)
        if v != old and k not in RESUME_MAY_CHANGE:
            raise UserError(f"--{k} {v!r} differs from {old!r} in the run's config.json: a resumed run keeps its "
                            f"config; drop --{k} (only cadences, max_iters, device and output settings may change)")
    out.preset = resume_config.preset
    return out


def _resolved(cfg: Config, world_size: int, device, data_meta: dict | None, init_source: dict | None) -> Config:
    import torch

    from gptlab.budget import steps_for_budget
    from gptlab.runs import run_dir
    from gptlab.loss import resolve_ce_chunk
    from gptlab.model import padded_vocab
    from gptlab.runtime import resolve_data_dir

    out = copy.deepcopy(cfg)
    m, s, t = out.model, out.system, out.train
    dev = torch.device(device)
    if init_source:  # the architecture is the source's; dropout and a shorter context are ours
        keep = {"dropout": m.dropout, "block_size": min(m.block_size, int(init_source.get("block_size", m.block_size)))}
        for k, v in dict(init_source, **keep).items():
            if SECTION_OF.get(k) == "model":
                setattr(m, k, v)
    # The model's vocab: the data's unless set (or fixed by pretrained weights); never smaller than the data's.
    data_vocab = int(data_meta["vocab_size"]) if data_meta else 0
    if m.vocab_size and m.vocab_size < data_vocab:
        hint = "prepare the data with the source model's tokenizer" if init_source else \
            "drop --vocab_size (it is read from meta.json) or use matching data"
        raise UserError(f"vocab_size {m.vocab_size} is smaller than the dataset's {data_vocab}: {hint}")
    m.vocab_size = m.vocab_size or data_vocab
    s.dtype = dtype_for(s.dtype, dev)
    if s.compile == "auto":
        s.compile = "default" if dev.type == "cuda" else "none"
    # The chunked loss returns no logits, so logit statistics (log_grads_every) keep the plain loss.
    s.ce_chunk = 0 if out.log.log_grads_every else resolve_ce_chunk(
        s.ce_chunk, s.compile, padded_vocab(m.vocab_size, m.pad_vocab_multiple))
    t.batch_size, t.gradient_accumulation_steps, t.train_batch_size = resolve_batch(out, world_size)
    if t.compute_class:
        t.max_iters = out.optim.lr_decay_iters = steps_for_budget(
            parse_hours(t.compute_class), t.tokens_per_second, t.train_batch_size, m.block_size)
    if data_meta is not None:
        out.data.dataset = str(resolve_data_dir(out.data.dataset, out.data.data_root).resolve())
    # The run folder, named once from this config; --resume/--overwrite are this command's, not the run's.
    out.log.out_dir = str(run_dir(out, world_size).absolute())
    t.resume = t.overwrite = False
    validate(out)
    check_memory(out)
    return out


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
