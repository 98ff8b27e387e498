"""One checkpoint format, written so that a kill at any moment loses nothing but time.

In <run>/checkpoints/: ckpt_00001000.pt[.sha256] (the newest `keep_last` and their checksums), model.pt /
best.pt (hard links to the newest / lowest validation loss one), latest (the newest complete one's name).
Entries are tensors and plain containers (torch.load(weights_only=True) reads them); every file is
written atomically; a checkpoint that fails its .sha256 is reported and skipped for the newest valid one.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import random
import re
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils._pytree import tree_map

from gptlab import distributed as dist_
from gptlab import files
from gptlab.errors import UserError
from gptlab.files import atomic_write_text, sha256_file
from gptlab.layout import CHECKPOINT_DIR

CKPT_RE = re.compile(r"^ckpt_(\d{8})\.pt$")
FORMAT = "gptlab-ckpt-1"
FOREIGN = ("checkpoint {path} has format {format!r}, not {want!r}: it was written by another program "
           "or gptlab version; pass one written by this gptlab")


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


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


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


def ckpt_step(path: Path) -> int:
    return int(CKPT_RE.match(Path(path).name).group(1))


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


def rng_state(device: torch.device) -> dict:
    """Every generator the loop draws from, as tensors / ints / lists (weights_only-safe)."""
    py, npy = random.getstate(), np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [py[0], list(py[1]), py[2]],
             "numpy": [npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    _set_host_rng(state, random, np.random)
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _set_host_rng(state: dict, py_gen, np_gen) -> None:
    """The saved Python and numpy states (when present) into py_gen and np_gen."""
    if state.get("python") is not None:
        py = state["python"]
        py_gen.setstate((py[0], tuple(py[1]), py[2]))
    if state.get("numpy") is not None:
        npy = state["numpy"]
        np_gen.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), *npy[2:]))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Numbered checkpoints, newest first."""
    found = [p for p in checkpoint_dir(run_dir).glob("ckpt_*.pt") if CKPT_RE.match(p.name)]
    return sorted(found, key=ckpt_step, reverse=True)


def verify(path: Path) -> str | None:
    """None if the file matches its checksum, else what is wrong."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return "no checksum (the write never finished)"
    want = sidecar.read_bytes()[:200].decode("ascii", errors="replace").strip()
    if len(want) != 64:
        return "its .sha256 file is damaged"
    if sha256_file(path) != want:
        return "checksum mismatch (truncated or corrupted)"
    return None


def load_checkpoint(path: Path, map_location="cpu", check: bool = True) -> dict:
    """Load one checkpoint safely: checksum (when present), weights_only, format check."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} not found")
    if check and path.with_name(path.name + ".sha256").is_file():
        problem = verify(path)
        if problem:
            raise UserError(f"checkpoint {path} is damaged: {problem}; use an older one or retrain")
    try:
        # torch warns before refusing a foreign pickle; the refusal is the line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a damaged or foreign file
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load checkpoint {path}: not a valid gptlab/PyTorch checkpoint "
                        f"({first})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path} is not a gptlab checkpoint (no 'model' entry): pass a checkpoint "
                        "written by gptlab")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        raise UserError(f"{path}: its 'model' entry is not a state dict of tensors: pass a checkpoint "
                        "written by gptlab")
    if "step" in state and not _is_int(state["step"]):
        raise UserError(f"checkpoint {path} is damaged: its 'step' is {state['step']!r}, not a step "
                        "count >= 0: use an older checkpoint or retrain")
    if "format" in state and state["format"] != FORMAT:
        raise UserError(FOREIGN.format(path=path, format=str(state["format"])[:40], want=FORMAT))
    model = state["model"]
    bad = [k for k, v in model.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"checkpoint {path} holds non-finite weights (NaN or inf in {len(bad)} of "
                        f"{len(model)} tensors, e.g. {bad[0][:60]!r}: saved after the run diverged): "
                        f"{_earlier_checkpoint_hint(path, state.get('step'))}")
    return state


def _earlier_checkpoint_hint(path: Path, step) -> str:
    """The fix for a diverged checkpoint: the run's newest valid checkpoint before it, if any."""
    if Path(path).parent.name == CHECKPOINT_DIR and _is_int(step):
        for earlier in list_checkpoints(Path(path).parent.parent):
            if ckpt_step(earlier) < step and verify(earlier) is None:
                try:
                    load_checkpoint(earlier, check=False)
                except UserError:
                    continue
                return f"use the last valid one before it, {earlier}"
    return "use an earlier checkpoint of the run, or retrain with a lower --learning_rate"


def _is_int(v, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _rng_problem(r) -> str | None:
    """What is wrong with one rank's saved RNG state (the layout rng_state writes), or None."""
    if not isinstance(r, dict) or not isinstance(r.get("torch"), torch.Tensor):
        return "no torch generator state"
    if r["torch"].dtype != torch.uint8 or r["torch"].shape != torch.get_rng_state().shape:
        return "the torch generator state has the wrong size or type"
    if r.get("cuda") is not None and (not isinstance(r["cuda"], torch.Tensor)
                                      or r["cuda"].dtype != torch.uint8):
        return "the CUDA generator state is not a byte tensor"
    try:  # throwaway generators take the Python and numpy states, or show they are malformed
        _set_host_rng(r, random.Random(), np.random.RandomState())
    except Exception:  # noqa: BLE001 - any refusal means a malformed state
        return "the Python or numpy generator state is malformed"
    return None


def _optimizer_problem(o) -> str | None:
    """What is wrong with a torch optimizer.state_dict(), or None."""
    if (not isinstance(o, dict) or not isinstance(o.get("state"), dict)
            or not isinstance(o.get("param_groups"), list)):
        return "not an optimizer state (needs 'state' and 'param_groups')"
    ids = []
    for g in o["param_groups"]:
        if (not isinstance(g, dict) or not isinstance(g.get("params"), list)
                or not all(_is_int(i) for i in g["params"])):
            return "a param group without a list of parameter ids"
        if not all(isinstance(g.get(k), (int, float)) and math.isfinite(g[k]) for k in ("lr",)
                   if k in g):
            return "a param group with a non-finite learning rate"
        ids += g["params"]
    if len(set(ids)) != len(ids):
        return "a parameter id appears twice"
    for k, v in o["state"].items():
        if k not in ids or not isinstance(v, dict) or not all(isinstance(x, (torch.Tensor, int, float))
                                                              for x in v.values()):
            return f"state for parameter {k!r} is malformed"
    return None


def _structure_problem(state: dict) -> str | None:
    """The first entry a resume reads that is missing or malformed, as '<entry>: <what>'."""
    if state.get("format") != FORMAT:
        return f"'format' is {str(state.get('format'))[:40]!r}, not {FORMAT!r}"
    if not _is_int(state.get("step")):
        return f"'step' is {state.get('step')!r}, not a step count >= 0"
    start = state.get("nonfinite_streak_start")
    if start is not None and not (_is_int(start) and start <= state["step"]):
        return f"'nonfinite_streak_start' is {start!r}, not a step <= 'step'"
    if (not isinstance(state.get("config"), dict)
            or not isinstance(state["config"].get("model", {}), dict)):
        return "'config' is not a config object"
    for k in ("tokens", "nonfinite_skipped"):
        if k in state and not _is_int(state[k]):
            return f"{k!r} is {state[k]!r}, not a count >= 0"
    if "world_size" in state and not _is_int(state["world_size"], 1):
        return f"'world_size' is {state['world_size']!r}"
    if "best_val_loss" in state and not isinstance(state["best_val_loss"], (int, float)):
        return "'best_val_loss' is not a number"
    if state.get("sharded") is None:
        problem = _optimizer_problem(state.get("optimizer"))
        if problem:
            return f"'optimizer': {problem}"
    elif not isinstance(state.get("optimizer"), dict):
        return "'optimizer' is not a dict"
    if state.get("scaler") is not None and not isinstance(state["scaler"], dict):
        return "'scaler' is not a GradScaler state"
    rngs = state.get("rng")
    for r in (rngs if isinstance(rngs, list) else [rngs]) if rngs is not None else []:
        problem = _rng_problem(r)
        if problem:
            return f"'rng': {problem}"
    samplers = state.get("sampler")
    if samplers is not None and not (isinstance(samplers, list) and all(
            isinstance(s, dict) and all(_is_int(v) or (k == "kind" and isinstance(v, str))
                                        for k, v in s.items())
            for s in samplers)):
        return "'sampler' is not a list of sampler positions (non-negative integers)"
    loop = state.get("loop")
    if loop is not None and not (isinstance(loop, dict) and all(
            isinstance(loop.get(k), torch.Tensor) and loop[k].numel() == 1
            for k in ("loss_sum", "consec_bad"))
            and isinstance(loop.get("loss_count"), (int, float))):
        return "'loop' is not the loop's running sums"
    return None


def check_optimizer_fits(saved: dict, optimizer, path: Path) -> None:
    """A saved optimizer.state_dict() matches `optimizer` parameter by parameter (torch checks only group
    sizes; a moment of another shape fails mid-step, or goes unnoticed by a fused kernel)."""
    mine = [[tuple(p.shape) for p in g["params"]] for g in optimizer.param_groups]
    groups = [g["params"] for g in saved["param_groups"]]
    fix = "resume with the run's own config, or move this checkpoint aside to resume from an older one"
    if [len(g) for g in groups] != [len(g) for g in mine]:
        raise UserError(f"checkpoint {path} holds optimiser state for parameter groups of sizes "
                        f"{[len(g) for g in groups]}, this model has {[len(g) for g in mine]}: {fix}")
    for ids, shapes in zip(groups, mine):
        for i, shape in zip(ids, shapes):
            for k, v in saved["state"].get(i, {}).items():
                if isinstance(v, torch.Tensor) and v.dim() and tuple(v.shape) != shape:
                    raise UserError(f"checkpoint {path} is damaged: optimiser {k!r} of parameter {i} "
                                    f"has shape {tuple(v.shape)}, the parameter {shape}: {fix}")


def check_resumable(state: dict, path: Path) -> None:
    """Every entry a resume reads has the type and range it expects, else UserError before anything is
    restored."""
    problem = _structure_problem(state)
    if problem:
        raise UserError(f"checkpoint {path} is damaged or was not written by gptlab train ({problem}), "
                        "so it cannot be resumed: move it aside to resume from an older checkpoint, or "
                        f"use it with --init_from to start a new run from its weights")


def load_latest_valid(run_dir: Path, map_location="cpu", warn=print) -> tuple[dict, Path] | None:
    """Newest checkpoint that passes its checksum, loads and has a resume's structure; damaged ones are
    skipped."""
    for path in list_checkpoints(run_dir):
        problem = verify(path)
        if problem is None:
            try:
                state = load_checkpoint(path, map_location, check=False)
                problem = _structure_problem(state)
                if problem is None:
                    return state, path
                problem = f"damaged or not written by gptlab train ({problem})"
            except UserError as e:
                problem = str(e)
        warn(f"warning: skipping checkpoint {path.name}: {problem}")
    return None


def find_checkpoint(run_or_file: str | Path, which: str = "best") -> Path:
    """A checkpoint file from a run folder (best, else newest) or a file path."""
    p = Path(run_or_file)
    if p.is_file():
        return p
    ckpt_dir = checkpoint_dir(p)
    if not ckpt_dir.is_dir():
        raise UserError(f"{str(p)!r} is neither a checkpoint file nor a run folder with checkpoints/")
    order = ["best.pt", "model.pt"] if which == "best" else ["model.pt", "best.pt"]
    found = [ckpt_dir / name for name in order if (ckpt_dir / name).is_file()] + list_checkpoints(p)
    if found:
        return found[0]
    raise UserError(f"no checkpoint in {ckpt_dir}: train first, or pass a checkpoint file")
