"""Two gloo ranks run the checkpoint scenarios of test_checkpoint_ranks.py with the real Checkpointer.

`python ckpt_ranks_worker.py OUT`: torch is imported once here, then two ranks are forked (before any torch
work, so the fork is safe). Each scenario runs on both ranks in its own run folder; each rank writes what it
saw to OUT/<scenario>.<rank>.json. A rank that hangs in a collective is ended by the group's timeout.
"""

from __future__ import annotations

import datetime
import errno
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gptlab import checkpoint as ck
from gptlab import distributed as dist_
from gptlab.config_files import build_config
from gptlab.errors import UserError
from gptlab.train import TrainState


class _Metrics:
    def state_dict(self) -> dict:
        return {"loss_sum": torch.zeros(()), "loss_count": 0.0}


def _checkpointer(run: Path, d: dist_.Dist, parallel: str) -> ck.Checkpointer:
    cfg = build_config("baby", overrides=dict(parallel=parallel, keep_last=1, max_iters=100, checkpoint_interval=1))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return ck.Checkpointer(cfg, run, d, model, optimizer, scaler, SimpleNamespace(position=dict))


def _saves(saver: ck.Checkpointer, steps) -> dict:
    """Save at each step, then drain as the loop's end does; what happened, as plain data."""
    state = TrainState()
    try:
        for step in steps:
            state.step = step
            saver.save(state, _Metrics(), is_best=False)
        saver.drain()
        return {"error": None}
    except BaseException as e:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
        return {"error": str(e), "type": type(e).__name__}


def slow_writer(run: Path, d: dist_.Dist) -> dict:
    """FSDP2: rank 0's background write of step 1 is slow; step 2's shards must survive its pruning."""
    saver = _checkpointer(run, d, "fsdp")
    real = ck.save_checkpoint

    def slow(*args, **kwargs):
        time.sleep(1.5)  # every rank reaches the next save (and its dcp_ folder) before this write prunes
        return real(*args, **kwargs)

    ck.save_checkpoint = slow
    try:
        out = _saves(saver, (1, 2))
    finally:
        ck.save_checkpoint = real
    dist.barrier()
    found = ck.load_latest_valid(run, warn=lambda m: None)
    out["newest"] = found[0]["step"] if found else None
    out["folders"] = sorted(p.name for p in ck.checkpoint_dir(run).glob("dcp_*"))
    try:
        dist_.load_sharded(run, found[0]["sharded"], saver.raw, saver.opt)
        out["loaded"] = True
    except BaseException as e:  # noqa: BLE001
        out["loaded"] = f"{type(e).__name__}: {e}"
    return out


def shard_write_fails_on_rank_1(run: Path, d: dist_.Dist) -> dict:
    """FSDP2: rank 1's shard write hits a full disk."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    saver = _checkpointer(run, d, "fsdp")
    real = FileSystemWriter.write_data

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if d.rank == 1:
        FileSystemWriter.write_data = full_disk
    try:
        return _saves(saver, (1,))
    finally:
        FileSystemWriter.write_data = real


def background_write_fails_on_rank_0(run: Path, d: dist_.Dist) -> dict:
    """DDP: rank 0's background write of step 1 fails; every rank must stop at its next save."""
    saver = _checkpointer(run, d, "ddp")
    real = ck.save_checkpoint

    def failing(*args, **kwargs):
        raise UserError(f"disk full while writing {run}/checkpoints/ckpt_00000001.pt: free space and rerun")

    if d.rank == 0:
        ck.save_checkpoint = failing
    try:
        return _saves(saver, (1, 2))
    finally:
        ck.save_checkpoint = real


SCENARIOS = [slow_writer, shard_write_fails_on_rank_1, background_write_fails_on_rank_0]


def _rank(rank: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    d = dist_.Dist(rank=rank, local_rank=rank, world_size=2)
    for scenario in SCENARIOS:
        result = scenario(out / scenario.__name__, d)
        (out / f"{scenario.__name__}.{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.start_processes(_rank, args=(Path(sys.argv[1]),), nprocs=2, start_method="fork")
