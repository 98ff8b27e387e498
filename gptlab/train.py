"""The training loop: setup, the loop, shutdown. The parts it calls live in train_parts.

    resolve.resolve ->  setup(): data, model (fresh, pretrained or resumed), DDP/FSDP2, optimiser
    loop, each step:    batches -> train_step (accumulate, backward, clip, skip non-finite, step)
                        -> TrainState.advance -> metrics.record -> stop.poll -> evaluator
                        -> checkpointer
    shutdown:           threads joined (prefetch, checkpoint writer), model freed, barrier, group
                        destroyed

Each component owns its cadence; the loop only calls them in order. Every rank runs the
same collectives at the same steps (metric reductions, the stop flag, evaluation, saves).
"""

from __future__ import annotations

import contextlib
import gc
import random
import shlex
import shutil
import signal
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from gptlab import checkpoint as ck
from gptlab import distributed as dist_
from gptlab import hf, ideas, optimizers, registry, runs, startup
from gptlab.config import BUILTIN_OPTIMIZERS, FIELD_INFO, Config, is_builtin
from gptlab.data import tokens as tk
from gptlab.data.samplers import StreamBatcher
from gptlab.data.tokenizers import tokenizer_files
from gptlab.errors import UserError
from gptlab.files import atomic_write_json, atomic_write_text, read_json
from gptlab.layout import CHECKPOINT_DIR, CONFIG_FILE, DATA_META_FILE
from gptlab.metrics import TrainClock, TrainMetrics
from gptlab.optim import build_optimizer, lr_at, set_lr
from gptlab.resolve import resolve
from gptlab.resolve import run_dir as resolved_run_dir
from gptlab.resume import given_keys, resume_config
from gptlab.runtime import autocast_ctx, compile_model, resolve_data_dir
from gptlab.tracker import RunLogger
from gptlab.train_parts import (
    Batches,
    Evaluator,
    StepOutput,
    TrainState,
    build_sampler,
    load_splits,
    pick_splits,
    train_step,
)

# the loop's parts are named here too, where callers have always imported them
__all__ = ["Batches", "Evaluator", "RunStopped", "Session", "StepOutput", "TrainState", "build_sampler",
           "load_splits", "pick_splits", "resume_command", "setup", "train", "train_step"]


class RunStopped(Exception):
    """The run stopped on purpose (divergence); exit code 1, message printed, no traceback."""

    exit_code = 1


# ------------------------------------------------------------------------------ setup

@dataclass
class Session:
    """Everything the loop works with, built by setup()."""

    cfg: Config
    d: dist_.Dist
    run_dir: Path
    model: torch.nn.Module  # wrapped (DDP/FSDP2) and compiled: call this one
    raw: torch.nn.Module  # the plain module (weights for checkpoints)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ctx: object
    data: Batches
    state: TrainState
    logger: RunLogger
    clock: TrainClock
    metrics: TrainMetrics
    stop: dist_.StopAgreement
    evaluator: Evaluator
    checkpointer: ck.Checkpointer


def source_arch(src: str, pad_multiple: int) -> dict | None:
    """ModelConfig values of an --init_from source (another run, or GPT-2 weights); None for scratch."""
    if src in ("scratch", "resume", ""):
        return None
    if _is_run_source(src):
        run = runs.load_run(src)
        return dict(run.config.to_dict()["model"], model=run.idea_spec())  # an idea: the run's own copy
    folder = hf.resolve_pretrained(src)
    return hf.overrides_from_hf_config(read_json(folder / CONFIG_FILE, "model config"), pad_multiple)


def _is_run_source(src: str) -> bool:
    """Is an --init_from source a run folder or a checkpoint file (not a Hugging Face name)?"""
    p = Path(src)
    return (p / CHECKPOINT_DIR).is_dir() or p.is_file()


def check_trust(cfg: Config, arch: dict | None, trust_code: bool, resume: bool) -> None:
    """Code that came with a run (--resume of an idea run, --init_from a run of an idea) runs only
    with --trust_code; refused before anything is executed."""
    src = cfg.train.init_from
    carried = (arch.get("model") if arch and not resume and _is_run_source(src)
               else (cfg.model.model if resume else None))
    if carried and not is_builtin(carried) and not trust_code:
        what = "--resume" if resume else f"--init_from {src}"
        raise UserError(f"{what} runs the model idea {carried.rsplit(':', 1)[0]}: gptlab runs code a "
                        "run carries only with --trust_code; read it, then add --trust_code")
    if resume and cfg.optim.optimizer not in BUILTIN_OPTIMIZERS and not trust_code:
        raise UserError(f"--resume runs the optimiser idea {cfg.optim.optimizer.rsplit(':', 1)[0]}: "
                        "gptlab runs code a run carries only with --trust_code; read it, then add "
                        "--trust_code")


def check_idea_unchanged(cfg: Config, saved: Config) -> None:
    """--resume: an idea file (a model's or an optimiser's) that changed since the run started (its
    config.json, `saved`) is refused before any of it runs."""
    for spec, old_spec, old_sha in (
            (cfg.model.model, saved.model.model, saved.model.model_sha256),
            (cfg.optim.optimizer, saved.optim.optimizer, saved.optim.optimizer_sha256)):
        now = ideas.file_sha256(spec)
        if now is None or not old_sha:
            continue
        path = str(Path(spec.rsplit(":", 1)[0]).resolve())
        if old_spec.rsplit(":", 1)[0] == path and now != old_sha:
            raise UserError(ideas.resume_changed_message(path, old_sha, now))


def resolve_run(cfg: Config, d: dist_.Dist, meta: dict, hold: contextlib.ExitStack,
                saved: Config | None = None,
                trust_code: bool = False) -> tuple[Config, Path, dict | None]:
    """(final config, run folder, the newest valid checkpoint on --resume, whose config.json is `saved`).
    Rank 0 takes the folder's lock into `hold`."""
    resume = saved is not None
    if not resume:
        arch = source_arch(cfg.train.init_from, cfg.model.pad_vocab_multiple)
    else:  # started from another model's weights: that architecture (saved) wins, as it did then
        started_from = saved.train.init_from not in ("scratch", "resume", "")
        arch = saved.to_dict()["model"] if started_from else None
    check_trust(cfg, arch, trust_code, resume)
    if resume:
        check_idea_unchanged(cfg, saved)
    final = resolve(cfg, world_size=d.world_size, device=d.device, data_meta=meta, init_source=arch,
                    resume_config=saved)
    run_dir = resolved_run_dir(final, d.world_size)
    if d.is_main:
        runs.prepare_run_dir(run_dir, resume=resume, overwrite=cfg.train.overwrite,
                             inputs={"--init_from": arch and cfg.train.init_from,
                                     "--dataset": final.data.dataset})
        hold.enter_context(runs.run_lock(run_dir))
    if not resume:
        return final, run_dir, None
    dist_.barrier(d)
    found = ck.load_latest_valid(run_dir, warn=print if d.is_main else (lambda *a: None))
    if found is None:
        raise UserError(f"--resume: no valid checkpoint in {run_dir / CHECKPOINT_DIR}: "
                        f"start afresh with --overwrite instead of --resume")
    ck.check_resumable(*found)
    return final, run_dir, {"state": found[0], "path": found[1]}


def resume_source(cfg: Config, given: set[str], d: dist_.Dist, log) -> tuple[Config, Config]:
    """--resume: (the run's config.json with the keys this command set over it, config.json as
    saved). The run is --out_dir, else the folder named from this config as for a fresh start."""
    run = Path(cfg.log.out_dir) if cfg.log.out_dir else None
    if run is None:
        meta = tk.read_meta(resolve_data_dir(cfg.data.dataset, cfg.data.data_root))
        arch = source_arch(cfg.train.init_from, cfg.model.pad_vocab_multiple)
        fresh = resolve(cfg, world_size=d.world_size, device=d.device, data_meta=meta, init_source=arch)
        run = resolved_run_dir(fresh, d.world_size)
    try:  # every rank checks; all stop with the lowest rank's refusal, so ranks agree before acting
        found, problem = resume_config(cfg, given, run, d.world_size, log, main=d.is_main), None
    except UserError as e:
        found, problem = None, str(e)
    refusal = next((p for p in dist_.gather_objects(problem, d) if p), None)
    if refusal:
        raise UserError(refusal)
    return found


def build_model(cfg: Config, resumed: dict | None, log, idea=None) -> torch.nn.Module:
    """Fresh (init_weights), or the --init_from source's weights; on resume the checkpoint's. `idea`:
    the model's class as loaded (and recorded) by setup."""
    src, seed = cfg.train.init_from, cfg.train.seed
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if resumed is not None or src in ("scratch", "resume", ""):
        model = registry.build_model(cfg.model, idea)
        if resumed is None:
            return registry.init_weights(model)
        _load_weights(model, resumed["state"]["model"], resumed["path"])
        log(f"resuming from {resumed['path']} at step {resumed['state']['step']}")
        return model
    arch = source_arch(src, cfg.model.pad_vocab_multiple)  # built at the source's context, then cropped
    model = registry.build_model(replace(cfg.model, block_size=int(arch["block_size"])), idea)
    if _is_run_source(src):
        run = runs.load_run(src)
        state, step = run.model_state("best")
        where = f"{run.checkpoint('best')} (step {step})"
    else:
        _, state = hf.load_gpt2_state(src, pad_vocab_multiple=cfg.model.pad_vocab_multiple)
        where = src
    _load_weights(model, state, src)
    if cfg.model.block_size < model.config.block_size:
        if not hasattr(model, "crop_block_size"):
            raise UserError(f"--block_size {cfg.model.block_size} is shorter than {src}'s "
                            f"{model.config.block_size} and {type(model).__name__} has no "
                            f"crop_block_size(): keep --block_size {model.config.block_size}")
        model.crop_block_size(cfg.model.block_size)
    log(f"initialised from {where} ({registry.parameter_count(model):,} parameters)")
    return model


def _load_weights(model: torch.nn.Module, state: dict, where) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"checkpoint {where} does not fit this config ({str(e).splitlines()[0][:150]}): "
                        f"resume with the run's own config ({CONFIG_FILE})") from None


def restore(resumed: dict, run_dir: Path, cfg: Config, d, raw, optimizer, scaler, sampler,
            log) -> TrainState:
    """Optimiser (a sharded one resharded when the rank count changed), scaler, data position, RNG,
    loop state."""
    state, fsdp = resumed["state"], cfg.system.parallel == "fsdp" and d.enabled
    if state.get("sharded"):  # written under FSDP2 by any number of ranks: DCP reshards it
        dist_.load_sharded(run_dir, state["sharded"], raw, optimizer)
    elif fsdp:  # a 1-rank or DDP checkpoint: its optimiser state does not map onto FSDP2's shards here
        raise UserError(f"checkpoint {resumed['path']} holds a single-file optimiser state (one "
                        "process or DDP), and FSDP2 resumes only its own sharded checkpoints: resume "
                        "with --parallel ddp")
    else:
        ck.check_optimizer_fits(state["optimizer"], optimizer, resumed["path"])
        optimizer.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    samplers = state.get("sampler") or []  # check_resumable: a list of positions, or none
    if len(samplers) == d.world_size:
        sampler.load_state_dict(samplers[d.rank])
    elif samplers and isinstance(sampler, StreamBatcher):
        sampler.load_state_dict(samplers[0])  # the stream position is global: any rank's will do
    else:
        log("warning: world size changed; random windows restart from a fresh per-rank stream")
    if state.get("rng") and state.get("world_size", 1) == d.world_size:
        ck.set_rng_state(state["rng"][d.rank], d.device)
    ts = TrainState()
    ts.load_state_dict(state)
    return ts


def setup(cfg: Config, d: dist_.Dist, hold: contextlib.ExitStack,
          given: set[str] | None = None, trust_code: bool = False) -> Session:
    """Resolve the config (on --resume from the run's config.json and the `given` keys), open the data,
    build (or restore) model and optimiser, wrap, compile. trust_code: code a run carries may run."""
    # before any rank acts
    dist_.agree_config({"preset": cfg.preset, **{k: cfg.get(k) for k in FIELD_INFO}}, d)
    if cfg.system.num_threads:
        torch.set_num_threads(cfg.system.num_threads)
    torch.use_deterministic_algorithms(cfg.system.deterministic)
    if d.device.type == "cuda":  # TF32 for fp32 matmuls (the autocast ones are bf16/fp16 anyway)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    log = print if d.is_main else (lambda *a, **k: None)
    saved = None
    if cfg.train.resume or cfg.train.init_from == "resume":
        check_trust(cfg, None, trust_code, resume=True)  # before the run's folder is named from the idea
        cfg, saved = resume_source(cfg, given_keys(cfg, None) if given is None else given, d, log)
    data_dir = resolve_data_dir(cfg.data.dataset, cfg.data.data_root)
    meta = tk.read_meta(data_dir)
    # prepare refuses to replace it while this run reads it
    hold.enter_context(tk.open_for_reading(data_dir))
    pick_splits(cfg, data_dir, meta)  # a mistyped split name is refused before the run folder is touched
    startup.eval_graph_choice(cfg.model.dropout, d.enabled)  # so is a bad GPTLAB_EVAL_GRAPH
    cfg, run_dir, resumed = resolve_run(cfg, d, meta, hold, saved, trust_code)
    startup.use_compile_cache(d.device, cfg.system.compile)  # before the workers start: they inherit it
    startup.warm_compile_workers(d.device, cfg.system.compile)  # they start while data and model load
    splits, verified = load_splits(cfg, data_dir, meta, cfg.model.vocab_size)
    hold.callback(verified.thread.join if verified.thread else (lambda: None))
    idea = registry.load(cfg.model)  # the source resolve hashed: build_model checks the sha256
    model = build_model(cfg, resumed, log, idea).to(d.device)
    sampler = build_sampler(cfg, data_dir, meta, splits["train"], d)
    dtype = getattr(torch, cfg.system.dtype)
    scaler = torch.amp.GradScaler(d.device.type, enabled=dtype == torch.float16)
    wrapped = dist_.wrap_model(model, d, cfg.system.parallel, dtype if dtype != torch.float32 else None,
                               cfg.system.ddp_bucket_mb, cfg.system.ddp_bucket_view)
    optimizer_idea = (None if cfg.optim.optimizer in BUILTIN_OPTIMIZERS
                      else optimizers.load_idea(cfg.optim.optimizer))
    # after wrapping: FSDP2 swaps parameters
    optimizer = build_optimizer(model, cfg, d.device.type, optimizer_idea)
    state = (restore(resumed, run_dir, cfg, d, model, optimizer, scaler, sampler, log) if resumed
             else TrainState())
    loop = resumed["state"].get("loop") if resumed else None
    resumed = None  # the checkpoint's tensors are restored; do not hold them for the whole run
    # config, data meta, tokenizer: enough to sample; written now, so a failed resume changes nothing
    if d.is_main:
        runs.record_idea(run_dir, idea)  # the source built above, beside its sha256 in config.json
        runs.record_optimizer(run_dir, optimizer_idea)
        atomic_write_text(run_dir / CONFIG_FILE, cfg.to_json() + "\n")
        atomic_write_json(run_dir / DATA_META_FILE, meta)
        # checked plain NAME.model names, never a path meta.json chose
        for name in tokenizer_files(meta):
            shutil.copyfile(data_dir / name, run_dir / name)
    wrapped = compile_model(wrapped, cfg.system.compile)
    ctx = autocast_ctx(d.device, dtype)
    logger = RunLogger(run_dir, cfg, enabled=d.is_main, total_steps=cfg.train.max_iters,
                       start_step=state.step)
    hold.callback(logger.close)
    clock = TrainClock(d.device, state.train_time)
    evaluator = Evaluator(cfg, wrapped, splits, meta, data_dir, ctx, d, logger, clock)
    evaluator.forward = startup.eval_forward(
        wrapped, model, compiled_mode=cfg.system.compile, batch_size=cfg.train.batch_size,
        ce_chunk=cfg.system.ce_chunk, distributed=d.enabled, eval_only=cfg.train.eval_only)
    evaluator.data_checked = lambda: startup.join_verification(verified, run_dir)
    data = Batches(sampler, cfg.train.gradient_accumulation_steps, d.device)  # starts a thread on a GPU
    hold.callback(data.close)
    checkpointer = ck.Checkpointer(cfg, run_dir, d, model, optimizer, scaler, data)
    hold.callback(checkpointer.close)
    stop = dist_.StopAgreement(cfg, d)  # installs the signal handlers
    hold.callback(stop.restore)
    return Session(cfg=cfg, d=d, run_dir=run_dir, model=wrapped, raw=model, optimizer=optimizer,
                   scaler=scaler, ctx=ctx, data=data, state=state.to(d.device), logger=logger,
                   clock=clock, metrics=TrainMetrics(cfg, model, d, logger, clock, loop),
                   evaluator=evaluator, checkpointer=checkpointer, stop=stop)


# ------------------------------------------------------------------------------ the loop

def train(cfg: Config, argv: list[str] | None = None, trust_code: bool = False) -> dict:
    """Train as the config says; returns a summary (final losses, steps, run folder). trust_code: code a
    run carries (its model idea, on --resume or --init_from RUN) may run.

    Ordered shutdown: `hold` closes what setup opened in reverse (signal handlers restored, checkpoint
    writer and prefetch threads joined, sinks closed, run lock released last); the wrapped model and
    optimiser, which hold the process group, are freed; then every rank meets and the group goes."""
    d = dist_.init(cfg.system.device)
    finished = False
    try:
        with contextlib.ExitStack() as hold:
            resume = cfg.train.resume or cfg.train.init_from == "resume"
            given = given_keys(cfg, argv) if resume else None
            summary = run_loop(setup(cfg, d, hold, given, trust_code), argv or [])
        finished = True
        return summary
    finally:
        # DDP sits in a reference cycle: its reducer (holding the group) goes now, not at
        # interpreter exit
        gc.collect()
        dist_.shutdown(barrier=finished)


def run_loop(s: Session, argv: list[str]) -> dict:
    cfg, st = s.cfg, s.state
    s.logger.print(s.metrics.header(cfg, s.run_dir))
    if cfg.train.eval_only:
        s.evaluator.run(st)
        return {"run_dir": str(s.run_dir), "eval": s.evaluator.last}
    if st.step == 0 and cfg.train.eval_at_start:
        s.evaluator.run(st)
    s.model.train()
    stop, first = None, True
    while st.step < cfg.train.max_iters and stop is None:
        lr = set_lr(s.optimizer, lr_at(st.step, cfg))
        batches, waited = s.data.next()
        before = s.metrics.weights_before(st.step + 1)  # None except on log_grads_every steps
        out = train_step(s.model, s.optimizer, s.scaler, batches, ctx=s.ctx, clip=cfg.optim.grad_clip,
                         ce_chunk=cfg.system.ce_chunk, keep_grads=before is not None)
        st.advance(out, cfg.train.train_batch_size * cfg.model.block_size)
        if first:
            s.logger.print(startup.first_step_line(s.d.device))
            first = False
        s.metrics.record(st, out, lr, waited)
        if before is not None:  # weight/gradient/update/logit statistics; then the gradients go
            s.metrics.log_grads(st, before, batches[-1][0], s.optimizer)
        stop = s.stop.poll(st)
        if stop == "diverged":
            break
        evaluated = s.evaluator.due(st.step)
        improved = s.evaluator.run(st) if evaluated else False
        if s.checkpointer.due(st.step, evaluated, improved, stop):
            with s.clock.paused():
                s.evaluator.data_checked()  # no checkpoint of a run on unverified data
                st.train_time = s.clock.now()
                s.checkpointer.save(st, s.metrics, is_best=improved)
    st.train_time = s.clock.now()
    if stop == "diverged":
        good = s.checkpointer.way_back(st)
        raise RunStopped(diverged_message(good, st, cfg.train.max_nonfinite, s.run_dir))
    s.checkpointer.drain()  # a failed background write surfaces here, as its one-line error
    s.evaluator.data_checked()
    return finish(s, stop, argv)


DIVERGED = ("stopped at step {step}: {max_bad} steps in a row had a non-finite loss or gradient "
            "(updates skipped since step {start}); {way_on}")
WAY_BACK = ("its last valid checkpoint is {good} (model.pt and latest name it); continue it with "
            "--resume --dtype float32, or start a new run from its weights with --init_from {run} "
            "and a lower --learning_rate")
NO_WAY_BACK = ("no valid checkpoint predates step {start}: start afresh with --overwrite and a lower "
               "--learning_rate or --dtype float32")


def diverged_message(good: Path | None, state: TrainState, max_bad: int, run_dir: Path) -> str:
    """The one line of a run stopped by a non-finite streak: its last valid checkpoint, the ways on."""
    way_on = (WAY_BACK.format(good=good.name, run=shlex.quote(str(run_dir))) if good else
              NO_WAY_BACK.format(start=state.streak_start))
    return DIVERGED.format(step=state.step, max_bad=max_bad, start=state.streak_start, way_on=way_on)


def finish(s: Session, stop: str | None, argv: list[str]) -> dict:
    """The closing lines: how to continue a stopped run, or how to use a finished one."""
    st = s.state
    idea = not is_builtin(s.cfg.model.model)  # sample and eval run a model idea, never an optimiser idea
    if stop == "signal":
        code = idea or s.cfg.optim.optimizer not in BUILTIN_OPTIMIZERS
        s.logger.print(f"stopped by {signal.Signals(s.stop.signum).name} at step {st.step}; checkpoint "
                       f"written. Resume with: {resume_command(argv, code)}")
    else:
        run, trust = shlex.quote(str(s.run_dir)), " --trust_code" if idea else ""
        s.logger.print(f"done: {st.step} steps in {st.train_time:.1f}s of training. Next:\n"
                       f"  gptlab sample --run {run}{trust}\n"
                       f"  gptlab eval --run {run}{trust} --eval_data_split "
                       f"{s.evaluator.val_name or 'train'}\n"
                       f"  gptlab plot {run} --out {shlex.quote(str(s.run_dir / 'loss.png'))}")
    return {"run_dir": str(s.run_dir), "step": st.step, "best_val_loss": st.best_val,
            "eval": s.evaluator.last, "tokens": st.tokens, "train_time_s": st.train_time,
            "nonfinite_skipped": int(st.bad_total), "train_loss": s.metrics.last_loss,
            "stopped": stop == "signal"}


def resume_command(argv: list[str], idea: bool = False) -> str:
    """The same arguments with --resume instead of --resume/--overwrite (and the value that may follow
    either); for a model idea with --trust_code, as resuming runs the idea's code."""
    flags, out = ("--resume", "--overwrite"), []
    for a in argv:
        words = ("true", "false", "1", "0", "yes", "no", "on", "off")
        if not (out and out[-1] in flags and a.lower() in words):
            out.append(a)
    given = any(a.split("=", 1)[0] == "--trust_code" for a in argv)
    trust = ["--trust_code"] if idea and not given else []
    kept = (a for a in out if a.split("=", 1)[0] not in flags)
    return shlex.join(["gptlab", "train", *kept, "--resume", *trust])
