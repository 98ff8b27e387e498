"""The timing pieces of `gptlab bench` and `gptlab throughput` (gptlab.bench holds the commands): the
training step on random batches already on the device, timed with CUDA events after warm-up (the first
step compiles: reported apart), the rates and MFU of a timing, the profiler's trace and kernel table,
and the output-path check of the files the commands write."""

from __future__ import annotations

import contextlib
import csv
import gc
import statistics
import time
from pathlib import Path

import torch

from gptlab.files import check_output_file
from gptlab.metrics import mfu
from gptlab.train import train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mem_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float | None:
    """Dense bf16 n^3 matmul rate on random data (zeros run faster and would flatter us)."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    ms = time_steps(lambda _: a @ b, [None], device, 3, reps)["ms_per_step"]
    return 2 * n**3 / (ms / 1000) / 1e12


def _sdpa_ctx(name: str):
    """Pin the attention backend ("auto" lets PyTorch pick)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION",
               "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}
    return (sdpa_kernel([getattr(SDPBackend, backend[name])]) if name in backend
            else contextlib.nullcontext())


def time_steps(step_fn, batches, device: torch.device, warmup: int, steps: int) -> dict:
    """Warm-up (the first call compiles), then `steps` timed calls: CUDA events between
    steps (no host sync inside the loop) on a GPU, the host clock elsewhere."""
    t0 = time.perf_counter()
    step_fn(batches[0])
    _sync(device)
    first_s = time.perf_counter() - t0
    for i in range(1, max(1, warmup)):
        step_fn(batches[i % len(batches)])
    _sync(device)
    cuda = device.type == "cuda"
    marks = []  # a mark before the first timed step and after each
    for i in range(steps + 1):
        if i:
            step_fn(batches[(i - 1) % len(batches)])
        marks.append(torch.cuda.Event(enable_timing=True) if cuda else time.perf_counter() * 1000)
        if cuda:
            marks[-1].record()
    _sync(device)
    times_ms = [a.elapsed_time(b) if cuda else b - a for a, b in zip(marks, marks[1:])]
    return {"first_step_s": first_s, "ms_per_step": sum(times_ms) / steps,
            "ms_per_step_median": statistics.median(times_ms), "ms_per_step_min": min(times_ms)}


def _random_batches(n: int, batch: int, seq: int, vocab: int, accum: int, device: torch.device,
                    gen_seed=0):
    """n steps of accum micro-batches (x, y), each (batch, seq), of random tokens on the device."""
    t = torch.randint(0, vocab, (n, accum, batch, seq + 1),
                      generator=torch.Generator().manual_seed(gen_seed))
    return [[(m[:, :-1].contiguous().to(device),
              m[:, 1:].contiguous().to(device)) for m in step] for step in t]


def make_train_step(model, optimizer, ctx, scaler, clip: float, ce_chunk: int = 0, loss_of=None):
    """gptlab.train.train_step, the training loop's own step, as a function of one step's
    micro-batches."""
    return lambda micro_batches: train_step(model, optimizer, scaler, micro_batches, ctx=ctx, clip=clip,
                                            ce_chunk=ce_chunk, loss_fn=loss_of)


def _rates(fpt: float, tokens_per_step: int, ms: float, peak: float | None,
           mm_tflops: float | None) -> dict:
    tps = tokens_per_step / (ms / 1000)
    achieved = fpt * tps
    return {"tokens_per_sec": tps, "tflops": achieved / 1e12, "mfu_table": mfu(fpt, tps, peak),
            "mfu_matmul": achieved / (mm_tflops * 1e12) if mm_tflops else None}


MAX_STEPS = 100_000  # timed or warm-up steps of one bench: minutes on any machine, not forever
THROUGHPUT_HEADER = ["batch", "tokens_per_sec", "ms_per_step", "peak_mem_gb"]
KERNELS_HEADER = ["rank", "kernel", "calls", "total_ms", "share", "avg_us"]


def check_outputs(args, kind: str) -> None:
    """Every file bench/throughput will write passes the output-path rule before any step runs: new, or
    one this command wrote (its JSON "kind", its CSV header; a trace beside a kernels CSV of ours)."""
    if getattr(args, "json", ""):
        check_output_file(args.json, "--json", f'"kind": "{kind}"', make_parents=True)
    if getattr(args, "csv", ""):
        check_output_file(args.csv, "--csv", ",".join(THROUGHPUT_HEADER))
    if getattr(args, "profile", ""):
        prefix = Path(args.profile)
        kernels = check_output_file(prefix.with_name(prefix.name + "_kernels.csv"), "--profile",
                                    ",".join(KERNELS_HEADER), make_parents=True)
        # the gzip trace holds no readable mark: it is ours to replace only beside a kernels CSV of ours
        check_output_file(prefix.with_name(prefix.name + "_trace.json.gz"), "--profile",
                          "" if kernels.exists() else None, make_parents=True)


def profile_step(step_fn, batches, device: torch.device, out_prefix: Path, steps: int = 3) -> dict:
    """Chrome/Perfetto trace (gzip), top-32 kernels by device time (CSV + text)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for i in range(steps):
            step_fn(batches[i % len(batches)])
        _sync(device)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    # Perfetto/Chrome open it; 10x smaller
    trace = out_prefix.with_name(out_prefix.name + "_trace.json.gz")
    prof.export_chrome_trace(str(trace))

    # Kernels by their own device time; on CPU (no kernels) the ops' own CPU time stands in.
    rows = [(e.key, e.count,
             e.self_device_time_total if cuda else e.self_cpu_time_total) for e in prof.key_averages()
            if not cuda or str(e.device_type).endswith("CUDA")]
    total = sum(r[2] for r in rows) or 1.0
    top = sorted((r for r in rows if r[2] > 0), key=lambda r: -r[2])[:32]
    csv_path = out_prefix.with_name(out_prefix.name + "_kernels.csv")
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([KERNELS_HEADER] + [
            [i, name, n, f"{t / 1000:.3f}", f"{t / total:.4f}",
             f"{t / max(n, 1):.1f}"] for i, (name, n, t) in enumerate(top, 1)])
    lines = [f"{'#':>2} {'share':>6} {'ms':>8} {'calls':>6}  kernel"] + [
        f"{i:>2} {100 * t / total:5.1f}% {t / 1000:8.2f} {n:>6}  "
        f"{name[:90]}" for i, (name, n, t) in enumerate(top, 1)]
    return {"trace": str(trace), "kernels_csv": str(csv_path), "table": "\n".join(lines),
            "profiled_steps": steps, "kernel_time_ms_per_step": total / 1000 / steps}
