"""The parts the training loop is made of (gptlab.train runs them in order): the optimiser step,
the loop state a resume restores, the data the loop draws from (splits, sampler, batches fetched one
step ahead) and in-training evaluation at its own cadence."""

from __future__ import annotations

import difflib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gptlab import distributed as dist_
from gptlab import startup
from gptlab.config import Config
from gptlab.data import tokens as tk
from gptlab.data.prefetch import Prefetcher
from gptlab.data.samplers import RandomWindowSampler, StreamBatcher
from gptlab.data.tokenizers import token_byte_lengths, tokenizer_from_meta
from gptlab.errors import UserError
from gptlab.evaluate import count_targets, eval_plan, evaluate, format_metrics, progress_printer
from gptlab.loss import lm_loss
from gptlab.metrics import entropy_gap

# ------------------------------------------------------------------------------ the step

@dataclass
class StepOutput:
    loss: torch.Tensor  # mean loss over the micro-batches (device scalar)
    grad_norm: torch.Tensor  # before clipping (device scalar)
    bad: torch.Tensor  # True when the loss or the gradients were not finite: the update was skipped


def train_step(model, optimizer, scaler, batches, *, ctx, clip: float, ce_chunk: int = 0, loss_fn=None,
               keep_grads: bool = False) -> StepOutput:
    """One optimiser step over the micro-batches `batches` [(x, y), ...]; `gptlab bench` times exactly
    this. The fused optimiser and the fp16 GradScaler skip a non-finite step on the device (no host
    sync)."""
    loss_fn = loss_fn or (lambda m, x, y: lm_loss(m, x, y, ce_chunk))
    n = len(batches)
    step_loss = torch.zeros((), device=batches[0][0].device)
    for i, (x, y) in enumerate(batches):
        with dist_.grad_sync(model, i == n - 1), ctx:  # gradients reduced on the last micro-batch only
            loss = loss_fn(model, x, y) / n
        scaler.scale(loss).backward()
        step_loss += loss.detach()
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    gnorm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"), foreach=True)
    gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm  # FSDP2's norm is a DTensor
    bad = (~torch.isfinite(step_loss) if scaler.is_enabled()
           else ~(torch.isfinite(step_loss) & torch.isfinite(gnorm)))
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips on overflow, on the device
        scaler.update()
    elif optimizer.defaults.get("fused"):
        # the fused kernel skips on the device
        optimizer.found_inf, optimizer.grad_scale = bad.float(), None
        optimizer.step()
    elif not bool(bad):  # bool(): a CPU-GPU sync (non-fused optimisers only)
        optimizer.step()
    if not keep_grads:
        optimizer.zero_grad(set_to_none=True)
    return StepOutput(step_loss, gnorm, bad)


# ------------------------------------------------------------------------------ state

@dataclass
class TrainState:
    """What a resume restores besides model, optimiser, scaler, RNG and data position."""

    step: int = 0
    tokens: int = 0
    best_val: float = math.inf
    train_time: float = 0.0  # seconds of training steps (no evaluation, no checkpoints)
    streak_start: int | None = None  # first step of the current non-finite streak (None: none)
    # device counters: no sync per step
    consec_bad: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    bad_total: torch.Tensor = field(default_factory=lambda: torch.zeros(()))

    def to(self, device) -> "TrainState":
        self.consec_bad, self.bad_total = self.consec_bad.to(device), self.bad_total.to(device)
        return self

    def advance(self, out: StepOutput, tokens_per_step: int) -> None:
        bad = out.bad.float()
        self.consec_bad = (self.consec_bad + bad) * bad
        self.bad_total = self.bad_total + bad
        self.step += 1
        self.tokens += tokens_per_step

    def note_streak(self, step: int, streak: int) -> None:
        """What a check read at `step`: the current streak of `streak` non-finite steps, or none.
        Only the current streak is tracked: a blip that recovered is forgotten, and a later
        divergence sets aside the checkpoints of its own streak only."""
        self.streak_start = step - streak + 1 if streak > 0 else None

    def state_dict(self) -> dict:
        # int(): a CPU-GPU sync, at checkpoints only
        return {"tokens": self.tokens, "best_val_loss": self.best_val,
                "nonfinite_skipped": int(self.bad_total),
                "nonfinite_streak_start": self.streak_start, "train_time_s": self.train_time}

    def load_state_dict(self, ckpt: dict) -> None:
        self.step, self.tokens = int(ckpt["step"]), int(ckpt.get("tokens", 0))
        self.best_val = float(ckpt.get("best_val_loss", math.inf))
        self.train_time = float(ckpt.get("train_time_s", 0.0))
        self.bad_total.fill_(float(ckpt.get("nonfinite_skipped", 0)))
        self.streak_start = ckpt.get("nonfinite_streak_start")
        if "consec_bad" in (ckpt.get("loop") or {}):
            self.consec_bad.copy_(ckpt["loop"]["consec_bad"])


# ------------------------------------------------------------------------------ components

class Batches:
    """Training batches, one optimiser step at a time, drawn one step ahead (by a worker
    thread on a GPU). position() is the sampler state of the next step not yet handed out."""

    def __init__(self, sampler, accum: int, device: torch.device):
        self.sampler, self.accum, self.device = sampler, accum, device
        self.prefetch = Prefetcher(self._produce, depth=2, enabled=device.type == "cuda")
        self.upcoming = self.prefetch.get()

    def _produce(self):
        before = self.sampler.state_dict()
        # a StreamBatcher hands out a whole step's micro-batches at once
        stream = isinstance(self.sampler, StreamBatcher)
        batches = self.sampler.next() if stream else [self.sampler.next() for _ in range(self.accum)]
        if self.device.type == "cuda":  # pinned host memory lets the copy overlap with compute
            return before, [(x.pin_memory().to(self.device, non_blocking=True),
                             y.pin_memory().to(self.device, non_blocking=True)) for x, y in batches]
        return before, [(x.to(self.device), y.to(self.device)) for x, y in batches]

    def next(self) -> tuple[list, float]:
        """(this step's micro-batches, seconds waited for the next step's)."""
        batches = self.upcoming[1]
        t = time.time()
        self.upcoming = self.prefetch.get()
        return batches, time.time() - t

    def position(self) -> dict:
        return self.upcoming[0]

    def close(self) -> None:
        self.prefetch.close()
        thread = getattr(self.prefetch, "thread", None)
        # close() waits 5 s at most; a daemon thread left in a CUDA copy aborts the exit
        if thread is not None:
            thread.join()


PROGRESS_MIN_BATCHES = 20  # an evaluation this long shows its progress


class Evaluator:
    """In-training evaluation of the train and held-out splits at its own cadence, the benchmark's
    way: the first eval_iters batches of eval_batch_size document streams, planned once per split."""

    def __init__(self, cfg: Config, model, splits: dict, meta: dict, data_dir: Path, ctx, d, logger,
                 clock):
        self.cfg, self.model, self.splits, self.meta, self.ctx, self.d = cfg, model, splits, meta, ctx, d
        self.logger, self.clock = logger, clock
        self.forward = None  # evaluate's default; setup() sets startup.eval_forward's choice
        self.data_checked = lambda: None  # setup(): joins the background data verification
        self.val_name = next((k for k in splits if k != "train"), None)
        self.last: dict = {}
        self.plans = {}
        self.counted = startup.Background(lambda: None, inline=True)
        self.announced = False
        t = cfg.train
        if t.eval_iters == 0:
            return
        tok = tokenizer_from_meta(meta, data_dir)
        lengths = token_byte_lengths(tok)
        streams = t.eval_batch_size or 16
        self.batches = self.capped(len(splits), streams)
        for split, toks in splits.items():
            offsets = tk.doc_offsets(data_dir, cfg.data.train_split if split == "train" else split, meta)
            if (offsets is None or len(offsets) == 1) and len(toks) // streams > cfg.model.block_size:
                # One text without document boundaries (e.g. shakespeare): cut it into `streams`
                # equal parts, else all but one stream would be empty. Documented data keeps
                # Languini's dealing.
                offsets = np.arange(streams, dtype=np.int64) * (len(toks) // streams)
            # planned (and checked) now; a bad plan stops the run here
            self.plans[split] = eval_plan(len(toks), cfg.model.block_size, t.last_n, offsets, streams,
                                          self.batches, toks, meta.get("eot_id"))
        # Characters and bytes of every scored window (languini_eval_plan's counts): on a GPU,
        # counted while the model compiles; the first evaluation waits for them.
        counts = [(plan, splits[split], tok, lengths) for split, plan in self.plans.items()]
        self.counted = startup.Background(lambda: [count_targets(*job) for job in counts],
                                          inline=d.device.type != "cuda")

    def evaluations(self) -> int:
        t = self.cfg.train
        every, last = t.eval_interval, t.max_iters
        return (last // every + (last % every > 0) if every else 1) + int(t.eval_at_start)

    def capped(self, n_splits: int, streams: int) -> int:
        """eval_iters, or fewer where all evaluations would score more than eval_cap of the run's
        training tokens (a short run of a Languini preset: 500 batches of 16 x 512 tokens on 2
        splits)."""
        t = self.cfg.train
        per_batch = streams * self.cfg.model.block_size
        trained = t.max_iters * t.train_batch_size * self.cfg.model.block_size
        allowed = (int(t.eval_cap * trained / (self.evaluations() * n_splits * per_batch)) if t.eval_cap
                   else t.eval_iters)
        return max(1, min(t.eval_iters, allowed))

    def announcement(self) -> str:
        """What every evaluation costs and how often it comes: said once, before the first."""
        t = self.cfg.train
        every, last, count = t.eval_interval, t.max_iters, self.evaluations()
        sizes = " + ".join(f"{split} {plan.batches:,} batches x {len(plan.rows.rows)} streams x "
                           f"{plan.seq_len} tokens ({plan.counts['eval_tokens']:,} scored)"
                           for split, plan in self.plans.items())
        cadence = f"every {every:,} steps and at the end" if every else "at the end"
        cap = "" if self.batches == t.eval_iters else (
            f" (capped from --eval_iters {t.eval_iters:,}: evaluation kept to {t.eval_cap:g} of this "
            f"run's training tokens; --eval_cap 0 for all {t.eval_iters:,})")
        return f"in-training eval: {sizes}, {cadence}: {count:,} evaluation(s) in {last:,} steps{cap}"

    def due(self, step: int) -> bool:
        every, t = self.cfg.train.eval_interval, self.cfg.train
        return (bool(every and step % every == 0) or step == t.max_iters
                or (step == 0 and t.eval_at_start))

    def run(self, state: TrainState) -> bool:
        """Evaluate every split and log it; True when the held-out loss improved."""
        t, d = self.cfg.train, self.d
        reduce = (lambda x: dist_.all_reduce(x, d)) if d.enabled else None
        out = {}
        with self.clock.paused():
            self.data_checked()
            self.counted.join()  # the announcement names the scored tokens
            if not self.announced and self.plans:
                self.logger.print(self.announcement())
                self.announced = True
            for split, plan in self.plans.items():
                shown = d.is_main and plan.batches >= PROGRESS_MIN_BATCHES
                progress = progress_printer(f"eval step {state.step} {split}") if shown else None
                m = evaluate(self.model, self.splits[split], self.cfg.model.block_size,
                             t.eval_batch_size or t.batch_size, d.device, autocast=self.ctx, rank=d.rank,
                             world_size=d.world_size, reduce=reduce, eot_id=self.meta.get("eot_id"),
                             plan=plan, forward=self.forward, progress=progress)
                out[split] = dict(m, split=split, train_time_s=self.clock.now())
                self.logger.log("eval", state.step, state.tokens, out[split])
        self.last = out
        val = out.get(self.val_name) or out.get("train")
        if val is None:
            return False
        self.logger.print(f"eval step {state.step}: " + " | ".join(
            f"{k} {format_metrics(v)}{entropy_gap(self.meta, v)}" if k == self.val_name
            else f"{k} loss {v['loss']:.4f}" for k, v in out.items()))
        improved = val["loss"] < state.best_val
        state.best_val = min(state.best_val, val["loss"])
        return improved


# ------------------------------------------------------------------------------ the data

def pick_splits(cfg: Config, data_dir: Path, meta: dict) -> list[str]:
    """[train split, held-out split (the default "val" falls back to "test", or none)]; a mistyped name
    is refused."""
    names = list(meta["splits"])
    for flag, name in (("train_split", cfg.data.train_split), ("val_split", cfg.data.val_split)):
        if name not in names and not (flag == "val_split" and name == "val"):
            hint = "".join(f"did you mean {c!r}? " for c in difflib.get_close_matches(name, names, n=1))
            raise UserError(f"--{flag} {name!r}: dataset {data_dir} has no such split "
                            f"(has: {', '.join(names)}): {hint}pass one of those")
    val = cfg.data.val_split if cfg.data.val_split in names else ("test" if "test" in names else None)
    return [cfg.data.train_split] + ([val] if val else [])


def load_splits(cfg: Config, data_dir: Path, meta: dict,
                vocab: int) -> tuple[dict, startup.Background]:
    """({"train": tokens, <held-out split name>: tokens}, the sha256 check's handle) after checking
    sizes and token range; large bins are hashed in the background (startup.verify_in_background)."""
    wanted = pick_splits(cfg, data_dir, meta)
    # meta.json's sha256, cached by size and mtime
    verified = startup.verify_in_background(tk.verify_bins, data_dir, meta, wanted, tk.bin_path)
    out = {}
    for name in wanted:
        toks = tk.load_split(data_dir, name, meta)
        out["train" if name == cfg.data.train_split else name] = toks
        tk.check_token_range(toks, vocab, f"{data_dir}/{name}.bin")
    if len(out["train"]) < cfg.model.block_size + 1:
        raise UserError(f"the train split has {len(out['train'])} tokens, fewer than seq_len + 1 = "
                        f"{cfg.model.block_size + 1}: use a shorter --block_size or more data")
    return out, verified


def build_sampler(cfg: Config, data_dir: Path, meta: dict, train_tokens, d: dist_.Dist):
    t = cfg.train
    if cfg.data.sampler == "stream":
        offsets = tk.doc_offsets(data_dir, cfg.data.train_split, meta)
        return StreamBatcher(train_tokens, offsets, t.train_batch_size, cfg.model.block_size,
                             meta.get("eot_id"), rank=d.rank, world_size=d.world_size,
                             micro_batches=t.gradient_accumulation_steps)
    return RandomWindowSampler(train_tokens, t.batch_size, cfg.model.block_size, seed=t.seed,
                               rank=d.rank, world_size=d.world_size)

