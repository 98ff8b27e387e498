"""The one config system: a tree of dataclasses, named presets, TOML files, CLI overrides.

Every leaf has a default and a one-line help (the `help` metadata). Leaf names are
unique across the tree, so a flat `--key value` reaches exactly one field. Users
arrive speaking two vocabularies (minimal-GPT style and Languini style); each
alias maps onto exactly one canonical key and is listed in `--help`.

Order of application: dataclass defaults -> preset -> TOML file -> CLI overrides.
The resolved config is saved as JSON (never pickle) and a run can be rebuilt from
that JSON alone.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math
import os
import operator
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from gptlab.errors import UserError
from gptlab.files import read_json, read_toml

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _f(default, help: str, aliases: tuple[str, ...] = (), choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "aliases": aliases, "choices": choices})


@dataclass
class ModelConfig:
    n_layer: int = _f(12, "transformer blocks", ("n_layers",))
    n_head: int = _f(12, "attention heads per block", ("n_heads",))
    n_embd: int = _f(768, "residual stream width", ("h_dim",))
    head_dim: int = _f(0, "width of one attention head; 0 = n_embd / n_head")
    mlp_dim: int = _f(0, "hidden width of the MLP; 0 = 4 * n_embd", ("ff_dim",))
    block_size: int = _f(1024, "context length in tokens (training sequence length)", ("seq_len",))
    vocab_size: int = _f(0, "tokenizer vocabulary; 0 = read from the dataset's meta.json")
    pad_vocab_multiple: int = _f(64, "pad the embedding/logit rows up to a multiple of this, for speed")
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
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimiser step on each rank")
    max_iters: int = _f(5000, "optimiser steps to train", ("max_train_steps", "max_steps"))
    compute_class: str = _f("", "Languini compute class like '6h': sets max_iters and decay from tokens_per_second")
    tokens_per_second: float = _f(0.0, "reference throughput of this config (Languini); turns tokens into accelerator-hours")
    eval_interval: int = _f(250, "evaluate every N steps (and at the end); 0 = only at the end", ("eval_every",))
    eval_iters: int = _f(20, "held-out batches per in-training evaluation", ("max_eval_steps",))
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
    seed: int = _f(1337, "base random seed (ranks derive theirs from it)")
    max_nonfinite: int = _f(5, "stop after this many consecutive non-finite steps")


@dataclass
class LogConfig:
    out_dir: str = _f("", "run folder; empty = logs/<class or free>/<preset>/<encoded name>")
    log_root: str = _f("logs", "parent of auto-named run folders")
    name: str = _f("", "run name; empty = encoded from the hyperparameters")
    comment: str = _f("", "free text appended to the run name")
    log_interval: int = _f(10, "print a training line every N steps", ("log_terminal_every",))
    log_metrics_every: int = _f(10, "write train metrics to metrics.jsonl/TensorBoard every N steps")
    log_grads_every: int = _f(0, "weight/grad/update/logit statistics every N steps; 0 = off")
    tensorboard: bool = _f(True, "write TensorBoard events (if tensorboard is installed)")
    wandb_log: bool = _f(False, "log to Weights & Biases (optional dependency)")
    wandb_project: str = _f("gptlab", "W&B project", ("wandb_project_name",))
    wandb_run: str = _f("", "W&B run name; empty = the run folder's name", ("wandb_run_name",))
    logger_type: str = _f("", "sinks besides metrics.jsonl: tb | wandb | all (Languini); empty = --tensorboard/--wandb_log",
                          choices=("", "tb", "wandb", "all"))
    relative_log_path: str = _f("", "folder under log_root for auto-named runs; empty = <class or free>/<preset>")
    progress: str = _f("auto", "progress bar: auto (on a terminal), on, off", choices=("auto", "on", "off"))


@dataclass
class SystemConfig:
    device: str = _f("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = _f("auto", "auto (bf16 where supported, else fp32) | bfloat16 | float16 | float32", ("precision",))
    compile: str = _f("auto", "torch.compile mode: auto (default on CUDA, none on CPU/MPS) | " + " | ".join(COMPILE_MODES),
                      choices=("auto",) + COMPILE_MODES)
    parallel: str = _f("ddp", "multi-process strategy under torchrun: ddp or fsdp (FSDP2)", choices=("ddp", "fsdp"))
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact resume on CPU)")
    num_threads: int = _f(0, "CPU threads for torch; 0 = torch's default")
    ce_chunk: int = _f(-1, "tokens per chunk of a linear+cross-entropy that never holds full fp32 logits; "
                       "0 = plain loss, -1 = auto (8192 under torch.compile, else 0)")
    ddp_bucket_mb: int = _f(100, "DDP gradient bucket size in MB (all-reduces start bucket by bucket during backward; "
                            "100 beat torch's 25 on 4 H200s, BENCHMARKS.md)")
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

    # --- flat access --------------------------------------------------------------
    def get(self, key: str) -> Any:
        section, name = KEY_INDEX[canonical_key(key)]
        return getattr(getattr(self, section), name)

    def set(self, key: str, value: Any) -> None:
        section, name = KEY_INDEX[canonical_key(key)]
        setattr(getattr(self, section), name, coerce(canonical_key(key), value))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls()
        for section, values in d.items():
            if section == "preset":
                cfg.preset = str(values)
                continue
            if section not in SECTIONS or not isinstance(values, dict):
                raise UserError(f"config: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
            for k, v in values.items():
                if k not in SECTION_KEYS[section]:
                    raise UserError(unknown_key_message(k))
                cfg.set(k, v)
        return cfg

    # --- derived values -------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        m = self.model
        return m.head_dim or m.n_embd // m.n_head

    @property
    def mlp_dim(self) -> int:
        return self.model.mlp_dim or 4 * self.model.n_embd


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
    "train": TrainConfig, "log": LogConfig, "system": SystemConfig,
}
KEY_INDEX: dict[str, tuple[str, str]] = {}
SECTION_KEYS: dict[str, set[str]] = {s: set() for s in SECTIONS}
ALIASES: dict[str, str] = {}
FIELD_INFO: dict[str, dataclasses.Field] = {}
for _section, _cls in SECTIONS.items():
    for _fld in fields(_cls):
        assert _fld.name not in KEY_INDEX, f"duplicate config key {_fld.name}"
        KEY_INDEX[_fld.name] = (_section, _fld.name)
        SECTION_KEYS[_section].add(_fld.name)
        FIELD_INFO[_fld.name] = _fld
        for _alias in _fld.metadata["aliases"]:
            assert _alias not in ALIASES, f"duplicate alias {_alias}"
            ALIASES[_alias] = _fld.name
for _section, _keys in list(SECTION_KEYS.items()):
    SECTION_KEYS[_section] |= {a for a, c in ALIASES.items() if c in _keys}

ALL_KEYS = sorted(set(KEY_INDEX) | set(ALIASES))


def canonical_key(key: str) -> str:
    key = key.replace("-", "_")
    if key in KEY_INDEX:
        return key
    if key in ALIASES:
        return ALIASES[key]
    raise UserError(unknown_key_message(key))


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, ALL_KEYS, n=1, cutoff=0.5)
    hint = f"did you mean --{close[0]}?" if close else "see `gptlab train --help` for the list"
    return f"unknown config key {key!r}: {hint}"


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def coerce(key: str, value: Any) -> Any:
    """Turn a CLI string / TOML / JSON value into the field's type, or raise UserError."""
    fld = FIELD_INFO[key]
    typ = fld.type if isinstance(fld.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[fld.type]
    if key == "compile":  # Languini passes None / default / ...; minimal-GPT passes True / False
        v = str(value).strip().lower()
        value = {"none": "none", "false": "none", "0": "none", "off": "none", "true": "default", "1": "default"}.get(v, v)
    try:
        if typ is bool:
            if isinstance(value, bool):
                out = value
            elif str(value).strip().lower() in _TRUE:
                out = True
            elif str(value).strip().lower() in _FALSE:
                out = False
            else:
                raise ValueError
        elif typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                out = int(value)
            else:
                s = str(value).strip().replace("_", "")
                try:
                    out = int(s)
                except ValueError:
                    f = float(s)  # accept 1e4 for a step count
                    if not f.is_integer():
                        raise
                    out = int(f)
        elif typ is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if math.isnan(out):
                raise ValueError
        else:
            out = "" if value is None else str(value)
    except (TypeError, ValueError):
        raise UserError(f"--{key}: expected {typ.__name__}, got {value!r}") from None
    choices = fld.metadata["choices"]
    if choices and out not in choices:
        raise UserError(f"--{key}: {out!r} is not one of {', '.join(map(str, choices))}")
    return out


# --------------------------------------------------------------------------------------
# Presets: plain dicts of overrides over the defaults above.
# --------------------------------------------------------------------------------------
# nanoGPT's GPT-2 recipe: a global batch of 12 x 40 x 1024 = 491,520 tokens per step. The 40
# accumulation steps are global (train_batch_size unset): 40 on 1 GPU, 5 on each of 8 (resolve_batch).
_GPT2_COMMON = dict(bias=True, tie_embeddings=True, gelu="tanh", dropout=0.0, block_size=1024,
                    dataset="openwebtext", batch_size=12, gradient_accumulation_steps=40,
                    max_iters=600000, lr_decay_iters=600000, warmup_iters=2000,
                    learning_rate=6e-4, min_lr=6e-5, eval_interval=1000, eval_iters=200)


def _languini(n_layer, n_embd, mlp_dim, n_head, head_dim):
    return dict(
        n_layer=n_layer, n_embd=n_embd, mlp_dim=mlp_dim, n_head=n_head, head_dim=head_dim,
        block_size=512, vocab_size=16384, bias=True, dropout=0.0, tie_embeddings=False,
        embed_scale=True, qkv="separate", gelu="tanh", scaled_init="mlp",
        dataset="books16384", sampler="stream", val_split="test",
        optimizer="adam", weight_decay=0.0, beta1=0.9, beta2=0.95, eps=1e-8,
        learning_rate=6e-4, min_lr=6e-6, schedule="languini", warmup_iters=200,
        lr_decay_iters=18265, max_iters=18265, grad_clip=0.0, dtype="float16",
        train_batch_size=128, batch_size=0, gradient_accumulation_steps=4,
        # The benchmark's eval (16 document streams, 500 batches) and its README's logging cadence.
        eval_interval=500, eval_iters=500, eval_batch_size=16, log_interval=100,
        checkpoint_interval=1000, log_grads_every=1000,
        compute_class="", compile="auto", seed=0, last_n=0,
    )


# The benchmark's published GPT recipes per compute class (its GPT README): the model size,
# global batch, accumulation steps and reference throughput; the steps follow from
# budget.steps_for_budget (18265, 36529, 36529, 21908, 43817, as published).
LANGUINI_RECIPES: dict[str, dict[str, Any]] = {
    "6h": dict(size="small", train_batch_size=128, gradient_accumulation_steps=4, tokens_per_second=55416),
    "12h": dict(size="small", train_batch_size=128, gradient_accumulation_steps=4, tokens_per_second=55416),
    "24h": dict(size="small", train_batch_size=256, gradient_accumulation_steps=8, tokens_per_second=55416),
    "48h": dict(size="medium", train_batch_size=256, gradient_accumulation_steps=32, tokens_per_second=16618),
    "96h": dict(size="medium", train_batch_size=256, gradient_accumulation_steps=32, tokens_per_second=16618),
}
# Reference throughputs (tokens/s, the best of the benchmark's sweep on its RTX 3090) of the
# sizes the recipes do not name; large and XL did not fit there.
LANGUINI_TOKENS_PER_SECOND = {"mini": 238719, "tiny": 141864, "small": 55416, "medium": 16618}
LANGUINI_SIZES = ("mini", "tiny", "small", "medium", "large", "XL")


def languini_recipe(preset: str | None, compute_class: str) -> dict[str, Any]:
    """Overrides a Languini preset takes under a compute class: the published batch,
    accumulation and throughput when the class's recipe is for this size, else the size's
    reference throughput (the steps then follow from the budget with the preset's batch)."""
    if preset not in LANGUINI_SIZES or not compute_class:
        return {}
    r = LANGUINI_RECIPES.get(f"{parse_hours(compute_class):g}h")
    if r is not None and r["size"] == preset:
        return {k: v for k, v in r.items() if k != "size"}
    tps = LANGUINI_TOKENS_PER_SECOND.get(preset)
    return {"tokens_per_second": tps} if tps else {}


PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(_GPT2_COMMON, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(_GPT2_COMMON, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(_GPT2_COMMON, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(_GPT2_COMMON, n_layer=48, n_head=25, n_embd=1600),
    # The well-known character-level recipe (a GPU run of a few minutes).
    "shakespeare_char": dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=True,
        dataset="shakespeare_char", batch_size=64, gradient_accumulation_steps=1,
        learning_rate=1e-3, min_lr=1e-4, max_iters=5000, lr_decay_iters=5000, warmup_iters=100,
        beta2=0.99, eval_interval=250, eval_iters=200, log_interval=10, always_save_checkpoint=False,
    ),
    # The CPU recipe: trains to val loss < 2.0 on tiny Shakespeare in a few CPU minutes.
    "baby": dict(
        n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=True,
        dataset="shakespeare_char", batch_size=12, gradient_accumulation_steps=1,
        learning_rate=1e-3, min_lr=1e-4, max_iters=2000, lr_decay_iters=2000, warmup_iters=100,
        beta2=0.99, eval_interval=250, eval_iters=20, log_interval=50, device="cpu", dtype="float32",
    ),
    # One-layer GPT-2 on the synthetic 0/1 data (entropy bound H(1/3) = 0.6365 nats/word).
    "zero_one": dict(
        n_layer=1, n_head=12, n_embd=768, block_size=512, dropout=0.0, bias=True,
        dataset="zero_one", batch_size=64, gradient_accumulation_steps=1,
        learning_rate=2e-3, min_lr=2e-4, max_iters=200, lr_decay_iters=200, warmup_iters=10,
        eval_interval=10, eval_iters=4, log_interval=10, checkpoint_interval=200,
    ),
    # Languini Kitchen GPT baselines: layers / h_dim / mlp_dim / heads / head_dim.
    "mini": _languini(4, 512, 2048, 8, 32),
    "tiny": _languini(4, 768, 3072, 12, 64),
    "small": _languini(12, 768, 3072, 12, 64),
    "medium": _languini(24, 1024, 4096, 16, 64),
    "large": _languini(24, 1536, 6144, 16, 96),
    "XL": _languini(24, 2048, 8192, 24, 128),
}
# Evaluation-only recipes for OpenAI's released weights (the well-known baselines).
for _hf in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
    PRESETS["eval_" + _hf.replace("-", "_")] = dict(
        PRESETS[_hf], init_from=_hf, eval_only=True, batch_size=8, eval_iters=500, gradient_accumulation_steps=1)
PRESETS["finetune_shakespeare"] = dict(
    PRESETS["gpt2-xl"], init_from="gpt2-xl", dataset="shakespeare", batch_size=1, gradient_accumulation_steps=32,
    max_iters=20, learning_rate=3e-5, min_lr=3e-6, decay_lr=False, eval_interval=5, eval_iters=40,
    always_save_checkpoint=False, dropout=0.0)


def resolve_preset_name(name: str) -> str:
    if not isinstance(name, str):  # e.g. `preset = 5` in a TOML file
        raise UserError(f"preset must be a name like 'baby' or 'small', got {name!r}")
    if name in PRESETS:
        return name
    lower = {k.lower(): k for k in PRESETS}
    if name.lower() in lower:  # "xl" works for "XL"
        return lower[name.lower()]
    close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.4)
    hint = f"did you mean {close[0]!r}?" if close else f"presets: {', '.join(PRESETS)}"
    raise UserError(f"unknown preset {name!r}: {hint}")


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config: flat keys and/or [section] tables, plus an optional `preset = "..."`."""
    p = Path(path)
    raw = read_toml(p, "config file")
    flat: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, dict):
            if k not in SECTIONS:
                raise UserError(f"{p}: unknown section [{k}]; sections are {', '.join(SECTIONS)}")
            for kk, vv in v.items():
                flat[kk] = vv
        else:
            flat[k] = v
    return flat


# Flags of the two reference trainers that have no meaning in gptlab: accepted, with this note.
NO_MEANING: dict[str, str] = {
    "log_activations_every": "activation statistics are not logged; --log_grads_every N logs weight, gradient, "
                             "update and logit statistics",
    "debug": "there is no debug mode; --log_interval 1 --deterministic true gives step-by-step, reproducible runs",
    "use_flash": "attention always uses torch's scaled_dot_product_attention, which picks flash kernels itself",
    "backend": "the process-group backend is picked per device (nccl on CUDA, gloo on CPU)",
}

# nanoGPT's train.py defaults: the base a nanoGPT config file (config/*.py) overrides, so
# `gptlab train config/train_gpt2.py` trains what `python train.py config/train_gpt2.py` does.
# bias=False and the exact GELU are nanoGPT's from-scratch model (gptlab's presets follow GPT-2).
NANOGPT_BASE: dict[str, Any] = dict(
    out_dir="out", eval_interval=2000, log_interval=1, eval_iters=200, eval_only=False, always_save_checkpoint=True,
    init_from="scratch", wandb_log=False, wandb_project="owt", wandb_run="gpt2", dataset="openwebtext",
    gradient_accumulation_steps=40, batch_size=12, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0,
    bias=False, gelu="exact", learning_rate=6e-4, max_iters=600000, weight_decay=0.1, beta1=0.9, beta2=0.95,
    grad_clip=1.0, decay_lr=True, warmup_iters=2000, lr_decay_iters=600000, min_lr=6e-5)

# Keys whose value only names things: a computed value (nanoGPT's 'ft-' + str(time.time()))
# is dropped with a note instead of refusing the whole file.
_NAME_ONLY = ("wandb_run",)


def layer_key(key: str, where: str = "") -> str | None:
    """The canonical key, or None (after a one-line note) for a flag with no meaning here."""
    bare = key.replace("-", "_")
    if bare in NO_MEANING:
        print(f"note: {where}--{bare} is accepted but has no effect: {NO_MEANING[bare]}", file=sys.stderr)
        return None
    return canonical_key(bare)


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _literal(node: ast.AST, known: dict[str, Any]) -> Any:
    """The value of a literal expression (numbers, strings, booleans, arithmetic on them,
    names assigned earlier in the file); ValueError for anything else. Nothing is executed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.Name) and node.id in known:
        return known[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand, known)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _literal(node.left, known), _literal(node.right, known)
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
        if numbers and not (isinstance(node.op, ast.Pow) and abs(b) > 64):  # 10**9 yes, 10**10**10 no
            try:
                return _BINOPS[type(node.op)](a, b)
            except ArithmeticError:
                pass
        elif isinstance(node.op, ast.Add) and isinstance(a, str) and isinstance(b, str):
            return a + b
    raise ValueError


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
            try:
                key = layer_key(name, f"{p}:{stmt.lineno}: ")
            except UserError as e:
                raise UserError(f"{p}:{stmt.lineno}: {e}") from None
            try:
                known[name] = _literal(stmt.value, known)
            except ValueError:
                if key in _NAME_ONLY:
                    print(f"note: {p}:{stmt.lineno}: {name} is computed, not a literal; ignored (the run folder's "
                          "name is used)", file=sys.stderr)
                    continue
                raise UserError(f"{p}:{stmt.lineno}: `{ast.unparse(stmt.value)[:60]}` is not a literal value: gptlab "
                                f"reads config files without running them; write the value itself, e.g. {name} = 5 * 8"
                                ) from None
            if key is not None:
                out[key] = known[name]
    return out


def load_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(values, base layer, preset label) of a config file by its suffix: .toml, nanoGPT's
    .py (over nanoGPT's own defaults), or a run's config.json (`gptlab train RUN/config.json`)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {str(p)!r} not found")
    if p.suffix == ".py":  # train_shakespeare_char.py -> runs under .../train_shakespeare_char/
        return load_py_config(p), NANOGPT_BASE, "".join(c if c.isalnum() or c in "._-" else "-" for c in p.stem)
    if p.suffix == ".json":
        saved = load_run_config(p)
        return {k: saved.get(k) for k in KEY_INDEX}, {}, saved.preset
    return load_toml(p), {}, None


def parse_overrides(argv: list[str]) -> dict[str, str]:
    """`--key=value` or `--key value` pairs; a bare `--flag` means true."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: overrides look like --key=value or --key value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2
                                         and not _is_number(argv[i + 1])):
            key, value = body, argv[i + 1]
            i += 2
        else:
            key, value = body, "true"
            i += 1
        key = layer_key(key)
        if key is not None:
            out[key] = value
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def build_config(preset: str | None = None, config_file: str | None = None,
                 overrides: dict[str, Any] | None = None, check: bool = True) -> Config:
    """defaults -> preset (or nanoGPT's defaults under a .py file) -> config file -> overrides;
    then validate (check=False only for showing values, as `--help` does)."""
    cfg = Config()
    file_values, base, label = load_config_file(config_file) if config_file else ({}, {}, None)
    preset = preset or file_values.pop("preset", None)
    file_values.pop("preset", None)
    layers: list[dict[str, Any]] = [base]
    if preset:
        preset = resolve_preset_name(preset)
        cfg.preset = preset
        layers.append(PRESETS[preset])
    elif label:
        cfg.preset = label
    layers += [file_values, overrides or {}]
    # A Languini preset under --compute_class takes that class's published recipe, below what
    # the config file and the command line set.
    chosen = dict(file_values, **(overrides or {}))
    cc = next((str(v) for k, v in chosen.items() if canonical_key(k) == "compute_class"), "")
    layers.insert(-2, languini_recipe(preset, cc))
    for layer in layers:
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


# Ranges of the integer keys: at least 1, or at least 0 (0 has a documented meaning).
_AT_LEAST_1 = ("n_layer", "n_head", "n_embd", "block_size", "max_iters", "gradient_accumulation_steps",
               "pad_vocab_multiple", "log_interval", "log_metrics_every", "eval_iters", "max_nonfinite")
_AT_LEAST_0 = ("head_dim", "mlp_dim", "vocab_size", "batch_size", "train_batch_size", "eval_interval",
               "eval_batch_size", "last_n", "checkpoint_interval", "keep_last", "warmup_iters", "lr_decay_iters",
               "seed", "num_threads", "log_grads_every")
_MAX_VOCAB = 2**31 - 1  # token ids are stored as at most 32-bit integers
_MAX_SEED = 2**63 - 1  # torch.manual_seed's range
DEVICE_NAMES = "auto, cpu, cuda, cuda:N (N = GPU index) or mps"


def validate(cfg: Config) -> None:
    """Impossible values are user errors, found before anything is built or written."""
    m, o, t = cfg.model, cfg.optim, cfg.train
    for k in _AT_LEAST_1 + _AT_LEAST_0:
        v, low = cfg.get(k), 1 if k in _AT_LEAST_1 else 0
        if v < low:
            raise UserError(f"--{k} must be {'positive' if low else '>= 0'}, got {v}")
    for section, cls in SECTIONS.items():  # every float key: NaN is refused when parsed, infinities here
        for f in fields(cls):
            v = getattr(getattr(cfg, section), f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"--{f.name} must be a finite number, got {v}")
    if t.batch_size <= 0 and t.train_batch_size <= 0:
        raise UserError("set --batch_size (per-rank micro batch) or --train_batch_size (global batch) to a positive number")
    if o.learning_rate <= 0:
        raise UserError(f"--learning_rate must be > 0, got {o.learning_rate}")
    if o.min_lr < 0 or (o.min_lr > o.learning_rate and o.decay_lr and o.schedule != "constant"):
        raise UserError(f"--min_lr must be in [0, learning_rate={o.learning_rate}], got {o.min_lr}")
    if not 0 <= m.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {m.dropout}")
    if not (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1):
        raise UserError("--beta1 and --beta2 must be in [0, 1)")
    if o.eps <= 0:
        raise UserError(f"--eps must be > 0, got {o.eps}")
    if o.grad_clip < 0 or o.weight_decay < 0:
        raise UserError("--grad_clip and --weight_decay must not be negative")
    if m.head_dim == 0 and m.n_embd % m.n_head:
        raise UserError(f"--n_embd {m.n_embd} is not divisible by --n_head {m.n_head}: change one, or set --head_dim")
    if t.last_n and m.block_size % t.last_n:
        raise UserError(f"--last_n {t.last_n} must divide --block_size/--seq_len {m.block_size}")
    if m.vocab_size > _MAX_VOCAB or t.seed > _MAX_SEED:
        raise UserError(f"--vocab_size must be below {_MAX_VOCAB + 1} and --seed below {_MAX_SEED + 1}")
    cores = os.cpu_count() or 1
    if cfg.system.num_threads > 4 * cores:  # far past the cores torch's thread pool crashes rather than slows
        raise UserError(f"--num_threads {cfg.system.num_threads} is far more than this machine's {cores} cores: "
                        f"use at most {cores}, or 0 for torch's default")
    if cfg.system.ddp_bucket_mb < 1:
        raise UserError(f"--ddp_bucket_mb must be at least 1, got {cfg.system.ddp_bucket_mb}")
    if cfg.system.ce_chunk < -1:
        raise UserError(f"--ce_chunk {cfg.system.ce_chunk}: use a positive chunk, 0 (plain loss) or -1 (auto)")
    if t.tokens_per_second < 0:
        raise UserError("--tokens_per_second must not be negative")
    if t.compute_class and not t.tokens_per_second:
        raise UserError("--compute_class needs --tokens_per_second (the config's reference throughput)")
    if t.compute_class:
        parse_hours(t.compute_class)
    check_device_name(cfg.system.device)


def check_device_name(name: str) -> None:
    """A device string torch understands, among those gptlab runs on (no torch import)."""
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise UserError(f"--device {name!r} is not a device: use {DEVICE_NAMES}")


def check_device(name: str) -> None:
    """The device exists on this machine, checked before anything is loaded or written."""
    check_device_name(name)
    if name in ("auto", "cpu"):
        return
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise UserError(f"--device {name}: no CUDA GPU is usable here (torch {torch.__version__} is {build}): "
                            "use --device cpu, or install a CUDA build of torch "
                            "(pip install torch --index-url https://download.pytorch.org/whl/cu124)")
        n = torch.cuda.device_count()
        if ":" in name and int(name.split(":")[1]) >= n:
            raise UserError(f"--device {name}: this machine has {n} GPU(s), numbered 0..{n - 1}: use one of those")
    elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: Apple's Metal backend is not available here: use --device cpu")


def _host_memory() -> int:
    """Bytes of physical memory (0 if unknown: no check)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_memory(cfg: Config, weights_only: bool = False) -> None:
    """Refuse shapes that cannot fit anywhere here (called on the resolved config of a run):
    lower bounds of the training state (fp32 weights, gradients and two Adam moments: 16 bytes
    a parameter, shared by FSDP ranks; weights only for eval_only or weights_only) and of one micro-batch's
    activations (>= 16 bytes per token, layer and width unit), against the host's memory plus
    every GPU's."""
    import os

    m, t = cfg.model, cfg.train
    avail = _host_memory()
    if not avail:
        return
    width, heads = m.n_embd, m.n_head * (m.head_dim or max(1, m.n_embd // m.n_head))
    vocab = max(m.vocab_size, 1)
    per_layer = width * (3 * heads + heads) + 2 * width * (m.mlp_dim or 4 * width)
    params = m.n_layer * per_layer + vocab * width * (1 if m.tie_embeddings else 2) + m.block_size * width
    shards = int(os.environ.get("WORLD_SIZE", "1")) if cfg.system.parallel == "fsdp" else 1
    micro = t.batch_size or max(1, t.train_batch_size // max(1, t.gradient_accumulation_steps))
    if t.eval_only or weights_only:  # weights alone: no gradients, optimiser state or stored activations
        need = 4 * params // max(1, shards)
    else:
        need = 16 * params // max(1, shards) + 16 * micro * m.block_size * m.n_layer * width
    if need <= avail:
        return
    avail += _gpu_memory()
    if need > avail:
        raise UserError(f"this model needs at least {need / 2**30:,.0f} GiB (n_layer {m.n_layer}, n_embd "
                        f"{width}, vocab_size {m.vocab_size}, block_size {m.block_size}, batch {micro}) but this machine "
                        f"has {avail / 2**30:,.0f} GiB: reduce --vocab_size, --block_size, --batch_size or the model size")


def _gpu_memory() -> int:
    import torch

    if not torch.cuda.is_available():
        return 0
    return sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


def parse_hours(text: str, flag: str = "--compute_class") -> float:
    """Hours from '6', '6h' or '6.0h'; a UserError naming `flag` otherwise."""
    try:
        h = float(text.strip().lower().removesuffix("h"))
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected hours like '6h' or '12h'") from None
    if not 0 < h < math.inf:
        raise UserError(f"{flag} {text!r} must be a positive number of hours, like 6h")
    return h


class BatchSplit(NamedTuple):
    """How one optimiser step's global batch is cut: micro x accum x world = global (sequences)."""

    micro: int  # sequences per forward/backward on one rank
    accum: int  # micro-batches per optimiser step on one rank
    global_batch: int  # sequences per optimiser step over all ranks


def resolve_batch(cfg: Config, world_size: int) -> BatchSplit:
    """The batch split for world_size ranks, keeping both users' meaning of the flags.

    - train_batch_size set (Languini): it is the global batch; gradient_accumulation_steps
      is per rank, and micro = train_batch_size / (world x accum).
    - train_batch_size unset (nanoGPT): batch_size is the micro batch and
      gradient_accumulation_steps the global count of micro-batches, divided over the ranks
      (40 = 5 on each of 8 GPUs), so the global batch does not change with the rank count.
      1 means no accumulation: each rank does one micro-batch.
    """
    t = cfg.train
    accum = t.gradient_accumulation_steps
    if t.train_batch_size > 0:
        if t.train_batch_size % (world_size * accum):
            raise UserError(
                f"--train_batch_size {t.train_batch_size} is not divisible by world_size {world_size} x "
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
    """Every key with its value, aliases and meaning, grouped by section: the defaults, or
    a preset's / config file's values (marked * where they differ from the defaults)."""
    title = f"values of {cfg.preset} (* = differs from the default)" if cfg else "defaults"
    lines = [f"config keys, {title} (--key=value or --key value; aliases in brackets):"]
    for section, cls in SECTIONS.items():
        lines.append(f"\n[{section}]")
        for fld in fields(cls):
            al = fld.metadata["aliases"]
            alias = f" [{', '.join(al)}]" if al else ""
            ch = fld.metadata["choices"]
            choice = f" {{{'|'.join(ch)}}}" if ch else ""
            value = getattr(getattr(cfg, section), fld.name) if cfg else fld.default
            mark = "*" if value != fld.default else ""
            lines.append(f"  --{fld.name}{alias} = {value!r}{mark}{choice}\n      {fld.metadata['help']}")
    lines.append("\naccepted with a note (no meaning here): " + ", ".join("--" + k for k in NO_MEANING))
    lines.append("presets: " + ", ".join(PRESETS))
    return "\n".join(lines)


def load_run_config(path: str | Path) -> Config:
    """Rebuild a Config from a run's config.json (or the run folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise UserError(f"no config.json at {str(p)!r}: pass a run folder written by `gptlab train`")
    d = read_json(p, "run config")
    if not isinstance(d, dict):
        raise UserError(f"{p} does not hold a config object")
    return Config.from_dict(d)


# --------------------------------------------------------------------------------------
# The final config of a run: resolved once, before anything reads it; never edited after.
# --------------------------------------------------------------------------------------

# What a resumed run may change: cadences, outputs, the machine, and the knobs a diverged
# run is resumed with. Any other key that differs from the run's config.json is refused.
RESUME_MAY_CHANGE = frozenset({
    "max_iters", "eval_interval", "eval_iters", "eval_batch_size", "eval_at_start", "eval_only", "checkpoint_interval",
    "keep_last", "always_save_checkpoint", "log_interval", "log_metrics_every", "log_grads_every", "tensorboard",
    "wandb_log", "wandb_project", "logger_type", "progress", "device", "num_threads", "dtype", "compile", "ce_chunk",
    "ddp_bucket_mb", "ddp_bucket_view", "parallel", "deterministic", "max_nonfinite", "learning_rate", "min_lr",
    "grad_clip", "resume", "overwrite", "init_from", "out_dir", "log_root", "name", "comment", "data_root",
    "batch_size", "gradient_accumulation_steps"})
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve(cfg: Config, *, world_size: int, device, data_meta: dict | None, init_source: dict | None = None,
            resume_config: Config | None = None) -> Config:
    """The config a run trains with: a new Config, `cfg` untouched.

    dtype and compile per device, vocab from the data (or the --init_from source), the
    architecture from init_source (ModelConfig values of the source model), compute-class
    steps, the batch split for world_size, the dataset as an absolute path. With
    resume_config (the run's config.json) any non-allow-listed key that differs is a UserError.
    """
    out = _resolved(cfg, world_size, device, data_meta, init_source)
    if resume_config is None:
        return out
    mine, saved = out.to_dict(), resume_config.to_dict()
    for section, values in mine.items():
        if section == "preset":
            continue
        for k, v in values.items():
            old = saved.get(section, {}).get(k, v)
            if v != old and k not in RESUME_MAY_CHANGE:
                raise UserError(f"--{k} {v!r} differs from {old!r} in the run's config.json: a resumed run keeps its "
                                f"config; drop --{k} (only cadences, max_iters, device and output settings may change)")
    out.preset = resume_config.preset
    return out


def _resolved(cfg: Config, world_size: int, device, data_meta: dict | None, init_source: dict | None) -> Config:
    import copy

    import torch

    from gptlab.runtime import resolve_ce_chunk, resolve_data_dir

    out = copy.deepcopy(cfg)
    m, s, t = out.model, out.system, out.train
    dev = torch.device(device)
    if init_source:  # the architecture is the source's; dropout and a shorter context are ours
        keep = {"dropout": m.dropout, "block_size": min(m.block_size, int(init_source.get("block_size", m.block_size)))}
        for k, v in dict(init_source, **keep).items():
            if k in SECTION_KEYS["model"]:
                setattr(m, k, v)
    m.vocab_size = _vocab(m.vocab_size, data_meta, fixed=bool(init_source))
    s.dtype = dtype_for(s.dtype, dev)
    if s.compile == "auto":
        s.compile = "default" if dev.type == "cuda" else "none"
    # The chunked loss returns no logits, so logit statistics (log_grads_every) keep the plain loss.
    s.ce_chunk = 0 if out.log.log_grads_every else resolve_ce_chunk(s.ce_chunk, s.compile)
    micro, accum, global_batch = resolve_batch(out, world_size)
    t.batch_size, t.train_batch_size, t.gradient_accumulation_steps = micro, global_batch, accum
    if t.compute_class:
        from gptlab.budget import steps_for_budget

        t.max_iters = out.optim.lr_decay_iters = steps_for_budget(
            parse_hours(t.compute_class), t.tokens_per_second, global_batch, m.block_size)
    if data_meta is not None:
        out.data.dataset = str(resolve_data_dir(out.data.dataset, out.data.data_root).resolve())
    # The run folder, named once from this config; --resume/--overwrite are this command's, not the run's.
    from gptlab.runs import run_dir

    out.log.out_dir = str(run_dir(out, world_size).absolute())
    t.resume = t.overwrite = False
    validate(out)
    check_memory(out)
    return out


def _vocab(vocab: int, data_meta: dict | None, fixed: bool) -> int:
    """The model's vocab: the data's unless set (or fixed by pretrained weights); never smaller than the data's."""
    data_vocab = int(data_meta["vocab_size"]) if data_meta else 0
    if vocab and vocab < data_vocab:
        hint = "prepare the data with the source model's tokenizer" if fixed else \
            "drop --vocab_size (it is read from meta.json) or use matching data"
        raise UserError(f"vocab_size {vocab} is smaller than the dataset's {data_vocab}: {hint}")
    return vocab or data_vocab


def dtype_for(name: str, device) -> str:
    """auto = bf16 on a GPU that has it, fp16 (with a loss scaler) on one that has not, fp32
    elsewhere; fp16 on a CPU or MPS runs as fp32 (autocast there is slow, and presets ask for it)."""
    import torch

    name = _DTYPE_NAMES.get(name, name)
    if name not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"--dtype {name!r}: use auto, bfloat16, float16 or float32")
    if device.type != "cuda":
        return "bfloat16" if name == "bfloat16" else "float32"
    if name in ("auto", "bfloat16"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return name
