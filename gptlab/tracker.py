"""One logger (rank 0; others get enabled=False) that fans out to the terminal, metrics.jsonl,
TensorBoard and W&B. metrics.jsonl: one JSON object a line, {"kind": "train"|"eval"|"grads", "step",
"tokens" (training tokens seen), "accel_hours", "time_s", ...}, flushed line by line so a killed run
keeps what it logged."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from gptlab.errors import UserError
from gptlab.layout import METRICS_FILE

NO_TENSORBOARD = ("note: this run writes no TensorBoard events: tensorboard is not installed "
                  "(pip install tensorboard); metrics.jsonl holds every record, and --tensorboard false "
                  "silences this note")


class RunLogger:
    def __init__(self, run_dir: Path | None, cfg, enabled: bool = True, total_steps: int = 0,
                 start_step: int = 0):
        self.enabled = enabled and run_dir is not None
        self.cfg = cfg
        self.t0 = time.time()
        self.tb = self.wandb = self.bar = self.jsonl = None
        if not self.enabled:
            return
        run_dir = Path(run_dir)
        self.jsonl = open(run_dir / METRICS_FILE, "a", encoding="utf-8",  # never through a symbolic link
                          opener=lambda path, flags: os.open(path, flags | os.O_NOFOLLOW))
        # --logger_type (Languini) picks the sinks when given; else --tensorboard / --wandb_log
        kind = cfg.log.logger_type
        if kind in ("tb", "all") or (not kind and cfg.log.tensorboard):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: the jsonl still has everything
                print(NO_TENSORBOARD, file=sys.stderr, flush=True)
            else:
                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if kind in ("wandb", "all") or (not kind and cfg.log.wandb_log):
            try:
                import wandb
            except ImportError:
                raise UserError("--wandb_log needs Weights & Biases: pip install wandb (or drop "
                                "--wandb_log)") from None
            self.wandb = wandb.init(project=cfg.log.wandb_project,
                                    name=cfg.log.wandb_run or run_dir.name, config=cfg.to_dict(),
                                    dir=str(run_dir))
        # tqdm is a dependency
        if cfg.log.progress == "on" or (cfg.log.progress == "auto" and sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            leave=True)

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def advance(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def log(self, kind: str, step: int, tokens: int, values: dict) -> None:
        if not self.enabled:
            return
        tps = self.cfg.train.tokens_per_second
        rec = {"kind": kind, "step": step, "tokens": tokens,
               "accel_hours": tokens / tps / 3600.0 if tps else None,
               "time_s": round(time.time() - self.t0, 3)}
        rec.update({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in values.items()})
        self.jsonl.write(json.dumps(rec) + "\n")
        self.jsonl.flush()
        # eval records by split (eval/val, eval/train): never the training loss's train/ tags
        prefix = f"eval/{values['split']}" if kind == "eval" and "split" in values else kind
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                if self.tb is not None:
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)
                    if kind == "eval" and k == "loss":
                        self.tb.add_scalar(f"{prefix}/loss_vs_tokens", v, tokens)
                        if rec["accel_hours"] is not None:
                            # TensorBoard steps are integers: accelerator-seconds keep resolution.
                            self.tb.add_scalar(f"{prefix}/loss_vs_accel_seconds", v,
                                               int(rec["accel_hours"] * 3600))
        if self.wandb is not None:
            self.wandb.log({f"{prefix}/{k}": v for k, v in values.items()
                            if isinstance(v, (int, float))} | {"tokens": tokens}, step=step)

    def close(self) -> None:
        for sink in (self.bar, self.jsonl, self.tb):
            if sink is not None:
                sink.close()
        if self.wandb is not None:
            self.wandb.finish()
