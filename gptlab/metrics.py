"""Training metrics: throughput and MFU (achieved FLOP/s per device over the device's dense bf16 peak
from the table below, "n/a" when unknown; FLOPs per token: model.flops_per_token), the clock, the
per-sink loss windows, gradient statistics."""

from __future__ import annotations

import contextlib
import math
import re
import resource
import time

import torch

from gptlab import distributed as dist_
from gptlab.loss import logits_and_loss
from gptlab.registry import GPT_FLOPS_NOTE, flops_note, flops_per_token, parameter_count

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s.
PEAK_BF16 = {
    "H100 SXM": 989.4e12, "H100 SXM5": 989.4e12, "H100 80GB HBM3": 989.4e12, "H200 NVL": 835e12,
    "H100 NVL": 835e12, "H100 PCIe": 756e12, "H200": 989.4e12, "GH200": 989.4e12, "B200": 2250e12,
    "A100": 312e12, "A800": 312e12, "L40S": 362.05e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12,
    "RTX 4090": 165.2e12, "RTX 3090": 71e12,
}


def device_peak_flops(device: torch.device | str) -> tuple[float | None, str]:
    """(peak FLOP/s, device name); peak None when unknown - never a guessed number."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None, device.type
    name = torch.cuda.get_device_name(device)
    return peak_for_name(name), name


def peak_for_name(name: str) -> float | None:
    """Table lookup on whole tokens of the device name ("L4" must not match "L40"); the longest
    key first so "H100 PCIe" wins over a shorter one. Unknown -> None."""
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name):
            return PEAK_BF16[key]
    return None


def mfu(flops_per_token: float, tokens_per_sec_per_device: float, peak: float | None) -> float | None:
    return flops_per_token * tokens_per_sec_per_device / peak if peak else None


def fmt_mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


# ------------------------------------------------------------------------------ training metrics

class TrainClock:
    """Seconds of training: wall time minus the time spent paused (evaluation, checkpoints)."""

    def __init__(self, device: torch.device, offset: float = 0.0):
        self.device, self.offset, self.t0, self.paused_s = device, offset, time.time(), 0.0

    def now(self) -> float:
        return self.offset + time.time() - self.t0 - self.paused_s

    @contextlib.contextmanager
    def paused(self):
        # the device runs behind the host: its queued steps count as training
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t = time.time()
        try:
            yield
        finally:
            self.paused_s += time.time() - t


class Window:
    """One sink's sums since its previous record: loss over the steps that updated the
    weights (device tensors, so adding costs no host sync), steps, training time, data wait."""

    def __init__(self, device: torch.device, clock: TrainClock, loop: dict | None = None):
        self.clock = clock
        self.loss_sum = torch.zeros((), device=device)
        self.loss_count = torch.zeros((), device=device)
        self.reset()
        if loop:  # a resume continues the record in progress
            self.loss_sum.copy_(loop["loss_sum"])
            self.loss_count.fill_(float(loop["loss_count"]))

    def reset(self) -> None:
        self.loss_sum.zero_(), self.loss_count.zero_()
        self.steps, self.wait, self.start = 0, 0.0, self.clock.now()

    def add(self, loss: torch.Tensor, bad: torch.Tensor, waited: float) -> None:
        self.loss_sum += torch.where(bad, torch.zeros_like(loss), loss)
        self.loss_count += (~bad).float()
        self.steps += 1
        self.wait += waited

    def take(self, d) -> dict:
        """Mean loss (nan when every step was skipped), seconds per step, data-wait share; then empty."""
        # every rank calls this at the same steps; .item(): a CPU-GPU sync
        loss = dist_.all_reduce(self.loss_sum / self.loss_count, d, "mean").item()
        dt = max(self.clock.now() - self.start, 1e-9) / max(self.steps, 1)
        out = {"loss": loss, "dt": dt, "data_wait_share": self.wait / (dt * max(self.steps, 1))}
        self.reset()
        return out


class StepRate:
    """Seconds per step for the ETA, smoothed over the terminal windows: an exponential average
    (each new window moves it by SMOOTHING of the difference), so one slow window (an evaluation
    nearby, a busy disk) moves the ETA by a fifth of its excess, not all of it. The first window
    holds warm-up and compilation: the second replaces it."""

    SMOOTHING = 0.2

    def __init__(self):
        self.seconds_per_step: float | None = None
        self.windows = 0

    def update(self, seconds_per_step: float) -> float:
        self.windows += 1
        if self.seconds_per_step is None or self.windows == 2:
            self.seconds_per_step = seconds_per_step
        else:
            self.seconds_per_step += self.SMOOTHING * (seconds_per_step - self.seconds_per_step)
        return self.seconds_per_step

    def eta(self, steps_left: int) -> float:
        return steps_left * (self.seconds_per_step or 0.0)


class TrainMetrics:
    """Train records for metrics.jsonl/TensorBoard (every log_metrics_every steps) and the
    terminal (every log_interval steps), each over exactly the steps since its own previous
    record; grads records every log_grads_every steps."""

    def __init__(self, cfg, raw_model, d, logger, clock: TrainClock, loop: dict | None = None):
        self.cfg, self.raw, self.d, self.logger, self.clock = cfg, raw_model, d, logger, clock
        self.jsonl, self.term = Window(d.device, clock, loop), Window(d.device, clock)
        self.fpt = flops_per_token(raw_model, cfg.model.block_size)
        note = flops_note(raw_model)  # an idea's FLOPs may be counted rather than given: said so
        self.fpt_note = "" if note == GPT_FLOPS_NOTE else f" ({note})"
        self.peak, self.device_name = device_peak_flops(d.device)
        self.tokens_per_step = cfg.train.train_batch_size * cfg.model.block_size
        self.last_loss = math.nan
        self.rate = StepRate()

    def header(self, cfg, run_dir) -> str:
        t = cfg.train
        return (f"run: {run_dir}\nmodel: {parameter_count(self.raw):,} parameters, {self.fpt / 1e9:.3f} "
                f"GFLOPs/token{self.fpt_note} | device {self.device_name} | dtype {cfg.system.dtype} | "
                f"compile {cfg.system.compile} | world {self.d.world_size} | batch {t.train_batch_size} "
                f"= {self.d.world_size} ranks x {t.batch_size} x {t.gradient_accumulation_steps} accum "
                f"| seq {cfg.model.block_size} | {self.tokens_per_step:,} tokens/step")

    def record(self, state, out, lr: float, waited: float) -> None:
        end = state.step == self.cfg.train.max_iters
        log = self.cfg.log
        for w in (self.jsonl, self.term):
            w.add(out.loss, out.bad, waited)
        if state.step % log.log_metrics_every == 0 or end:
            self.logger.log("train", state.step, state.tokens,
                            self._values(self.jsonl.take(self.d), state, out, lr))
        if state.step % log.log_interval == 0 or end:
            v = self._values(self.term.take(self.d), state, out, lr)
            self.rate.update(v["ms_per_step"] / 1000)
            self.last_loss = v["loss"]
            self.logger.print(self._line(state.step, v))
            self.logger.advance(0, loss=f"{v['loss']:.4f}")
        self.logger.advance(1)

    def _values(self, w: dict, state, out, lr: float) -> dict:
        tps = self.tokens_per_step / w["dt"]
        v = {"loss": w["loss"], "lr": lr, "ms_per_step": w["dt"] * 1000, "tokens_per_sec": tps,
             "mfu": mfu(self.fpt, tps / self.d.world_size, self.peak), "grad_norm": float(out.grad_norm),
             "data_wait_share": w["data_wait_share"], "nonfinite_skipped": int(state.bad_total),
             "train_time_s": self.clock.now()}  # float()/int(): CPU-GPU syncs, at this record's cadence
        # peak memory torch allocated; on the CPU, the process's peak RSS
        if self.d.device.type == "cuda":
            v["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.d.device) / 2**30
        else:
            v["peak_mem_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        return v

    def _line(self, step: int, v: dict) -> str:
        total = self.cfg.train.max_iters
        mem = (f" | {'peak mem' if self.d.device.type == 'cuda' else 'peak RSS'} "
               f"{v['peak_mem_gb']:.2f} GiB")
        eta = f" | elapsed {_hms(self.clock.now())} | ETA {_hms(self.rate.eta(total - step))}" \
            if step < total else ""
        return (f"step {step}/{total} | loss {v['loss']:.4f} | lr {v['lr']:.2e} | "
                f"{v['ms_per_step']:.1f} ms/step | {v['tokens_per_sec']:,.0f} tok/s | MFU "
                f"{fmt_mfu(v['mfu'])}{mem}{eta}")

    def weights_before(self, step: int) -> dict | None:
        """A copy of the weights before `step` when it logs grads statistics (rank 0; not under FSDP2,
        whose ranks hold shards), else None."""
        every = self.cfg.log.log_grads_every
        if not every or step % every or not self.d.is_main or hasattr(next(self.raw.parameters()),
                                                                      "full_tensor"):
            return None
        return {n: p.detach().float().clone() for n, p in self.raw.named_parameters()}

    def log_grads(self, state, before: dict, x: torch.Tensor, optimizer) -> None:
        """Weights, gradients, the update, and the logits on the step's last inputs (eval mode: no
        RNG drawn); then the gradients kept for it are dropped."""
        stats = grad_stats(self.raw, before)
        optimizer.zero_grad(set_to_none=True)
        was = self.raw.training
        self.raw.eval()
        with torch.no_grad():
            lf = logits_and_loss(self.raw, x)[0].float()
        self.raw.train(was)
        stats.update({"logits/mean": lf.mean().item(), "logits/std": lf.std().item(),
                      "logits/max": lf.max().item(), "logits/min": lf.min().item()})
        self.logger.log("grads", state.step, state.tokens, stats)

    def state_dict(self) -> dict:
        """The jsonl window's partial sums: a resume continues the record in progress."""
        return {"loss_sum": self.jsonl.loss_sum.detach().cpu().clone(),
                "loss_count": float(self.jsonl.loss_count)}


def _hms(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def grad_stats(model: torch.nn.Module, before: dict[str, torch.Tensor] | None,
               scale: float = 1.0) -> dict:
    """Mean / max / min / L2 of weights, gradients and the last update, per parameter and pooled over all
    ("global"). Call after the optimiser step, before zero_grad (gradients divided by `scale`)."""
    out: dict[str, float] = {}
    pooled = {"w": [], "g": [], "u": []}  # per tensor: (numel, mean, max, min, l2)
    for name, p in model.named_parameters():
        w = p.detach().float()
        parts = {"w": w, "g": None if p.grad is None else p.grad.detach().float() / scale,
                 "u": w - before[name] if before is not None and name in before else None}
        for kind, t in parts.items():
            if t is not None:  # .item(): host syncs, on log_grads_every steps only
                s = {"mean": t.mean().item(), "max": t.max().item(), "min": t.min().item(),
                     "l2": t.norm().item()}
                out.update({f"{kind}/{name}/{k}": v for k, v in s.items()})
                pooled[kind].append((t.numel(), *s.values()))
    for kind, rows in pooled.items():
        if rows:
            n, mean, mx, mn, l2 = torch.tensor(rows, dtype=torch.float64).T
            out.update({f"{kind}/global/mean": float((n * mean).sum() / n.sum()),
                        f"{kind}/global/max": float(mx.max()), f"{kind}/global/min": float(mn.min()),
                        f"{kind}/global/l2": float(l2.norm())})
    return out


def entropy_gap(meta: dict, m: dict) -> str:
    """' | gap to the entropy bound' for generated data whose meta.json states its word
    probability (zero_one: source.p_zero); the bound is per word token, so <eot> is left out."""
    p = (meta.get("source") or {}).get("p_zero")
    if not isinstance(p, (int, float)) or not 0 < p < 1:
        return ""
    bound = -p * math.log(p) - (1 - p) * math.log(1 - p)
    loss = m.get("loss_excl_eot", m["loss"])
    return (f" | word-token loss {loss:.4f}, gap to entropy bound {bound:.4f}: "
            f"{(loss / bound - 1) * 100:+.2f}%")
