"""`gptlab train ... --nproc_per_node N [--nnodes M --rdzv_endpoint HOST:PORT]`: the workers started
by PyTorch's elastic launcher (the engine behind torchrun), in this process. The configuration is
checked whole before any worker starts; a worker's error comes back as one line naming its rank."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import uuid
from dataclasses import dataclass

from gptlab.errors import UserError

# torchrun's names, so a torchrun command line moves over unchanged.
LAUNCH_FLAGS = ("--nproc_per_node", "--nnodes", "--rdzv_endpoint", "--rdzv_id", "--max_restarts")
_NNODES = re.compile(r"^(\d+)(?::(\d+))?$")
_ENDPOINT = re.compile(r"^\[?[\w.:-]+\]?:\d{1,5}$")
MULTI_NODE_HINT = ("pass --rdzv_endpoint HOST:PORT (the first node's address and a free port) "
                   "on every node")


@dataclass
class LaunchOptions:
    nproc_per_node: int
    min_nodes: int = 1
    max_nodes: int = 1
    rdzv_endpoint: str = ""
    rdzv_id: str = ""
    max_restarts: int = 0

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.max_nodes


def split_launch_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """({flag: value} of the launcher's flags, the rest of argv), for `--flag v` and `--flag=v`."""
    found: dict[str, str] = {}
    rest: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        flag, eq, value = token.partition("=")
        if flag not in LAUNCH_FLAGS:
            rest.append(token)
            continue
        if not eq:
            value = next(tokens, None)
            if value is None or value.startswith("--"):
                raise UserError(f"{flag} needs a value, e.g. {flag} 2")
        found[flag] = value
    return found, rest


def _count(flag: str, value: str, low: int) -> int:
    if not value.isdigit() or int(value) < low:
        raise UserError(f"{flag} {value!r} is not a whole number >= {low}: e.g. {flag} {max(low, 2)}")
    return int(value)


def parse_launch(found: dict[str, str], device: str = "auto") -> LaunchOptions:
    """The launcher's options, each checked; UserError names the first bad one."""
    nproc = found.get("--nproc_per_node", "1")
    if nproc in ("gpu", "auto"):  # torchrun's words: one worker per GPU
        import torch

        nproc = str(torch.cuda.device_count() or 1)
    opts = LaunchOptions(nproc_per_node=_count("--nproc_per_node", nproc, 1),
                         max_restarts=_count("--max_restarts", found.get("--max_restarts", "0"), 0))
    nodes = _NNODES.match(found.get("--nnodes", "1"))
    if not nodes or int(nodes.group(1)) < 1 or int(nodes.group(2)
                                                   or nodes.group(1)) < int(nodes.group(1)):
        raise UserError(f"--nnodes {found['--nnodes']!r} is not N or MIN:MAX with 1 <= MIN <= MAX: e.g. "
                        "--nnodes 2")
    opts.min_nodes, opts.max_nodes = int(nodes.group(1)), int(nodes.group(2) or nodes.group(1))
    opts.rdzv_endpoint = found.get("--rdzv_endpoint", "")
    if opts.rdzv_endpoint and not _ENDPOINT.match(opts.rdzv_endpoint):
        raise UserError(f"--rdzv_endpoint {opts.rdzv_endpoint!r} is not HOST:PORT: e.g. --rdzv_endpoint "
                        "node0:29500")
    if opts.max_nodes > 1 and not opts.rdzv_endpoint:
        raise UserError(f"--nnodes {found['--nnodes']} without --rdzv_endpoint: {MULTI_NODE_HINT}")
    opts.rdzv_id = found.get("--rdzv_id", "gptlab" if opts.max_nodes > 1 else uuid.uuid4().hex)
    _check_gpus(opts.nproc_per_node, device)
    return opts


def _check_gpus(nproc: int, device: str) -> None:
    import torch

    gpus = torch.cuda.device_count()
    if device.startswith("cuda") or (device == "auto" and gpus):
        if nproc > gpus:
            raise UserError(f"--nproc_per_node {nproc} but this machine has {gpus} GPU(s): "
                            f"use --nproc_per_node {max(gpus, 1)}")


class WorkerStop(Exception):
    """Recorded by a worker for a deliberate stop (a UserError, a divergence): no traceback."""


class WorkerFailed(Exception):
    """A worker stopped: its one line, with its rank, and its exit status as gptlab's."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _failure_line(error) -> WorkerFailed:
    """The lowest rank's one-line error (ranks that agree on a refusal all stop with it; which one
    exits first is chance), else the first failed worker's, a bug's traceback printed first."""
    stops = sorted((rank, failure) for rank, failure in error.failures.items()
                   if _record_text(failure).startswith(WorkerStop.__name__ + ": "))
    rank, failure = stops[0] if stops else error.get_first_failure()
    record = failure.message  # the error file's record: a dict holding "message", or a line
    text = _record_text(failure)
    kind, _, detail = text.partition(": ")
    if kind == WorkerStop.__name__:
        return WorkerFailed(f"rank {rank}: {detail.strip()}", failure.exitcode)
    stack = (record.get("extraInfo") or {}).get("py_callstack") if isinstance(record, dict) else None
    if stack:
        print(stack.rstrip(), file=sys.stderr)
    first = text.strip().splitlines()[0] if text.strip() else f"exit code {failure.exitcode}"
    return WorkerFailed(f"rank {rank} failed (exit code {failure.exitcode}): {first}",
                        failure.exitcode if failure.exitcode > 0 else 1)


def _record_text(failure) -> str:
    record = failure.message  # the error file's record: a dict holding "message", or a line
    return str(record.get("message", record) if isinstance(record, dict) else record)


@contextlib.contextmanager
def _quiet_agent():
    """The elastic agent logs each worker's failure as a framed report, torch.multiprocessing each
    sibling it stops: the user gets one line instead."""
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic",
                                                    "torch.multiprocessing")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def record_stop(error: Exception) -> None:
    """In a worker: leave the launcher the error's one line (it prints it with this rank)."""
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    get_error_handler().record_exception(WorkerStop(str(error)))


def launch(opts: LaunchOptions, argv: list[str], worker) -> dict:
    """Start the workers on this node, each running worker(argv) (a module-level function, so that a
    fresh process finds it), and wait for them; rank 0's summary, or WorkerFailed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=opts.min_nodes, max_nodes=opts.max_nodes, nproc_per_node=opts.nproc_per_node,
        run_id=opts.rdzv_id, rdzv_backend="c10d", rdzv_endpoint=opts.rdzv_endpoint or "localhost:0",
        max_restarts=opts.max_restarts, start_method="spawn")
    # Each worker gets its share of the cores (torchrun would set 1 and warn): unless the user chose.
    threads = {} if "OMP_NUM_THREADS" in os.environ else {
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // opts.nproc_per_node))}
    os.environ.update(threads)
    try:
        with _quiet_agent():
            results = elastic_launch(config, worker)(argv)
    except ChildFailedError as e:
        raise _failure_line(e) from None
    finally:
        for name in threads:
            os.environ.pop(name, None)
    return results.get(0) or next(iter(results.values()), {}) if results else {}
