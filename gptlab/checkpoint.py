"""One checkpoint format, written so that a kill at any moment loses nothing but time.

In <run>/checkpoints/: ckpt_00001000.pt[.sha256] (the newest `keep_last` and their checksums), model.pt /
best.pt (hard links to the newest / lowest validation loss one), latest (the newest complete one's name).
Entries are tensors and plain containers (torch.load(weights_only=True) reads them); every file is
written atomically; a checkpoint that fails its .sha256 is reported and skipped for the newest valid one.
This module writes (the Checkpointer: cadence, background writer, pruning); gptlab.checkpoint_format
names, verifies and loads, and its names are importable from here too.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
from pathlib import Path

import torch
from torch.utils._pytree import tree_map

from gptlab import distributed as dist_
from gptlab import files
from gptlab.checkpoint_format import (  # the format side, importable from here as before
    CKPT_RE,  # noqa: F401
    FOREIGN,  # noqa: F401
    FORMAT,
    _earlier_checkpoint_hint,  # noqa: F401
    _is_int,  # noqa: F401
    _optimizer_problem,  # noqa: F401
    _rng_problem,  # noqa: F401
    _set_host_rng,  # noqa: F401
    _structure_problem,  # noqa: F401
    check_optimizer_fits,  # noqa: F401
    check_resumable,  # noqa: F401
    checkpoint_dir,
    ckpt_step,
    find_checkpoint,  # noqa: F401
    list_checkpoints,
    load_checkpoint,  # noqa: F401
    load_latest_valid,
    rng_state,
    set_rng_state,  # noqa: F401
    verify,  # noqa: F401
)
from gptlab.errors import UserError
from gptlab.files import atomic_write_text, sha256_file  # noqa: F401 (sha256_file: importable here)


class _HashingWriter(io.RawIOBase):
    """Hashes bytes as they are written (no second read of a big file). torch.save reports a
    failed write() as a RuntimeError; `error` keeps the OSError (a full disk) for the caller."""

    def __init__(self, f):
        self.f, self.h, self.error = f, hashlib.sha256(), None

    def write(self, b):
        try:
            n = self.f.write(b)
        except OSError as e:
            self.error = e
            raise
        self.h.update(memoryview(b)[:n] if n is not None else b)
        return n


def _save_hashed(state: dict, f) -> str:
    """torch.save(state) into f; the sha256 of the bytes written."""
    hw = _HashingWriter(f)
    try:
        torch.save(state, hw)
    except RuntimeError:
        if hw.error is not None:
            raise hw.error from None
        raise
    return hw.h.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    """Point dst at src's bytes (a hard link costs no space), replaced atomically, with src's
    checksum."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    dst_sidecar = dst.with_name(dst.name + ".sha256")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        # the old checksum must not outlive the old bytes (a stale one would call a good file damaged)
        dst_sidecar.unlink(missing_ok=True)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    sidecar = src.with_name(src.name + ".sha256")
    if sidecar.exists():
        atomic_write_text(dst_sidecar, sidecar.read_text())


def save_checkpoint(run_dir: Path, state: dict, step: int, keep_last: int = 2, is_best: bool = False,
                    protect_before: int | None = None, sharded: bool = False) -> Path:
    """Write ckpt_<step>.pt, then its checksum, then the pointers; prune only after the new one is
    complete, keeping the newest `keep_last` and the newest before step `protect_before` (a way back)."""
    ckpt_dir = checkpoint_dir(run_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"ckpt_{step:08d}.pt"
    try:
        _write(path, dict(state, format=FORMAT, step=step), is_best)
    except (OSError, UserError) as e:  # a full disk: the previous checkpoint is what a resume uses
        if not str(files.write_error(path, e)).startswith("disk full"):
            raise
        raise UserError(f"disk full while writing {path}: the previous checkpoint is intact; "
                        "free space and rerun with --resume") from None
    for old in list_checkpoints(run_dir):
        if ckpt_step(old) > step:  # skipped as damaged by the resume: an abandoned timeline, set aside
            old.rename(old.with_name(old.name + ".stale"))
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    kept = list_checkpoints(run_dir)
    way_back = [p for p in kept if protect_before is not None and ckpt_step(p) < protect_before][:1]
    for old in kept[max(1, keep_last):]:
        if old not in way_back:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    if sharded:
        prune_sharded(run_dir, step)
    return path


def prune_sharded(run_dir: Path, step: int) -> None:
    """Delete the DCP folders older than `step` that no kept checkpoint names. Pruning goes by step: a
    folder of this step or a later one may be in the middle of its write, and is left alone."""
    keep = {dist_.sharded_name(ckpt_step(p)) for p in list_checkpoints(run_dir)}
    for folder in checkpoint_dir(run_dir).glob("dcp_*"):
        if dist_.DCP_RE.match(folder.name) and int(folder.name[4:]) < step and folder.name not in keep \
                and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def _write(path: Path, state: dict, is_best: bool) -> None:
    sidecar = path.with_name(path.name + ".sha256")
    # a re-saved step must not keep the old checksum beside new bytes: a crash in between reads
    # "no checksum"
    sidecar.unlink(missing_ok=True)
    digest = files.atomic_write_stream(path, lambda f: _save_hashed(state, f))
    try:
        atomic_write_text(sidecar, digest + "\n")
    except BaseException:  # without its checksum the new file is useless: the folder stays as it was
        path.unlink(missing_ok=True)
        raise
    _link_or_copy(path, path.parent / "model.pt")
    if is_best:
        _link_or_copy(path, path.parent / "best.pt")
    atomic_write_text(path.parent / "latest", path.name + "\n")


def cpu_copy(tree):
    """A CPU copy of a state dict's tensors, detached from the live ones: training goes on while it is
    written."""
    return tree_map(lambda t: t.detach().to("cpu", copy=True) if isinstance(t, torch.Tensor) else t,
                    tree)


class Checkpointer:
    """Saves at its cadence: every checkpoint_interval steps (or at evaluations when that is 0), at every
    evaluation that improved the held-out loss (best.pt is never stale), at the end and on a stop. State
    is copied off the device, then written by one background thread (rank 0, non-daemon).

    Bookkeeping is agreed by all ranks (torchtitan's rule): a save first waits, on every rank, for the
    previous background write, and stops every rank with the same line if it failed; only then does it
    take the next snapshot. So no rank writes dcp_<step> while the previous write still prunes, and at
    most one host copy of the state exists."""

    def __init__(self, cfg, run_dir: Path, dist, raw_model, optimizer, scaler, data):
        self.cfg, self.run_dir, self.dist = cfg, run_dir, dist
        self.raw, self.opt = raw_model, optimizer
        self.scaler, self.data = scaler, data
        self.fsdp = cfg.system.parallel == "fsdp" and dist.enabled
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def due(self, step: int, evaluated: bool, improved: bool, stop: str | None) -> bool:
        t = self.cfg.train
        if stop == "signal" or step == t.max_iters or improved:
            return True
        if t.checkpoint_interval:
            return step % t.checkpoint_interval == 0
        return evaluated and t.always_save_checkpoint

    def save(self, state, metrics, is_best: bool) -> None:
        """Collective: every rank joins the agreement on the previous write, the gathers, and under FSDP2
        writes its shards."""
        dist = self.dist
        self.drain()  # before anything of this snapshot exists: one copy, no dcp_<step> being pruned
        streak = int(dist_.all_reduce(state.consec_bad, dist, "max"))  # int(): a sync, at saves only
        state.note_streak(state.step, streak)
        samplers = dist_.gather_objects(self.data.position(), dist)
        rngs = dist_.gather_objects(rng_state(dist.device), dist)
        sharded = (dist_.save_sharded(self.run_dir, state.step, self.raw, self.opt, dist)
                   if self.fsdp else None)
        model_sd = dist_.full_state_dict(self.raw, dist) if self.fsdp else None
        loop = dict(metrics.state_dict(), consec_bad=state.consec_bad.detach().cpu().clone())
        if not dist.is_main:
            return
        scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
        snapshot = {"model": model_sd or cpu_copy(self.raw.state_dict()),
                    "optimizer": {} if self.fsdp else cpu_copy(self.opt.state_dict()),
                    "sharded": sharded, "scaler": scaler, "rng": rngs, "sampler": samplers,
                    "config": self.cfg.to_dict(), "world_size": dist.world_size,
                    "parallel": self.cfg.system.parallel, "loop": loop, **state.state_dict()}
        options = dict(keep_last=self.cfg.train.keep_last, is_best=is_best,
                       protect_before=state.streak_start, sharded=self.fsdp)
        self.thread = threading.Thread(target=self._write, args=(snapshot, state.step), kwargs=options,
                                       name="gptlab-checkpoint")
        self.thread.start()

    def _write(self, snapshot: dict, step: int, **options) -> None:
        try:
            save_checkpoint(self.run_dir, snapshot, step, **options)
        except BaseException as e:  # handed to every rank at the next save/drain
            self.error = e

    def way_back(self, state) -> Path | None:
        """After a divergence (collective): rename the checkpoints of the current non-finite streak to
        *.diverged (kept) and point model.pt/latest at the newest valid checkpoint before it, which
        --resume continues from; returns it (or None: model.pt/latest removed, naming nothing valid)."""
        self.drain()
        good = None
        if self.dist.is_main and state.streak_start is not None:
            for p in list_checkpoints(self.run_dir):
                if ckpt_step(p) >= state.streak_start:
                    p.rename(p.with_name(p.name + ".diverged"))
                    p.with_name(p.name + ".sha256").unlink(missing_ok=True)
            found = load_latest_valid(self.run_dir, warn=lambda *a: None)
            good = point_at(self.run_dir, found[1] if found else None)
        return dist_.gather_objects(good, self.dist)[0]  # rank 0's outcome on every rank: one line

    def drain(self) -> None:
        """Collective: wait for this rank's pending write, then agree with every rank on the outcome; a
        failed write stops every rank with the failing rank's one-line error."""
        self.close()
        error, self.error = self.error, None
        report = None
        if error is not None:  # (a user error?, its first line), sent to every rank
            first = (str(error).strip().splitlines() or [repr(error)])[0][:300]
            report = isinstance(error, UserError), first
        reports = dist_.gather_objects(report, self.dist)
        rank = next((r for r, item in enumerate(reports) if item is not None), None)
        if rank is None:
            return
        if error is not None and not isinstance(error, UserError):
            raise error  # a bug: its traceback on the rank that had it, the same one line on the others
        user_error, line = reports[rank]
        raise UserError(line if user_error else f"the checkpoint write on rank {rank} failed: {line}") \
            from error

    def close(self) -> None:
        """Join the writer (its error, if any, was reported by drain or the run is failing anyway)."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def point_at(run_dir: Path, good: Path | None) -> Path | None:
    """model.pt and latest name `good`, or are removed when there is none (never a bad file)."""
    ckpt_dir = checkpoint_dir(run_dir)
    if good is None:
        for name in ("model.pt", "model.pt.sha256", "latest"):
            (ckpt_dir / name).unlink(missing_ok=True)
        return None
    _link_or_copy(good, ckpt_dir / "model.pt")
    atomic_write_text(ckpt_dir / "latest", good.name + "\n")
    return good
