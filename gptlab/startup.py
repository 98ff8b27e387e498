"""Quick from command to first step: how in-training evaluation runs a compiled model, the
persistent compile cache, the time-to-first-step line, and data verification off the critical path.

Evaluation (eval_forward): torch.compile guards on the modules' `training` flags, on grad mode and
on the call's arguments and shapes, so `model.eval()` + `no_grad` traces and compiles a second graph.
When no module drops anything out, evaluating through the training graph (train mode, autograd on,
the training batch shape) gives the same numbers with no second compile; with dropout the eval-mode
numbers need eval mode, and the plain module (eager, no compile) scores them. GPTLAB_EVAL_GRAPH
overrides the choice: `train`, `eager` or `separate` (the compiled module in eval mode: a second
graph).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch

from gptlab.data.tokenizers import cache_dir
from gptlab.errors import UserError
from gptlab.evaluate import EvalForward, TrainGraphForward

EVAL_GRAPH_ENV = "GPTLAB_EVAL_GRAPH"
EVAL_GRAPHS = ("auto", "train", "eager", "separate")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
BACKGROUND_VERIFY_BYTES = (
    256 * 2**20
)  # bins at least this large are hashed while the model compiles


# ------------------------------------------------------------------------------ evaluation


def drops_out(model: torch.nn.Module) -> bool:
    """True when any dropout of the model is active in train mode (attention's included)."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "dropout", 0.0)) or any(
        isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()
    )


def eval_graph_choice(dropout: float, distributed: bool) -> str:
    """GPTLAB_EVAL_GRAPH checked (before anything is written): one of EVAL_GRAPHS, and `train` only
    where the training graph computes the eval forward's numbers."""
    choice = os.environ.get(EVAL_GRAPH_ENV, "auto").strip().lower() or "auto"
    if choice not in EVAL_GRAPHS:
        raise UserError(
            f"{EVAL_GRAPH_ENV}={choice!r} is not one of {', '.join(EVAL_GRAPHS)}: unset it or "
            "pass one of those"
        )
    if choice == "train" and (dropout > 0 or distributed):
        raise UserError(
            f"{EVAL_GRAPH_ENV}=train scores through the training graph, which needs dropout 0 and "
            f"one process (its numbers would differ otherwise): unset {EVAL_GRAPH_ENV}"
        )
    return choice


def eval_forward(
    compiled: torch.nn.Module,
    raw: torch.nn.Module,
    *,
    compiled_mode: str,
    batch_size: int,
    ce_chunk: int,
    distributed: bool,
    eval_only: bool,
) -> EvalForward:
    """How the in-training evaluation gets its logits (module docstring); auto picks the training graph
    when that is numerically the eval forward, eager under dropout, the old path elsewhere (several
    processes, eval_only, the CUDA-graph compile modes)."""
    drops = drops_out(raw)
    choice = eval_graph_choice(float(drops), distributed)
    train_ok = not drops and not distributed
    if compiled_mode == "none":
        return EvalForward(compiled)
    if (
        choice == "auto"
    ):  # CUDA-graph modes keep the old path: replaying the training graph's forward
        # without its backward is not what cudagraph trees are built for
        old_path = distributed or eval_only or compiled_mode in CUDA_GRAPH_MODES
        choice = "separate" if old_path else ("train" if train_ok else "eager")
    if choice == "train":
        return TrainGraphForward(compiled, batch_size, hidden=ce_chunk > 0)
    return EvalForward(raw if choice == "eager" else compiled)


# ------------------------------------------------------------------------------ compile cache


def compile_cache_dir() -> Path:
    """Inductor's FX-graph and AOTAutograd caches: $TORCHINDUCTOR_CACHE_DIR if set, else gptlab's
    cache folder (GPTLAB_CACHE_DIR or ~/.cache/gptlab)/inductor, kept across runs and reboots."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(chosen) if chosen else cache_dir() / "inductor"


def use_compile_cache(device: torch.device, compile_mode: str) -> Path | None:
    """On CUDA under compile: point inductor's persistent caches at compile_cache_dir() (the caches
    are on unless the user turned them off), so a repeated shape starts warm. None where unused."""
    if device.type != "cuda" or compile_mode == "none":
        return None
    folder = compile_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # not writable: inductor keeps its default temporary folder
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # read by inductor at each cache access
    return folder


def warm_compile_workers(device: torch.device, compile_mode: str) -> None:
    """Start inductor's kernel-compile worker processes now (torch starts them when its backend is
    first called, after Dynamo has traced the model): on CUDA under compile, where they are used."""
    if device.type != "cuda" or compile_mode == "none":
        return
    try:
        from torch._inductor.async_compile import maybe_warm_pool
    except ImportError:  # a torch without the pool: it compiles in-process
        return
    maybe_warm_pool()


# ------------------------------------------------------------------------------ time to first step


def process_started() -> float:
    """The epoch time this process started (Linux /proc), else when this module was imported."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process so far (frames traced and compiled, and the
    backward graphs compiled lazily at the first backward), from torch._dynamo's timing record."""
    from torch._dynamo.utils import compilation_time_metrics

    keys = ("_compile.compile_inner", "backward._backward_impl")
    return sum(sum(compilation_time_metrics.get(k, ())) for k in keys)


def first_step_line(device: torch.device) -> str:
    """'time to first step: X s (compile Y s)', X from the process start; call right after step 1."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.time() - process_started()
    return f"time to first step: {seconds:.1f} s (compile {compile_seconds():.1f} s)"


# ------------------------------------------------------------------------------ data verification


class Background:
    """fn(*args) on a daemon thread (inline when `inline`); join() waits, re-raises its error once."""

    def __init__(self, fn, *args, inline: bool = False):
        self.error: BaseException | None = None
        self.thread = None
        if inline:
            fn(*args)
            return
        self.thread = threading.Thread(
            target=self._run, args=(fn, args), name="gptlab-background", daemon=True
        )
        self.thread.start()

    def _run(self, fn, args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # handed to join()
            self.error = e

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()
        error, self.error = self.error, None
        if error is not None:
            raise error


def verify_in_background(
    verify, data_dir: Path, meta: dict, splits: list[str], bin_path
) -> Background:
    """verify(data_dir, meta, splits) now when the bins are small (a damaged one is refused before
    anything is written); in the background for large bins, joined before the first evaluation or
    checkpoint (a damaged one then stops the run there, before any checkpoint is written)."""
    size = sum(
        bin_path(data_dir, s).stat().st_size for s in splits if bin_path(data_dir, s).is_file()
    )
    return Background(verify, data_dir, meta, splits, inline=size < BACKGROUND_VERIFY_BYTES)


def join_verification(verified: Background, run_dir: Path) -> None:
    """verified.join(); a damaged bin found in the background stops the run before any checkpoint,
    and the message says what this run left behind."""
    try:
        verified.join()
    except UserError as e:
        raise UserError(
            f"{e} (found while training: {run_dir} holds this run's logs and no checkpoint; "
            "remove it or train again with --overwrite)"
        ) from None
