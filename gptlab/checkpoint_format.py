"""The checkpoint file format: names, RNG state, checksum verification and safe loading (what a resume
checks before it restores anything). Writing, the cadence and pruning are gptlab.checkpoint's."""

from __future__ import annotations

import math
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from gptlab.errors import UserError
from gptlab.files import sha256_file
from gptlab.layout import CHECKPOINT_DIR

CKPT_RE = re.compile(r"^ckpt_(\d{8})\.pt$")
FORMAT = "gptlab-ckpt-1"
FOREIGN = ("checkpoint {path} has format {format!r}, not {want!r}: it was written by another program "
           "or gptlab version; pass one written by this gptlab")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def ckpt_step(path: Path) -> int:
    return int(CKPT_RE.match(Path(path).name).group(1))


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
