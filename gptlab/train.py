"""The training loop: accumulate -> backward -> clip -> step -> schedule -> log -> eval -> checkpoint.

Runs in one process (CPU, CUDA, MPS) or in several under torchrun (DDP / FSDP2). Every
piece it calls is built from the config tree; this file only wires them together.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gptlab import checkpoint as ck
from gptlab import distributed as dist_
from gptlab.config import Config, resolve_batch
from gptlab.data import tokens as tk
from gptlab.data.prefetch import Prefetcher
from gptlab.data.samplers import RandomWindowSampler, StreamBatcher
from gptlab.errors import UserError
from gptlab.evaluate import evaluate, format_metrics
from gptlab.loss import lm_loss, logits_and_loss
from gptlab.metrics import device_peak_flops, fmt_mfu, mfu, peak_memory_gb
from gptlab.model import GPT, GPTShape, flops_per_token
from gptlab.optim import build_optimizer, lr_at
from gptlab.runtime import autocast_ctx, compile_model, resolve_ce_chunk, resolve_data_dir, resolve_dtype, token_byte_lengths
from gptlab.tracker import RunLogger


class RunStopped(Exception):
    """The run stopped on purpose (divergence); exit code 1, message printed, no traceback."""

    exit_code = 1


@dataclass
class StopFlag:
    """SIGTERM / SIGINT: the first asks for a clean stop after the current step, the second exits at once."""

    requested: bool = False
    signum: int = 0
    previous: dict = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass

    def _handle(self, signum, frame):
        if self.requested:
            os._exit(128 + signum)
        self.requested, self.signum = True, signum
        print(f"\nsignal {signal.Signals(signum).name}: finishing this step and writing a checkpoint "
              "(send it again to exit at once)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        for sig, h in self.previous.items():
            signal.signal(sig, h)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """Every generator the loop may draw from, as tensors / ints / lists (weights_only-safe:
    numpy arrays and Python's state tuple are turned into plain lists)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [int(py_version), list(py_internal), py_gauss],
             "numpy": [np_kind, [int(k) for k in np_keys], int(np_pos), int(np_has_gauss), float(np_gauss)]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    py = state.get("python")
    if isinstance(py, list) and len(py) == 3 and isinstance(py[1], list):  # older checkpoints kept only the keys
        random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state.get("numpy")
    if isinstance(npy, list) and len(npy) == 5:
        np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_command(argv: list[str]) -> str:
    """The command that continues this run: the same arguments with --resume instead of
    --resume/--overwrite (and the true/false value that may follow either)."""
    import shlex

    out, skip_value = [], False
    for a in argv:
        if skip_value:
            skip_value = False
            if a.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                continue
        key = a.split("=", 1)[0]
        if key in ("--resume", "--overwrite"):
            skip_value = "=" not in a
            continue
        out.append(a)
    return shlex.join(["gptlab", "train", *out, "--resume"])


def load_data(cfg: Config):
    """(data_dir, meta, train tokens, val tokens or None, val split name)."""
    data_dir = resolve_data_dir(cfg.data.dataset, cfg.data.data_root)
    meta = tk.read_meta(data_dir)
    splits = tk.split_names(data_dir)
    if cfg.data.train_split not in splits:
        raise UserError(f"dataset {data_dir} has no split {cfg.data.train_split!r} (has: {', '.join(splits)})")
    train_tokens = tk.load_split(data_dir, cfg.data.train_split, meta)
    val_name = cfg.data.val_split if cfg.data.val_split in splits else ("test" if "test" in splits else None)
    val_tokens = tk.load_split(data_dir, val_name, meta) if val_name else None
    return data_dir, meta, train_tokens, val_tokens, val_name


def check_vocab(cfg: Config, meta: dict) -> int:
    vocab = int(meta["vocab_size"])
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = vocab
    elif cfg.model.vocab_size < vocab:
        raise UserError(f"--vocab_size {cfg.model.vocab_size} is smaller than the dataset's {vocab}: "
                        "drop --vocab_size (it is read from meta.json) or use matching data")
    return cfg.model.vocab_size


def build_sampler(cfg: Config, data_dir: Path, meta: dict, train_tokens, micro: int, d: dist_.Dist):
    seq = cfg.model.block_size
    if len(train_tokens) < seq + 1:
        raise UserError(f"the train split has {len(train_tokens)} tokens, fewer than seq_len + 1 = {seq + 1}: "
                        "use a shorter --block_size or more data")
    if cfg.data.sampler == "stream":
        offsets = tk.doc_offsets(data_dir, cfg.data.train_split, meta)
        accum = cfg.train.gradient_accumulation_steps
        return StreamBatcher(train_tokens, offsets, micro * accum * d.world_size, seq, meta.get("eot_id"),
                             rank=d.rank, world_size=d.world_size, micro_batches=accum)
    return RandomWindowSampler(train_tokens, micro, seq, seed=cfg.train.seed, rank=d.rank, world_size=d.world_size)


def step_batches(sampler, accum: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The micro-batches of one optimiser step."""
    if isinstance(sampler, StreamBatcher):
        return sampler.next()
    return [sampler.next() for _ in range(accum)]


def to_device(batches, device: torch.device):
    if device.type == "cuda":  # pinned host memory lets the copy overlap with compute
        return [(x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True))
                for x, y in batches]
    return [(x.to(device), y.to(device)) for x, y in batches]


def init_model(cfg: Config, vocab: int, log, resume: bool = False) -> GPT:
    """scratch, OpenAI GPT-2 weights, or another run's weights (fine-tuning). On resume the
    checkpoint supplies the weights, so the model is built from the config alone."""
    src = cfg.train.init_from
    if resume or src in ("scratch", "resume", ""):
        return GPT(GPTShape.from_config(cfg.model, vocab)).init_weights()
    path = Path(src)
    is_gptlab_run = (path / "checkpoints").is_dir() or path.is_file()
    if not is_gptlab_run:  # gpt2* names, hub ids, or a Hugging Face folder
        from gptlab import hf

        model, notes = hf.init_from_pretrained(cfg, src)
        for n in notes:
            log(f"config {n}")
        if vocab > model.shape.vocab_size:
            raise UserError(f"dataset vocab {vocab} is larger than {src}'s {model.shape.vocab_size}: "
                            "prepare the data with its tokenizer")
        log(f"initialised from {src} ({model.num_params():,} parameters)")
        return model
    # Another gptlab run (folder) or checkpoint file.
    path = Path(src)
    if not path.exists():
        raise UserError(f"--init_from {src!r}: not scratch/resume/gpt2*, and no such run folder or file")
    from gptlab.config import load_run_config

    ckpt_path = ck.find_checkpoint(path, "best")
    run_cfg_path = (path if path.is_dir() else ckpt_path.resolve().parent.parent) / "config.json"
    src_model = load_run_config(run_cfg_path).model
    block = cfg.model.block_size
    dropout = cfg.model.dropout
    cfg.model = src_model
    cfg.model.dropout = dropout
    model = GPT(GPTShape.from_config(cfg.model))
    state = ck.load_checkpoint(ckpt_path)
    model.load_state_dict(state["model"])
    if block < model.shape.block_size:
        model.crop_block_size(block)
    cfg.model.block_size = model.shape.block_size
    log(f"initialised from {ckpt_path} (step {state.get('step')})")
    return model


def resolve_run_dir(cfg: Config, d: dist_.Dist) -> Path:
    from gptlab.runs import prepare_run_dir, run_dir

    path = run_dir(cfg, d.world_size)
    resume = cfg.train.resume or cfg.train.init_from == "resume"
    if d.is_main:
        if resume:
            # Refuses --resume together with --overwrite (it used to resume and ignore --overwrite).
            prepare_run_dir(path, resume=True, overwrite=cfg.train.overwrite)
            if not ck.list_checkpoints(path):
                raise UserError(f"--resume: no checkpoint in {path}: start the run without --resume")
        else:
            prepare_run_dir(path, resume=False, overwrite=cfg.train.overwrite)
    dist_.barrier(d)
    return path


def copy_tokenizer_files(meta: dict, data_dir: Path, run_dir: Path) -> None:
    """The run folder alone must be enough to sample: keep the data's meta and tokenizer model."""
    ck.atomic_write_text(run_dir / "data_meta.json", json.dumps(meta, indent=2) + "\n")
    model_file = meta.get("tokenizer", {}).get("model_file")
    if model_file and (data_dir / model_file).is_file():
        shutil.copyfile(data_dir / model_file, run_dir / Path(model_file).name)


def grad_stats(model: torch.nn.Module, before: dict[str, torch.Tensor] | None, scale: float = 1.0) -> dict:
    """Mean / max / min / L2 of weights, gradients and the last update, per parameter and global.

    Call it after the optimiser step and before zero_grad (the gradients must still be
    there) and after any GradScaler.unscale_, so `scale` is 1: the logged gradients are
    the true ones, not fp16-scaled ones. Global entries pool every element of every
    parameter (mean weighted by size), so they compare across models of different shapes.
    """
    out: dict[str, float] = {}
    # per kind: [sum, count, max, min, sum of squares]
    acc = {k: [0.0, 0, -math.inf, math.inf, 0.0] for k in ("w", "g", "u")}

    def add(kind: str, name: str, t: torch.Tensor) -> None:
        mean, mx, mn, l2 = t.mean().item(), t.max().item(), t.min().item(), t.norm().item()
        out[f"{kind}/{name}/mean"], out[f"{kind}/{name}/max"], out[f"{kind}/{name}/min"] = mean, mx, mn
        out[f"{kind}/{name}/l2"] = l2
        a = acc[kind]
        a[0] += mean * t.numel()
        a[1] += t.numel()
        a[2], a[3] = max(a[2], mx), min(a[3], mn)
        a[4] += l2 * l2

    for name, p in model.named_parameters():
        w = p.detach().float()
        add("w", name, w)
        if p.grad is not None:
            add("g", name, p.grad.detach().float() / scale)
        if before is not None and name in before:
            add("u", name, w - before[name])
    for kind, (total, count, mx, mn, sq) in acc.items():
        if count:
            out.update({f"{kind}/global/mean": total / count, f"{kind}/global/max": mx,
                        f"{kind}/global/min": mn, f"{kind}/global/l2": math.sqrt(sq)})
    return out


def train(cfg: Config, argv: list[str] | None = None) -> dict:
    """Train as the config says; returns a summary (final losses, steps, run folder)."""
    d = dist_.init(cfg.system.device)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _train(cfg, d, argv or [])
    finally:
        for sig, h in handlers.items():
            try:
                signal.signal(sig, h)
            except (ValueError, TypeError):  # not the main thread, or a handler set outside Python
                pass
        dist_.shutdown()


def _train(cfg: Config, d: dist_.Dist, argv: list[str]) -> dict:
    from gptlab.budget import apply_compute_class

    log = print if d.is_main else (lambda *a, **k: None)
    if cfg.system.num_threads:
        torch.set_num_threads(cfg.system.num_threads)
    if cfg.system.deterministic:
        torch.use_deterministic_algorithms(True)
    device = d.device
    dtype = resolve_dtype(cfg.system.dtype, device)
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bfloat16: use --dtype float16")
    ctx = autocast_ctx(device, dtype)
    cfg.system.dtype = str(dtype).replace("torch.", "")  # the run records what actually ran
    apply_compute_class(cfg, d.world_size)

    data_dir, meta, train_tokens, val_tokens, val_name = load_data(cfg)
    vocab = check_vocab(cfg, meta)
    micro, global_batch = resolve_batch(cfg, d.world_size)
    accum = cfg.train.gradient_accumulation_steps
    resume = cfg.train.resume or cfg.train.init_from == "resume"

    if resume and cfg.train.init_from not in ("scratch", "resume", ""):
        # The architecture came from the --init_from source when the run started; the run's
        # own config.json has it, and the checkpoint's weights replace the source's anyway.
        from gptlab.config import load_run_config
        from gptlab.runs import run_dir as _run_dir

        saved = _run_dir(cfg, d.world_size) / "config.json"
        if saved.is_file():
            dropout = cfg.model.dropout
            cfg.model = load_run_config(saved).model
            cfg.model.dropout = dropout

    # Model (built before the run folder so a bad --init_from writes nothing).
    set_seed(cfg.train.seed)
    model = init_model(cfg, vocab, log, resume)
    tk.check_token_range(train_tokens, model.shape.vocab_size, f"{data_dir}/{cfg.data.train_split}.bin")
    if val_tokens is not None:
        tk.check_token_range(val_tokens, model.shape.vocab_size, f"{data_dir}/{val_name}.bin")
    sampler = build_sampler(cfg, data_dir, meta, train_tokens, micro, d)
    run_dir = resolve_run_dir(cfg, d)

    # Resume: model, optimiser, scaler, schedule position, RNG and data position.
    start_step, tokens_seen, best_val, skipped_total = 0, 0, float("inf"), 0
    state = None
    resume_loop = None
    if resume:
        found = ck.load_latest_valid(run_dir, warn=log)  # every rank reads it (small next to training)
        if found is None:
            raise UserError(f"--resume: no valid checkpoint in {run_dir}/checkpoints (all damaged?)")
        state, path = found
        ck.check_resumable(state, path)
        saved_model_cfg = state["config"].get("model", {})
        mine = cfg.to_dict()["model"]
        diff = [k for k in ("n_layer", "n_head", "n_embd", "head_dim", "mlp_dim", "block_size", "vocab_size", "qkv",
                            "tie_embeddings", "bias") if k in saved_model_cfg and saved_model_cfg[k] != mine[k]]
        if diff:
            k = diff[0]
            raise UserError(f"checkpoint {path} was written with {k}={saved_model_cfg[k]!r} but this config has "
                            f"{mine[k]!r}: resume with the run's own config ({run_dir}/config.json)")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UserError(f"checkpoint {path} does not fit this config ({str(e).splitlines()[0][:150]}): "
                            f"resume with the run's own config ({run_dir}/config.json)") from None
        start_step, tokens_seen = int(state["step"]), int(state.get("tokens", 0))
        resume_loop = state.get("loop")
        best_val = float(state.get("best_val_loss", float("inf")))
        skipped_total = int(state.get("nonfinite_skipped", 0))
        log(f"resuming from {path} at step {start_step}")

    model.to(device)
    # A chunked linear+cross-entropy never holds full fp32 logits (same loss value); by
    # default it is on under torch.compile (resolve_ce_chunk). It returns no logits, so
    # logit statistics (log_grads_every) keep the plain loss.
    ce_chunk = 0 if cfg.log.log_grads_every else resolve_ce_chunk(cfg.system.ce_chunk, cfg.system.compile)
    shape = model.shape
    n_params = model.num_params()
    fpt = flops_per_token(shape, shape.block_size)
    peak, dev_name = device_peak_flops(device)
    use_scaler = dtype == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    fsdp = cfg.system.parallel == "fsdp" and d.enabled
    raw_model = model
    model = dist_.wrap_model(model, d, cfg.system.parallel, dtype if dtype != torch.float32 else None,
                             cfg.system.ddp_bucket_mb, cfg.system.ddp_bucket_view)
    # After wrapping: FSDP2 swaps the parameters for sharded ones, and the optimiser must hold those.
    optimizer = build_optimizer(raw_model, cfg, device.type)
    if state is not None:
        if state.get("sharded"):
            # Written under FSDP2 by any number of ranks: DCP reshards model and optimiser to this run.
            dist_.load_sharded(run_dir, state["sharded"], raw_model, optimizer)
        elif fsdp:  # a 1-rank or DDP checkpoint continued under FSDP2
            dist_.load_plain_optimizer(raw_model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        if use_scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        samplers = state.get("sampler")
        if isinstance(samplers, list) and len(samplers) == d.world_size:
            sampler.load_state_dict(samplers[d.rank])
        elif isinstance(samplers, list) and samplers and isinstance(sampler, StreamBatcher):
            sampler.load_state_dict(samplers[0])  # stream position is global: any rank's will do
        else:
            log("warning: world size changed; random windows restart from a fresh per-rank stream")
        if state.get("rng") and state.get("world_size", 1) == d.world_size:
            set_rng_state(state["rng"][d.rank] if isinstance(state["rng"], list) else state["rng"], device)
        state = None  # the model/optimiser copies are restored; do not hold them for the whole run

    # Written only now, after a resume restored everything: a resume that fails on an
    # incompatible checkpoint must leave the run folder (and its config.json) as it was.
    if d.is_main:
        ck.atomic_write_text(run_dir / "config.json", cfg.to_json() + "\n")
        copy_tokenizer_files(meta, data_dir, run_dir)

    if cfg.system.compile != "none":
        t_c = time.time()
        model = compile_model(model, cfg.system.compile)
        log(f"torch.compile mode={cfg.system.compile} (compiles on the first step; set up in {time.time() - t_c:.1f}s)")

    byte_lengths = token_byte_lengths(meta, data_dir)
    eval_bs = cfg.train.eval_batch_size or micro
    last_n = cfg.train.last_n or shape.block_size
    max_steps = cfg.train.max_iters
    tokens_per_step = global_batch * shape.block_size
    logger = RunLogger(run_dir, cfg, enabled=d.is_main, total_steps=max_steps, start_step=start_step)
    log(f"run: {run_dir}")
    log(f"model: {n_params:,} parameters, {fpt / 1e9:.3f} GFLOPs/token | device {dev_name} | dtype "
        f"{str(dtype).replace('torch.', '')} | world {d.world_size} | batch {global_batch} = {d.world_size} ranks x "
        f"{micro} x {accum} accum | seq {shape.block_size} | {tokens_per_step:,} tokens/step")

    train_time = 0.0  # wall seconds in training steps only (no eval, no checkpoints)

    def run_eval(step: int) -> dict:
        out = {}
        reduce = (lambda t: dist_.all_reduce_sum(t, d)) if d.enabled else None
        for split, toks in (("train", train_tokens), (val_name, val_tokens)):
            if toks is None or cfg.train.eval_iters == 0:
                continue
            m = evaluate(model, toks, shape.block_size, eval_bs, device, last_n=last_n,
                         max_batches=cfg.train.eval_iters, byte_lengths=byte_lengths, autocast=ctx,
                         rank=d.rank, world_size=d.world_size, reduce=reduce, eot_id=meta.get("eot_id"))
            m["split"] = split
            m["train_time_s"] = train_time
            logger.log("eval", step, tokens_seen, m)
            out[split] = m
        val = out.get(val_name) or out.get("train")
        if val:
            # train loss, then the held-out split's full metrics (its loss is the first of them)
            line = " | ".join(f"{k} loss {v['loss']:.4f}" for k, v in out.items() if k != val_name)
            extra = f"{' | ' if line else ''}{val_name} {format_metrics(val)}" if val_name in out else ""
            gap = ""
            if meta.get("name") == "zero_one" or cfg.data.dataset.endswith("zero_one"):
                # The bound is per word token; <eot> after every 1,000 words is not part of it.
                word_loss = val.get("loss_excl_eot", val["loss"])
                gap = (f" | word-token loss {word_loss:.4f}, gap to entropy bound {ENTROPY_ZERO_ONE:.4f}: "
                       f"{(word_loss / ENTROPY_ZERO_ONE - 1) * 100:+.2f}% after {train_time:.1f}s of training")
            logger.print(f"eval step {step}: {line}{extra}{gap}")
        return out

    if cfg.train.eval_only:
        res = run_eval(start_step)
        logger.close()
        return {"run_dir": str(run_dir), "eval": res}

    def save(step: int, is_best: bool) -> None:
        sampler_states = [next_pos]
        rngs = [rng_state(device)]
        if d.enabled:
            sampler_states = dist_.gather_objects(next_pos, d)
            rngs = dist_.gather_objects(rng_state(device), d)
        sharded = None
        if fsdp:
            # Collectives: every rank writes its DCP shards and joins the gather of the full
            # weights; rank 0 then writes the plain single-file checkpoint beside them.
            sharded = dist_.save_sharded(run_dir, step, raw_model, optimizer, d)
            model_sd = dist_.full_state_dict(raw_model, d)
        if not d.is_main:
            return
        if not fsdp:
            model_sd = raw_model.state_dict()
        # Under FSDP the optimiser state lives only in the DCP folder ("sharded"); the file
        # keeps full weights so sample / eval / export read it like any other checkpoint.
        st = {"model": model_sd, "optimizer": optimizer.state_dict() if not fsdp else {}, "sharded": sharded,
              "scaler": scaler.state_dict() if use_scaler else None, "tokens": tokens_seen,
              "best_val_loss": best_val, "rng": rngs, "sampler": sampler_states, "config": cfg.to_dict(),
              "nonfinite_skipped": skipped_total, "world_size": d.world_size, "parallel": cfg.system.parallel}
        # Between logging points the loop carries running sums; a resume must continue them.
        st["loop"] = {"loss_sum": loss_sum.detach().cpu().clone(), "loss_count": float(loss_count),
                      "consec_bad": consec_bad.detach().cpu().clone()}
        ck.save_checkpoint(run_dir, st, step, keep_last=cfg.train.keep_last, is_best=is_best)
        if fsdp:
            dist_.prune_sharded(run_dir, {dist_.sharded_name(int(ck.CKPT_RE.match(p.name).group(1))) for p in ck.list_checkpoints(run_dir)})

    stop = StopFlag()
    stop.install()
    params = [p for p in model.parameters() if p.requires_grad]
    fused_skip = bool(optimizer.defaults.get("fused")) and not use_scaler
    consec_bad = torch.zeros((), device=device)
    total_bad = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    loss_count = torch.zeros((), device=device)  # steps that counted (skipped non-finite steps do not)
    if isinstance(resume_loop, dict):
        loss_sum.copy_(resume_loop.get("loss_sum", loss_sum))
        loss_count.fill_(float(resume_loop.get("loss_count", 0)))
        consec_bad.copy_(resume_loop.get("consec_bad", consec_bad))
    t_last = t_mark = time.time()  # t_mark: start of the current stretch of pure training
    steps_since = 0
    data_wait = 0.0
    last_eval = {}
    summary = {"run_dir": str(run_dir)}
    check_every = max(1, min(cfg.train.max_nonfinite, cfg.log.log_interval))
    log_grads = cfg.log.log_grads_every
    def produce():
        state_before = sampler.state_dict()
        return state_before, to_device(step_batches(sampler, accum), device)

    # On a GPU a worker thread prepares the next steps' batches; on the CPU the cores are
    # busy with the step itself, so batches are drawn in line.
    prefetch = Prefetcher(produce, depth=2, enabled=device.type == "cuda")
    t_w = time.time()
    next_pos, batches = prefetch.get()
    data_wait += time.time() - t_w
    step = start_step
    model.train()
    while step < max_steps:
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        before = ({n: p.detach().float().clone() for n, p in raw_model.named_parameters()}
                  if log_grads and (step + 1) % log_grads == 0 and d.is_main and not fsdp else None)
        step_loss = torch.zeros((), device=device)
        for i, (x, y) in enumerate(batches):
            last = i == len(batches) - 1
            with dist_.grad_sync(model, last), ctx:
                logits, loss = (None, lm_loss(model, x, y, ce_chunk)) if ce_chunk else logits_and_loss(model, x, y)
                loss = loss / accum
            if last:  # fetch the next step's data while the device works on this one
                t_w = time.time()
                next_pos, next_batches = prefetch.get()
                data_wait += time.time() - t_w
            scaler.scale(loss).backward()
            step_loss += loss.detach()
        if use_scaler:
            scaler.unscale_(optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"),
                                               foreach=True)
        gnorm = dist_.local_value(gnorm)  # FSDP2 returns a DTensor; the rest mixes it with plain tensors
        # Non-finite loss or gradients: skip the update. The fused optimiser skips on device
        # (found_inf), so no host sync is needed; fp16's GradScaler does the same for overflow.
        bad = ~torch.isfinite(step_loss) if use_scaler else ~(torch.isfinite(step_loss) & torch.isfinite(gnorm))
        if fused_skip:
            optimizer.found_inf = bad.float()
            optimizer.grad_scale = None
            optimizer.step()
        elif use_scaler:
            scaler.step(optimizer)
            scaler.update()
        elif not bool(bad):
            optimizer.step()
        # Statistics need the gradients, so they are taken before zero_grad; by now the
        # GradScaler has unscaled them in place (scale 1 below).
        stats = grad_stats(raw_model, before) if before is not None else None
        optimizer.zero_grad(set_to_none=True)
        consec_bad = (consec_bad + bad.float()) * bad.float()
        total_bad += bad.float()
        loss_sum += torch.where(bad, torch.zeros_like(step_loss), step_loss)
        loss_count += (~bad).float()
        step += 1
        steps_since += 1
        tokens_seen += tokens_per_step
        batches = next_batches
        logger.advance(1)

        if step % check_every == 0 or step == max_steps:
            if d.enabled:
                consec_host = float(dist_.all_reduce_max(consec_bad, d))
            else:
                consec_host = float(consec_bad)
            if consec_host >= cfg.train.max_nonfinite:
                logger.close()
                raise RunStopped(f"stopped at step {step}: {int(consec_host)} steps in a row had a non-finite loss or "
                                 f"gradient (updates skipped); the last good checkpoint in {run_dir}/checkpoints is "
                                 "intact: lower --learning_rate or use --dtype bfloat16/float32 and --resume")

        if stats is not None:
            if logits is not None:  # the chunked-loss path returns no logits
                lf = logits.detach().float()
                stats.update({"logits/mean": lf.mean().item(), "logits/std": lf.std().item(),
                              "logits/max": lf.max().item(), "logits/min": lf.min().item()})
            logger.log("grads", step, tokens_seen, stats)

        if step % cfg.log.log_interval == 0 or step == max_steps or step % cfg.log.log_metrics_every == 0:
            # mean over the steps that updated the weights; nan when every one was skipped
            mean_loss = dist_.all_reduce_mean(loss_sum / loss_count, d).item()
            dt = (time.time() - t_last) / max(steps_since, 1)
            tps = tokens_per_step / dt
            m = mfu(fpt, tps / d.world_size, peak)
            mem = peak_memory_gb(device)
            skipped_total_now = skipped_total + int(total_bad.item())
            values = {"loss": mean_loss, "lr": lr, "ms_per_step": dt * 1000, "tokens_per_sec": tps, "mfu": m,
                      "grad_norm": float(gnorm), "data_wait_share": data_wait / max(dt * steps_since, 1e-9),
                      "nonfinite_skipped": skipped_total_now, "train_time_s": train_time + time.time() - t_mark}
            if mem is not None:
                values["peak_mem_gb"] = mem
            if step % cfg.log.log_metrics_every == 0 or step == max_steps:
                logger.log("train", step, tokens_seen, values)
            if step % cfg.log.log_interval == 0 or step == max_steps:
                memname = "peak mem" if device.type == "cuda" else "peak RSS"
                memtxt = f" | {memname} {mem:.2f} GiB" if mem is not None else ""
                logger.print(f"step {step}/{max_steps} | loss {mean_loss:.4f} | lr {lr:.2e} | {dt * 1000:.1f} ms/step | "
                             f"{tps:,.0f} tok/s | MFU {fmt_mfu(m)}{memtxt}")
                summary["train_loss"] = mean_loss
                loss_sum.zero_()
                loss_count.zero_()
                t_last, steps_since, data_wait = time.time(), 0, 0.0

        do_eval = (cfg.train.eval_interval and step % cfg.train.eval_interval == 0) or step == max_steps
        do_ckpt = cfg.train.checkpoint_interval and step % cfg.train.checkpoint_interval == 0
        if d.enabled and not stop.requested and step % cfg.log.log_interval == 0:
            stop.requested = bool(dist_.all_reduce_max(torch.tensor(float(stop.requested), device=device), d))
        if do_eval or do_ckpt or stop.requested:
            # Training time excludes evaluation and checkpoints. The device runs behind the
            # host, so wait for it before reading the clock.
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time += time.time() - t_mark
        if do_eval:
            last_eval = run_eval(step)
            val = last_eval.get(val_name) or last_eval.get("train")
            improved = val is not None and val["loss"] < best_val
            if improved:
                best_val = val["loss"]
            skipped_total += int(total_bad.item())
            total_bad.zero_()
            if improved or cfg.train.always_save_checkpoint or step == max_steps or stop.requested:
                save(step, is_best=improved)
            t_last = t_mark = time.time()
            steps_since, data_wait = 0, 0.0
        elif do_ckpt or stop.requested:
            skipped_total += int(total_bad.item())
            total_bad.zero_()
            save(step, is_best=False)
            t_last = t_mark = time.time()
            steps_since, data_wait = 0, 0.0
        if stop.requested:  # the checkpoint of this step was written just above
            log(f"stopped by {signal.Signals(stop.signum).name} at step {step}; checkpoint written. "
                f"Resume with: {resume_command(argv)}")
            summary["stopped"] = True
            break
    stop.restore()
    prefetch.close()
    logger.close()
    summary.update(step=step, best_val_loss=best_val, eval=last_eval, tokens=tokens_seen, train_time_s=train_time,
                   nonfinite_skipped=skipped_total)
    return summary


ENTROPY_ZERO_ONE = -(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3)  # 0.6365 nats per word token
