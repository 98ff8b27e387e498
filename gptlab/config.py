"""The config schema: a tree of dataclasses, named presets, and the help text.

Every leaf has a default, a one-line help and aliases (nanoGPT's and Languini's names); leaf names
are unique, so a flat `--key value` reaches one field. Files and overrides: config_files.py;
validation: config_check.py; the final config of a run: resolve.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from gptlab.args import BOOL_WORDS
from gptlab.errors import UserError

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _f(default, help: str, aliases: tuple[str, ...] = (), choices: tuple | None = None, low: int = 0,
       high: int = 0):
    # low/high: a number's range (validate); 0 means "off", "derived" or "auto" where the help says so.
    return field(default=default, metadata={"help": help, "aliases": aliases, "choices": choices,
                                            "low": low, "high": high})


# ModelConfig.options: an idea's own keys (declared by the idea with their defaults), set with the
# same --key value and saved in config.json, but not among gptlab's flat keys.
OPTIONS = "options"


@dataclass
class ModelConfig:
    model: str = _f("gpt",
                    "the model: gpt (built in), path/to/idea.py:ClassName or package.module:ClassName "
                    "(README, 'Your own idea')")
    model_sha256: str = _f("", "set by gptlab: sha256 of the idea's source (a changed file is refused "
                               "on --resume)")
    n_layer: int = _f(12, "transformer blocks", ("n_layers",), low=1, high=4096)
    n_head: int = _f(12, "attention heads per block", ("n_heads",), low=1, high=4096)
    n_embd: int = _f(768, "residual stream width", ("h_dim",), low=1, high=1 << 18)
    head_dim: int = _f(0, "width of one attention head; 0 = n_embd / n_head", high=1 << 16)
    mlp_dim: int = _f(0, "hidden width of the MLP; 0 = 4 * n_embd", ("ff_dim",), high=1 << 20)
    block_size: int = _f(1024, "context length in tokens (training sequence length)", ("seq_len",),
                         low=1, high=1 << 24)
    vocab_size: int = _f(0, "tokenizer vocabulary; 0 = read from the dataset's meta.json",
                         high=2**31 - 1)
    pad_vocab_multiple: int = _f(64, "pad the embedding/logit rows up to a multiple of this, for speed",
                                 low=1)
    bias: bool = _f(True, "biases in Linear and LayerNorm layers (GPT-2: true)")
    dropout: float = _f(0.0, "dropout on embeddings, attention and residual branches")
    tie_embeddings: bool = _f(True, "share the token embedding with the output layer")
    embed_scale: bool = _f(False, "multiply token embeddings by sqrt(n_embd) (Languini)")
    qkv: str = _f("fused", "attention input projection: one fused QKV matrix or separate Q/K/V",
                  choices=("fused", "separate"))
    gelu: str = _f("tanh", "GELU form: exact erf or the tanh approximation GPT-2 used",
                   choices=("exact", "tanh"))
    scaled_init: str = _f("all", "which residual output projections get std 0.02/sqrt(2L): "
                                 "attention+MLP or MLP only", choices=("all", "mlp", "none"))
    options: dict = field(default_factory=dict,
                          metadata={"help": "the idea's own keys (declared in its file)"})


@dataclass
class DataConfig:
    dataset: str = _f("shakespeare_char", "prepared dataset name (folder under data_root) or a path",
                      ("data",))
    data_root: str = _f("data", "folder that holds prepared datasets")
    sampler: str = _f("random", "training batches: random windows, or Languini document streams",
                      choices=("random", "stream"))
    train_split: str = _f("train", "split used for training")
    val_split: str = _f("val", "split used for in-training evaluation (falls back to 'test')")


BUILTIN_OPTIMIZERS = ("adamw", "adam", "muon")


@dataclass
class OptimConfig:
    optimizer: str = _f("adamw", "adamw (decoupled decay on >=2-D weights), adam (no decay), muon "
                        "(torch.optim.Muon on the block matrices, AdamW elsewhere), or an idea: "
                        "path/opt.py:function | module:function")
    optimizer_sha256: str = _f("", "set by gptlab: sha256 of an optimiser idea's file (a changed file "
                                   "is refused on --resume)")
    learning_rate: float = _f(6e-4, "peak learning rate", ("max_lr", "lr"))
    min_lr: float = _f(6e-5, "learning rate at the end of the decay")
    weight_decay: float = _f(0.1, "AdamW weight decay on matrices and embeddings")
    beta1: float = _f(0.9, "Adam beta1")
    beta2: float = _f(0.95, "Adam beta2")
    eps: float = _f(1e-8, "Adam epsilon")
    grad_clip: float = _f(1.0, "clip the global gradient norm at this value; 0 = off",
                          ("grad_clip_norm",))
    schedule: str = _f("cosine", "cosine: linear warmup then cosine to min_lr; languini: cosine times a "
                                 "linear ramp; constant", choices=("cosine", "languini", "constant"))
    decay_lr: bool = _f(True, "false = constant learning rate (same as schedule=constant)")
    warmup_iters: int = _f(2000, "steps of linear warmup (languini ramp length)", ("warmup_steps",))
    lr_decay_iters: int = _f(600000, "step at which the cosine reaches min_lr", ("decay_steps",))


@dataclass
class TrainConfig:
    batch_size: int = _f(12, "micro-batch per rank (sequences); 0 = derived from train_batch_size",
                         high=1 << 24)
    train_batch_size: int = _f(0, "global batch per optimiser step = world * batch_size * accumulation; "
                                  "0 = derived", high=1 << 24)
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimiser step on each rank", low=1,
                                          high=1 << 16)
    max_iters: int = _f(5000, "optimiser steps to train", ("max_train_steps", "max_steps"), low=1)
    compute_class: str = _f("", "Languini compute class like '6h': sets max_iters and decay from "
                                "tokens_per_second")
    tokens_per_second: float = _f(0.0, "reference throughput of this config (Languini); turns tokens "
                                       "into accelerator-hours")
    eval_interval: int = _f(250, "evaluate every N steps (and at the end); 0 = only at the end",
                            ("eval_every",))
    eval_iters: int = _f(20, "held-out batches per in-training evaluation", ("max_eval_steps",), low=1,
                         high=10**7)
    eval_cap: float = _f(0.5, "in-training eval scores at most this share of the run's training tokens "
                              "(fewer batches on a short run, announced); 0 = eval_iters always")
    eval_batch_size: int = _f(0, "sequences per eval batch; 0 = batch_size", ("test_batch_size",))
    eval_only: bool = _f(False, "evaluate once and exit (baselines)")
    last_n: int = _f(0, "score only the last N targets of each eval window (0 = all); must divide "
                        "block_size")
    checkpoint_interval: int = _f(0, "write a checkpoint every N steps (and at the end); 0 = at "
                                     "evaluations", ("log_ckpt_every",))
    eval_at_start: bool = _f(False, "also evaluate before the first step (step 0)")
    always_save_checkpoint: bool = _f(True, "write 'last' at every eval even without improvement")
    keep_last: int = _f(2, "numbered checkpoints to keep besides best")
    init_from: str = _f("scratch", "scratch | resume | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | "
                                   "RUN_DIR | checkpoint file")
    resume: bool = _f(False, "continue the run in out_dir from its newest checkpoint")
    overwrite: bool = _f(False, "allow training into an existing run folder (renames the old one aside)")
    seed: int = _f(1337, "base random seed (ranks derive theirs from it)", high=2**63 - 1)
    max_nonfinite: int = _f(5, "stop after this many consecutive non-finite steps", low=1, high=10**6)


@dataclass
class LogConfig:
    out_dir: str = _f("", "run folder; empty = logs/<class or free>/<preset>/<encoded name>")
    log_root: str = _f("logs", "parent of auto-named run folders")
    name: str = _f("", "run name; empty = encoded from the hyperparameters")
    comment: str = _f("", "free text appended to the run name")
    log_interval: int = _f(10, "print a training line every N steps", ("log_terminal_every",), low=1)
    log_metrics_every: int = _f(10, "write train metrics to metrics.jsonl/TensorBoard every N steps",
                                low=1)
    log_grads_every: int = _f(0, "weight/grad/update/logit statistics every N steps; 0 = off")
    tensorboard: bool = _f(True, "write TensorBoard events (if tensorboard is installed)")
    wandb_log: bool = _f(False, "log to Weights & Biases (optional dependency)")
    wandb_project: str = _f("gptlab", "W&B project", ("wandb_project_name",))
    wandb_run: str = _f("", "W&B run name; empty = the run folder's name", ("wandb_run_name",))
    logger_type: str = _f("", "sinks besides metrics.jsonl (Languini); empty = "
                              "--tensorboard/--wandb_log", choices=("", "tb", "wandb", "all"))
    relative_log_path: str = _f("", "folder under log_root for auto-named runs; empty = <class or "
                                    "free>/<preset>")
    progress: str = _f("auto", "progress bar: auto (on a terminal), on, off",
                       choices=("auto", "on", "off"))


@dataclass
class SystemConfig:
    device: str = _f("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = _f("auto", "auto (bf16 where supported, else fp32) | bfloat16 | float16 | float32",
                    ("precision",))
    compile: str = _f("auto", "torch.compile mode; auto = default on CUDA, none on CPU/MPS",
                      choices=("auto",) + COMPILE_MODES)
    parallel: str = _f("ddp", "multi-process strategy under torchrun: ddp or fsdp (FSDP2)",
                       choices=("ddp", "fsdp"))
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact resume on CPU)")
    num_threads: int = _f(0, "CPU threads for torch; 0 = torch's default")
    ce_chunk: int = _f(-1, "tokens per chunk of a chunked linear+CE (no full fp32 logits); 0 = off, -1 "
                           "= auto", low=-1)
    ddp_bucket_mb: int = _f(100, "DDP gradient bucket size in MB (100 beat torch's 25 on 4 H200s, "
                                 "BENCHMARKS.md)", low=1)
    ddp_bucket_view: bool = _f(True, "DDP gradients are views into the all-reduce buckets (one copy and "
                                     "its memory saved)")


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
                raise UserError(f"config: unknown section {section!r}; sections are "
                                f"{', '.join(SECTIONS)}")
            for k, v in values.items() if section != "preset" else ():
                if section == "model" and k == OPTIONS:
                    cfg.model.options = option_values(v)
                    continue
                if SECTION_OF.get(ALIASES.get(k, k)) != section:
                    raise UserError(unknown_key_message(k))
                cfg.set(k, v)
        return cfg


def option_values(values: Any) -> dict[str, Any]:
    """An idea's options as read from a file: names to bool/int/float/str (typed by the idea later)."""
    if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, (bool, int, float, str)) for k, v in values.items()):
        raise UserError(f"config: model.{OPTIONS} must map option names to numbers, booleans or "
                        f"strings, got {values!r}: restore the run's config.json")
    return dict(values)


def leaves(cls: type) -> list[dataclasses.Field]:
    """A section's flat keys (every field but an idea's options)."""
    return [f for f in fields(cls) if f.name != OPTIONS]


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Config) if f.name != "preset"}
# Every key's field and section, and every alias's key; a duplicate name would make a flat --key
# ambiguous.
FIELD_INFO: dict[str, dataclasses.Field] = {f.name: f for c in SECTIONS.values() for f in leaves(c)}
SECTION_OF: dict[str, str] = {f.name: s for s, c in SECTIONS.items() for f in leaves(c)}
ALIASES: dict[str, str] = {a: f.name for f in FIELD_INFO.values() for a in f.metadata["aliases"]}
ALL_KEYS = sorted(n for c in SECTIONS.values() for f in leaves(c)
                  for n in (f.name, *f.metadata["aliases"]))
assert len(ALL_KEYS) == len(set(ALL_KEYS)), "duplicate config key or alias"


# The built-in models' names (gptlab.registry.BUILTIN_MODELS holds their classes).
BUILTIN_MODEL_NAMES = ("gpt",)


def is_builtin(spec: str) -> bool:
    """Does a --model value name a built-in model (rather than an idea's file or module)?"""
    return str(spec).strip().lower() in BUILTIN_MODEL_NAMES


def is_key(key: str) -> bool:
    """Is this one of gptlab's flat keys or aliases?"""
    key = key.replace("-", "_")
    return key in FIELD_INFO or key in ALIASES


def canonical_key(key: str, where: str = "") -> str:
    key = key.replace("-", "_")
    if key in FIELD_INFO or key in ALIASES:
        return ALIASES.get(key, key)
    raise UserError(where + unknown_key_message(key))


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, ALL_KEYS, n=1, cutoff=0.5)
    hint = f"did you mean --{close[0]}?" if close else "see `gptlab train --help` for the list"
    return f"unknown config key {key!r}: {hint}"


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


CONVERT_BY_TYPE = {"bool": _to_bool, "int": _to_int, "float": _to_float,
                   "str": lambda v: "" if v is None else str(v)}


def coerce(key: str, value: Any) -> Any:
    """Turn a CLI string / TOML / JSON value into the field's type, or raise UserError."""
    fld = FIELD_INFO[key]
    typ = getattr(fld.type, "__name__", fld.type)
    if key == "compile":
        value = str(value).strip().lower()
        value = _COMPILE_WORDS.get(value, value)
    try:
        out = CONVERT_BY_TYPE[typ](value)
    except (TypeError, ValueError, KeyError, OverflowError):
        raise UserError(f"--{key}: expected {typ}, got {value!r}") from None
    choices = fld.metadata["choices"]
    if choices and out not in choices:
        raise UserError(f"--{key}: {out!r} is not one of {', '.join(map(str, choices))}")
    return out


# Presets: plain dicts of overrides over the defaults above.
# nanoGPT's GPT-2 recipe: a global batch of 12 x 40 x 1024 = 491,520 tokens per step. The 40 accumulation
# steps are global (train_batch_size unset): 40 on 1 GPU, 5 on each of 8 (resolve_batch).
_GPT2 = dict(bias=True, tie_embeddings=True, gelu="tanh", dropout=0.0, block_size=1024,
             dataset="openwebtext", batch_size=12, gradient_accumulation_steps=40, max_iters=600000,
             lr_decay_iters=600000, warmup_iters=2000, learning_rate=6e-4, min_lr=6e-5,
             eval_interval=1000, eval_iters=200)
# Languini Kitchen's GPT recipe, with the benchmark's eval (16 document streams, 500 batches, every 1,000
# steps as its projects/gpt/configs.py sets eval_every) and logging cadence.
_LANGUINI = dict(
    block_size=512, vocab_size=16384, bias=True, dropout=0.0, tie_embeddings=False, embed_scale=True,
    qkv="separate", gelu="tanh", scaled_init="mlp", dataset="books16384", sampler="stream",
    val_split="test", optimizer="adam", weight_decay=0.0, beta1=0.9, beta2=0.95, eps=1e-8,
    learning_rate=6e-4, min_lr=6e-6, schedule="languini", warmup_iters=200, lr_decay_iters=18265,
    max_iters=18265, grad_clip=0.0, dtype="float16", train_batch_size=128, batch_size=0,
    gradient_accumulation_steps=4, eval_interval=1000, eval_iters=500, eval_batch_size=16,
    log_interval=100, checkpoint_interval=1000, log_grads_every=1000, compute_class="", compile="auto",
    seed=0, last_n=0)
# Languini sizes: n_layer, n_embd (h_dim), mlp_dim, n_head, head_dim, reference throughput (tokens/s, the
# best of the benchmark's sweep on its RTX 3090; 0 = unmeasured: large and XL did not fit there).
LANGUINI_SIZES = {"mini": (4, 512, 2048, 8, 32, 238719), "tiny": (4, 768, 3072, 12, 64, 141864),
                  "small": (12, 768, 3072, 12, 64, 55416), "medium": (24, 1024, 4096, 16, 64, 16618),
                  "large": (24, 1536, 6144, 16, 96, 0), "XL": (24, 2048, 8192, 24, 128, 0)}
# The benchmark's published GPT recipes per compute class (its GPT README): size, global batch,
# accumulation steps; the steps follow from budget.steps_for_budget (18265, 36529, 36529, 21908, 43817,
# as published).
LANGUINI_RECIPES = {"6h": ("small", 128, 4), "12h": ("small", 128, 4), "24h": ("small", 256, 8),
                    "48h": ("medium", 256, 32), "96h": ("medium", 256, 32)}


def parse_hours(text: str, flag: str = "--compute_class") -> float:
    """Hours from '6', '6h' or '6.0h'; a UserError naming `flag` otherwise."""
    try:
        h = float(text.strip().lower().removesuffix("h"))
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected hours like '6h' or '12h'") from None
    if not 0 < h < math.inf:
        raise UserError(f"{flag} {text!r} must be a positive number of hours, like 6h")
    return h


def languini_recipe(preset: str | None, compute_class: str) -> dict[str, Any]:
    """A Languini size's overrides under a compute class: its throughput; the class's batch if its recipe
    is this size."""
    if preset not in LANGUINI_SIZES or not compute_class:
        return {}
    tps = LANGUINI_SIZES[preset][-1]
    out: dict[str, Any] = {"tokens_per_second": tps} if tps else {}
    size, batch, accum = LANGUINI_RECIPES.get(f"{parse_hours(compute_class):g}h", ("", 0, 0))
    if size == preset:
        out.update(train_batch_size=batch, gradient_accumulation_steps=accum)
    return out


# The well-known character-level recipe (a GPU run of a few minutes).
_CHAR = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=True,
             dataset="shakespeare_char", batch_size=64, gradient_accumulation_steps=1,
             learning_rate=1e-3, min_lr=1e-4, max_iters=5000, lr_decay_iters=5000, warmup_iters=100,
             beta2=0.99, eval_interval=250, eval_iters=200, log_interval=10,
             always_save_checkpoint=False)
_GPT2_SIZES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
               "gpt2-xl": (48, 25, 1600)}
PRESETS: dict[str, dict[str, Any]] = {
    **{k: dict(_GPT2, n_layer=L, n_head=H, n_embd=C) for k, (L, H, C) in _GPT2_SIZES.items()},
    "shakespeare_char": _CHAR,
    # The CPU recipe: trains to val loss < 2.0 on tiny Shakespeare in a few CPU minutes.
    "baby": dict(_CHAR, n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, batch_size=12,
                 max_iters=2000, lr_decay_iters=2000, eval_iters=20, log_interval=50,
                 always_save_checkpoint=True, device="cpu", dtype="float32"),
    # One-layer GPT-2 on the synthetic 0/1 data (entropy bound H(1/3) = 0.6365 nats/word).
    "zero_one": dict(
        n_layer=1, n_head=12, n_embd=768, block_size=512, dropout=0.0, bias=True, dataset="zero_one",
        batch_size=64, gradient_accumulation_steps=1, learning_rate=2e-3, min_lr=2e-4, max_iters=200,
        lr_decay_iters=200, warmup_iters=10, eval_interval=10, eval_iters=4, log_interval=10,
        checkpoint_interval=200),
    **{k: dict(_LANGUINI, **dict(zip(("n_layer", "n_embd", "mlp_dim", "n_head", "head_dim"), v)))
       for k, v in LANGUINI_SIZES.items()},
    # Evaluation-only recipes for OpenAI's released weights (the well-known baselines).
    **{"eval_" + k.replace("-", "_"): dict(_GPT2, n_layer=L, n_head=H, n_embd=C, init_from=k,
                                           eval_only=True, batch_size=8, eval_iters=500,
                                           gradient_accumulation_steps=1)
       for k, (L, H, C) in _GPT2_SIZES.items()},
    "finetune_shakespeare": dict(
        _GPT2, n_layer=48, n_head=25, n_embd=1600, init_from="gpt2-xl", dataset="shakespeare",
        batch_size=1, gradient_accumulation_steps=32, max_iters=20, learning_rate=3e-5, min_lr=3e-6,
        decay_lr=False, eval_interval=5, eval_iters=40, always_save_checkpoint=False),
}


# Flags of the two reference trainers that have no meaning in gptlab: accepted, with this note.
NO_MEANING: dict[str, str] = {
    "log_activations_every": "activations are not logged; --log_grads_every N logs "
                             "weight/grad/update/logit statistics",
    "debug": "there is no debug mode; --log_interval 1 --deterministic true gives step-by-step, "
             "reproducible runs",
    "use_flash": "attention always uses torch's scaled_dot_product_attention, which picks flash kernels "
                 "itself",
    "backend": "the process-group backend is picked per device (nccl on CUDA, gloo on CPU)",
}

# nanoGPT's train.py defaults (its GPT-2 124M recipe): the base a nanoGPT config file (config/*.py)
# overrides, so `gptlab train config/train_gpt2.py` trains what `python train.py config/train_gpt2.py`
# does. bias=False and the exact GELU are nanoGPT's from-scratch model (gptlab's presets follow GPT-2).
NANOGPT_BASE: dict[str, Any] = dict(_GPT2, n_layer=12, n_head=12, n_embd=768, bias=False, gelu="exact",
                                    out_dir="out", eval_interval=2000, log_interval=1,
                                    wandb_project="owt", wandb_run="gpt2")


def help_text(cfg: Config | None = None) -> str:
    """Every key with its value (cfg's, * where not the default), aliases and meaning, by section."""
    title = f"values of {cfg.preset} (* = differs from the default)" if cfg else "defaults"
    lines = [f"config keys, {title} (--key=value or --key value; aliases in brackets):"]
    for section, cls in SECTIONS.items():
        lines.append(f"\n[{section}]")
        for fld in leaves(cls):
            al, ch = fld.metadata["aliases"], fld.metadata["choices"]
            alias, choice = f" [{', '.join(al)}]" if al else "", f" {{{'|'.join(ch)}}}" if ch else ""
            value = getattr(getattr(cfg, section), fld.name) if cfg else fld.default
            mark = "*" if value != fld.default else ""
            lines.append(f"  --{fld.name}{alias} = {value!r}{mark}{choice}\n      "
                         f"{fld.metadata['help']}")
    if cfg and cfg.model.options:
        lines.append(f"\n[{cfg.model.model} options] (the idea's own keys, --key value)")
        lines.extend(f"  --{k} = {v!r}" for k, v in cfg.model.options.items())
    lines.append("\naccepted with a note (no meaning here): " + ", ".join("--" + k for k in NO_MEANING))
    lines.append("presets: " + ", ".join(PRESETS))
    return "\n".join(lines)
