"""Resolution, on the run floor: the final config of a run (never edited after), its batch split and
its run folder `<log_root>/<compute class or "free">/<preset>/<name>/`. The name encodes the
hyperparameters as Languini's configs.add_exp_name does (at the run's precision, not always fp16), e.g.
GPT_books16384_bsz128_micro4_sl512_coslr0.0006to6e-06_h768_ff3072_nH12_dH64_nl12_clip0.0_decay18k_workers1_defaultCompile_fp16_seed0
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import NamedTuple

import torch

from gptlab import ideas, optimizers, registry
from gptlab.budget import steps_for_budget
from gptlab.config import (
    BUILTIN_MODEL_NAMES,
    FIELD_INFO,
    OPTIONS,
    PRESETS,
    SECTION_OF,
    Config,
    SystemConfig,
    parse_hours,
)
from gptlab.config_check import dtype_for, validate
from gptlab.config_files import build_config
from gptlab.errors import UserError
from gptlab.files import NAME_MAX
from gptlab.loss import resolve_ce_chunk
from gptlab.model import padded_vocab
from gptlab.registry import build_model, parameter_count
from gptlab.runtime import resolve_data_dir

# How one optimiser step's batch is cut (sequences): micro per forward/backward on one rank x accum
# micro-batches per step on each rank x world ranks = global_batch.
BatchSplit = NamedTuple("BatchSplit", [("micro", int), ("accum", int), ("global_batch", int)])


def resolve_batch(cfg: Config, world_size: int) -> BatchSplit:
    """The split for world_size ranks. train_batch_size set (Languini): the global batch,
    gradient_accumulation_steps per rank. Unset (nanoGPT): batch_size is the micro batch,
    gradient_accumulation_steps the global count divided over the ranks (40 = 5 on each of 8 GPUs), so
    the global batch does not change with the rank count."""
    t = cfg.train
    accum = t.gradient_accumulation_steps
    if t.train_batch_size > 0:
        if t.train_batch_size % (world_size * accum):
            raise UserError(f"--train_batch_size {t.train_batch_size} is not divisible by world_size "
                            f"{world_size} x gradient_accumulation_steps {accum}: pick a multiple of "
                            f"{world_size * accum}")
        micro = t.train_batch_size // (world_size * accum)
        if t.batch_size and t.batch_size != micro:
            raise UserError(f"--batch_size {t.batch_size} disagrees with --train_batch_size "
                            f"{t.train_batch_size} / {world_size} ranks / {accum} accumulation = "
                            f"{micro}: set only one")
        return BatchSplit(micro, accum, t.train_batch_size)
    if accum == 1:
        return BatchSplit(t.batch_size, 1, t.batch_size * world_size)
    if accum % world_size:
        raise UserError(f"--gradient_accumulation_steps {accum} is the global count (nanoGPT's meaning) "
                        f"and does not divide over {world_size} ranks: use a multiple of {world_size}, "
                        "or set --train_batch_size")
    return BatchSplit(t.batch_size, accum // world_size, t.batch_size * accum)


_PRECISION = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "auto": "autoPrec"}
_COMPILE = {"none": "", "default": "defaultCompile", "reduce-overhead": "reduceOverheadCompile",
            "max-autotune": "maxAutotuneCompile",
            "max-autotune-no-cudagraphs": "maxAutotuneNoGraphsCompile"}


def _safe(text: str) -> str:
    # Anything outside this set could split a path or upset a shell; it becomes '-'.
    return re.sub(r"[^A-Za-z0-9._+=-]+", "-", text.strip()).strip("-.")


def run_name(cfg: Config, world_size: int = 1) -> str:
    """The encoded folder name of a run (without the class/preset parents)."""
    m, o, t = cfg.model, cfg.optim, cfg.train
    _, accum, global_batch = resolve_batch(cfg, world_size)  # accum: accumulation steps per rank
    constant = o.schedule == "constant" or not o.decay_lr
    lr = f"constlr{o.learning_rate}" if constant else f"coslr{o.learning_rate}to{o.min_lr}"
    # A dataset given as a path is named by its last component, without '_' (books_16384 -> books16384).
    data = _safe(Path(cfg.data.dataset.rstrip("/\\")).name or cfg.data.dataset).replace("_",
                                                                                        "") or "data"
    # 0 = derived (as GPTShape)
    ff, head_dim = m.mlp_dim or 4 * m.n_embd, m.head_dim or m.n_embd // m.n_head
    label = _safe(ideas.parse_spec(m.model, BUILTIN_MODEL_NAMES).label)  # GPT, or the idea's file.Class
    parts = [label, data, f"bsz{global_batch}" + (f"_micro{accum}" if accum > 1 else ""),
             f"sl{m.block_size}", lr, f"h{m.n_embd}", f"ff{ff}", f"nH{m.n_head}", f"dH{head_dim}",
             f"nl{m.n_layer}", f"clip{float(o.grad_clip)}", f"decay{o.lr_decay_iters // 1000}k",
             f"workers{world_size}",
             _COMPILE.get(cfg.system.compile, _safe(cfg.system.compile) + "Compile"),
             _PRECISION.get(cfg.system.dtype, _safe(cfg.system.dtype)), f"seed{t.seed}", variant(cfg),
             _safe(cfg.log.comment)]
    return "_".join(p for p in parts if p)


# Model and optimiser keys the name shows (or that the data decides), and the idea's own record.
_NAMED = {"n_layer", "n_head", "n_embd", "head_dim", "mlp_dim", "block_size", "vocab_size",
          "lr_decay_iters", "model", "model_sha256", "optimizer_sha256"}


def variant(cfg: Config) -> str:
    """'opt' + 6 hex digits of the sha256 of what sets this model and optimiser apart and the name does
    not show: an idea's options, and every model/optimiser key that differs from the preset's value (the
    baseline's too); empty when there is none, so a preset's own run keeps Languini's name."""
    base = build_config(cfg.preset, check=False) if cfg.preset in PRESETS else Config()
    differs = {k: cfg.get(k) for section in ("model", "optim") for k, fld in FIELD_INFO.items()
               if SECTION_OF[k] == section and k not in _NAMED and k not in RESUME_MAY_CHANGE
               and cfg.get(k) != base.get(k)}
    chosen = dict(differs, **{f"{OPTIONS}.{k}": v for k, v in cfg.model.options.items()})
    if not chosen:
        return ""
    return "opt" + hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:6]


def run_dir(cfg: Config, world_size: int = 1) -> Path:
    """Where this run's files go: log.out_dir if set, else log_root/<class>/<preset>/<name>, where
    Languini's --relative_log_path (a relative path that stays under log_root) replaces
    <class>/<preset>."""
    if cfg.log.out_dir:
        return Path(cfg.log.out_dir)
    name = _safe(cfg.log.name) if cfg.log.name else run_name(cfg, world_size)
    if not name:
        raise UserError(f"--name {cfg.log.name!r} has no usable characters: use letters, digits, '.', "
                        "'-' or '_'")
    if len(name.encode("utf-8")) > NAME_MAX:
        flag = "--name" if cfg.log.name else "--comment (part of the run's encoded name)"
        raise UserError(f"{flag} gives a folder name of {len(name.encode('utf-8'))} bytes, more than a "
                        f"file name may be ({NAME_MAX}): choose a shorter {flag.split()[0]}")
    rel, cc = Path(cfg.log.relative_log_path), cfg.train.compute_class
    if rel.is_absolute() or ".." in rel.parts:
        raise UserError(f"--relative_log_path {cfg.log.relative_log_path!r} must stay under --log_root: "
                        "give a relative path without '..', or use --out_dir for a folder elsewhere")
    if not cfg.log.relative_log_path:  # '6', '6h' and '6.0h' all give the folder 6h
        rel = Path(f"{parse_hours(cc):g}h" if cc else "free") / _safe(cfg.preset or "custom")
    return Path(cfg.log.log_root) / rel / name


# The final config of a run: resolved once, before anything reads it; never edited after.
# What a resumed run may change: cadences, outputs, the machine, and how the run's global batch is split
# over its processes. Any other key that differs from the run's config.json is refused.
RESUME_REFUSED = ("--{key} {value!r} differs from {old!r} in the run's config.json: a resumed run "
                  "keeps its training settings (only cadences, max_iters, device and output settings "
                  "may change): drop --{key}, or start a new run from its weights with "
                  "--init_from {run}")
RESUME_MAY_CHANGE = frozenset({f.name for f in fields(SystemConfig)} | {
    "max_iters", "eval_interval", "eval_iters", "eval_batch_size", "eval_at_start", "eval_only",
    "checkpoint_interval", "keep_last", "always_save_checkpoint", "log_interval", "log_metrics_every",
    "log_grads_every", "tensorboard", "wandb_log", "wandb_project", "logger_type", "progress",
    "max_nonfinite", "resume", "overwrite", "init_from", "out_dir", "log_root", "name", "comment",
    "data_root", "batch_size", "gradient_accumulation_steps"})


def resolve(cfg: Config, *, world_size: int, device, data_meta: dict | None,
            init_source: dict | None = None, resume_config: Config | None = None) -> Config:
    """The config a run trains with, a new Config: dtype/compile per device, vocab from the data,
    architecture from init_source (ModelConfig values), compute-class steps, batch split, absolute
    dataset path. With resume_config (the run's config.json) a differing key outside RESUME_MAY_CHANGE is
    a UserError."""
    out = _resolved(cfg, world_size, device, data_meta, init_source)
    if resume_config is None:
        return out
    m, old_m = out.model, resume_config.model
    if m.model == old_m.model and old_m.model_sha256 and m.model_sha256 != old_m.model_sha256:
        raise UserError(ideas.resume_changed_message(m.model.rsplit(":", 1)[0], old_m.model_sha256,
                                                     m.model_sha256))
    o, old_o = out.optim, resume_config.optim
    if (o.optimizer == old_o.optimizer and old_o.optimizer_sha256
            and o.optimizer_sha256 != old_o.optimizer_sha256):
        raise UserError(ideas.resume_changed_message(o.optimizer.rsplit(":", 1)[0],
                                                     old_o.optimizer_sha256, o.optimizer_sha256))
    if m.options != old_m.options:
        raise UserError(f"the idea's options {m.options} differ from {old_m.options} in the run's "
                        "config.json: a resumed run keeps its config; drop the changed --key value")
    for k in FIELD_INFO:
        v, old = out.get(k), resume_config.get(k)
        if v != old and k not in RESUME_MAY_CHANGE:
            raise UserError(RESUME_REFUSED.format(key=k, value=v, old=old, run=out.log.out_dir))
    out.preset = resume_config.preset
    return out


def _resolved(cfg: Config, world_size: int, device, data_meta: dict | None,
              init_source: dict | None) -> Config:
    out = copy.deepcopy(cfg)
    m, s, t = out.model, out.system, out.train
    dev = torch.device(device)
    if init_source:  # the architecture is the source's; dropout and a shorter context are ours
        keep = {"dropout": m.dropout,
                "block_size": min(m.block_size, int(init_source.get("block_size", m.block_size)))}
        for k, v in dict(init_source, **keep).items():
            if SECTION_OF.get(k) == "model":
                setattr(m, k, v)
        m.options = dict(init_source.get(OPTIONS) or {})
    registry.resolve_model(m)  # an idea's file runs here: its options typed, its sha256 recorded
    optimizers.resolve_idea(out.optim)  # an optimiser idea's file likewise
    # The model's vocab: the data's unless set (or fixed by pretrained weights); never smaller than the
    # data's.
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
    # The run folder, named once from this config; --resume/--overwrite are this command's, not the
    # run's.
    out.log.out_dir = str(run_dir(out, world_size).absolute())
    t.resume = t.overwrite = False
    validate(out)
    check_memory(out)
    return out


def check_memory(cfg: Config, weights_only: bool = False) -> None:
    """Refuse shapes that fit nowhere here: 16 bytes a parameter (fp32 weights, grads, Adam moments;
    FSDP-shared; 4 for eval_only/weights_only) plus >= 16 bytes per token, layer and width of a
    micro-batch, against host + GPU memory."""
    m, t = cfg.model, cfg.train
    try:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        avail = 0
    if avail <= 0:
        return  # the host's memory is unknown: no check
    width = m.n_embd
    try:
        with torch.device("meta"):  # shapes only: no memory
            params = parameter_count(build_model(replace(m, vocab_size=max(m.vocab_size, 1))))
    # an idea whose constructor cannot run on the meta device: its size is unknown here
    except UserError:
        return
    shards = max(1, int(os.environ.get("WORLD_SIZE", "1"))) if cfg.system.parallel == "fsdp" else 1
    micro = t.batch_size or max(1, t.train_batch_size // max(1, t.gradient_accumulation_steps))
    if t.eval_only or weights_only:  # weights alone: no gradients, optimiser state or stored activations
        need = 4 * params // shards
    else:
        need = 16 * params // shards + 16 * micro * m.block_size * m.n_layer * width
    if need > avail:  # no CUDA: device_count() is 0
        avail += sum(torch.cuda.get_device_properties(i).total_memory
                     for i in range(torch.cuda.device_count()))
    if need > avail:
        raise UserError(f"this model needs at least {need / 2**30:,.0f} GiB (n_layer {m.n_layer}, "
                        f"n_embd {width}, vocab_size {m.vocab_size}, block_size {m.block_size}, batch "
                        f"{micro}) but this machine has {avail / 2**30:,.0f} GiB: reduce --vocab_size, "
                        "--block_size, --batch_size or the model size")
