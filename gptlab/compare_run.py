"""`gptlab compare`, the work: measure each entry's throughput, train every entry and seed to the
same reference accelerator-hours, evaluate each final checkpoint on the test split; and tabulate runs
that exist. Every step is a `gptlab` command run through `command` (the command table, given by the
caller), so compare uses what a user types and reads what those commands write."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Callable

from gptlab.budget import steps_for_budget
from gptlab.checkpoint import find_checkpoint
from gptlab.compare import (
    PLAN_FILE,
    PLOT_FILE,
    REFERENCE_ACCELERATOR,
    RESULT_FILE,
    Entry,
    Plan,
    budget_record,
    check_out_folder,
    plan_record,
)
from gptlab.compare_report import TEST_KEYS, collect, entry_result, write_outputs
from gptlab.config import is_builtin
from gptlab.errors import UserError
from gptlab.files import atomic_write_json, folder_lock, read_json, sha256_file
from gptlab.resolve import resolve_batch
from gptlab.runs import load_run

# ------------------------------------------------------------------------------ steps


def run_command(
    command: Callable[[list[str]], int], argv: list[str], what: str, quiet: bool = False
) -> None:
    """One `gptlab` command through the command table; its UserError names the entry and seed."""
    try:
        with contextlib.ExitStack() as stack:
            if quiet:  # its progress lines; a failure still surfaces as its one-line error
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            code = command(argv)
    except UserError as e:
        raise UserError(f"{what}: {e}") from None
    if code:
        raise UserError(f"{what}: `gptlab {' '.join(argv[:2])} ...` exited with {code}")


def measure(plan: Plan, entry: Entry, command) -> dict:
    """`gptlab throughput` of the entry here, kept in OUT/throughput/NAME.json keyed by its arguments."""
    path = plan.out / "throughput" / f"{entry.name}.json"
    argv = entry.config_argv(plan.shared)
    key = hashlib.sha256(json.dumps([argv, entry.files]).encode()).hexdigest()[:16]
    if path.is_file():
        cached = read_json(path, "throughput record")
        if isinstance(cached, dict) and cached.get("key") == key:
            return cached
    cfg = plan.configs[entry.name]
    extra = [] if cfg.model.vocab_size else [f"--vocab_size={plan.vocab_size}"]
    if cfg.system.compile not in ("auto",):
        extra.append(f"--compile={cfg.system.compile}")
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(f".{entry.name}.raw.json")
    print(f"measuring {entry.name}'s throughput here (gptlab throughput) ...", flush=True)
    run_command(
        command,
        ["throughput", *argv, *extra, "--device", cfg.system.device, "--json", str(raw)],
        f"throughput of {entry.name}",
        quiet=True,
    )
    result = read_json(raw, "throughput result")
    raw.unlink()
    record = {
        "key": key,
        "device": result["device"],
        "tokens_per_second": result["best"]["tokens_per_sec"],
        "batch": result["best"]["batch"],
        "flops_per_token": result.get("flops_per_token"),
        "params": result.get("params"),
    }
    atomic_write_json(path, record)
    return record


def reference_throughputs(plan: Plan, command) -> dict:
    """{name: {tokens_per_second, source, measured_here, ...}} as the module docstring says."""
    out = {plan.baseline.name: {"tokens_per_second": plan.baseline_tps, "source": plan.baseline_source}}
    given = {
        e.name: float(e.overrides["tokens_per_second"])
        for e in plan.entries
        if "tokens_per_second" in e.overrides
    }
    base_here = measure(plan, plan.baseline, command)  # also the baseline's parameters and FLOPs
    out[plan.baseline.name].update(measured_here=base_here)
    for e in plan.entries[1:]:
        here = measure(plan, e, command)
        if e.name in given:
            out[e.name] = {"tokens_per_second": given[e.name], "source": "given", "measured_here": here}
        elif REFERENCE_ACCELERATOR in str(here["device"]):
            out[e.name] = {
                "tokens_per_second": here["tokens_per_second"],
                "source": "measured",
                "measured_here": here,
            }
        else:
            ratio = plan.baseline_tps / base_here["tokens_per_second"]
            out[e.name] = {
                "tokens_per_second": here["tokens_per_second"] * ratio,
                "source": "scaled",
                "measured_here": here,
                "scale": ratio,
            }
    if plan.baseline.name in given:
        out[plan.baseline.name].update(tokens_per_second=given[plan.baseline.name], source="given")
    return out


def final_checkpoint(run_dir: Path, steps: int) -> Path:
    return run_dir / "checkpoints" / f"ckpt_{steps:08d}.pt"


def train_run(plan: Plan, entry: Entry, seed: int, tps: float, steps: int, command) -> Path:
    """Train one (entry, seed) to its final step, continuing an interrupted run; the final checkpoint."""
    run_dir = plan.run_dir(entry, seed)
    final = final_checkpoint(run_dir, steps)
    if final.is_file():
        return final
    argv = [
        "train",
        *entry.config_argv(plan.shared),
        f"--compute_class={plan.hours:g}h",
        f"--tokens_per_second={tps!r}",
        f"--seed={seed}",
        f"--out_dir={run_dir}",
    ]
    if any((run_dir / "checkpoints").glob("ckpt_*.pt")):
        # The idea's code is the file named in this command (check_out_folder: unchanged since it
        # trained).
        argv += ["--resume"] + (["--trust_code"] if entry.kind != "preset" else [])
    elif run_dir.exists() and any(run_dir.iterdir()):
        argv.append("--overwrite")  # stopped before its first checkpoint: moved aside, nothing deleted
    print(f"training {entry.name} seed {seed}: {steps:,} steps -> {run_dir}", flush=True)
    run_command(command, argv, f"entry {entry.name} seed {seed}")
    if not final.is_file():
        raise UserError(
            f"entry {entry.name} seed {seed}: training stopped before step {steps} ({run_dir}): "
            "run the same compare again to continue it"
        )
    return final


def evaluate_run(plan: Plan, entry: Entry, seed: int, checkpoint: Path, command) -> dict:
    """`gptlab eval` of the final checkpoint on the test split (cached in OUT/evals/NAME/seedS.json)."""
    path = plan.out / "evals" / entry.name / f"seed{seed}.json"
    identity = checkpoint_identity(checkpoint)
    if path.is_file():
        cached = read_json(path, "evaluation")
        if isinstance(cached, dict) and cached.get("checkpoint_identity") == identity:
            return cached
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        "eval",
        "--checkpoint_file",
        str(checkpoint),
        "--eval_data_split",
        plan.test_split,
        "--last_n",
        str(plan.last_n),
        "--device",
        plan.configs[entry.name].system.device,
        "--json",
        str(path),
    ]
    if entry.kind != "preset":  # code the user named in this very command
        argv.append("--trust_code")
    run_command(command, argv, f"test evaluation of {entry.name} seed {seed}", quiet=True)
    metrics = read_json(path, "evaluation")
    metrics["checkpoint_identity"] = identity
    atomic_write_json(path, metrics)
    return metrics


def checkpoint_identity(checkpoint: Path) -> str:
    """The checkpoint's sha256: its checksum sidecar's, else hashed here (a retrained run differs)."""
    sidecar = checkpoint.with_name(checkpoint.name + ".sha256")
    if sidecar.is_file():
        return sidecar.read_text(encoding="ascii", errors="replace").split()[0]
    return sha256_file(checkpoint)


def steps_of(plan: Plan, entry: Entry, tps: float) -> int:
    cfg = plan.configs[entry.name]
    return steps_for_budget(plan.hours, tps, resolve_batch(cfg, 1).global_batch, cfg.model.block_size)


def run_plan(plan: Plan, command) -> tuple[dict, list[Path]]:
    """Measure, train and evaluate every entry and seed; (the results, the files written: compare.json
    and the plot)."""
    old = check_out_folder(plan)
    with folder_lock(plan.out, "compare folder"):
        entries_record = dict(old.get("entries") or {}, **plan_record(plan))
        atomic_write_json(
            plan.out / PLAN_FILE,
            {
                "entries": entries_record,
                "order": [e.name for e in plan.entries],
                "budget": budget_record(plan),
            },
        )
        throughput = reference_throughputs(plan, command)
        steps = {
            e.name: steps_of(plan, e, throughput[e.name]["tokens_per_second"]) for e in plan.entries
        }
        evals: dict = {e.name: {} for e in plan.entries}
        for seed in plan.seeds:  # seed by seed: an interrupted compare already has whole rows
            for e in plan.entries:
                final = train_run(
                    plan, e, seed, throughput[e.name]["tokens_per_second"], steps[e.name], command
                )
                evals[e.name][seed] = evaluate_run(plan, e, seed, final, command)
        result = collect(plan, throughput, steps, evals)
        return result, write_outputs(result, plan.out, RESULT_FILE, PLOT_FILE)


# ------------------------------------------------------------------------------ runs that exist


def _group_name(run_dir: Path) -> str:
    """seedS folders take their parent's name; other folders drop their _seedN part."""
    if re.fullmatch(r"seed\d+", run_dir.name):
        return run_dir.parent.name
    return re.sub(r"_seed\d+", "", run_dir.name) or run_dir.name


def existing_runs(paths: list[str]) -> dict[str, list[Path]]:
    """{entry name: run folders} of RUN... arguments: run folders grouped by their config without the
    seed, and a compare folder expanded to its entries' runs."""
    folders: list[Path] = []
    for p in map(Path, paths):
        if (p / PLAN_FILE).is_file():
            order = read_json(p / PLAN_FILE, "compare plan").get("order") or []
            folders += [
                f for name in order for f in sorted((p / "runs" / name).glob("seed*")) if f.is_dir()
            ]
        else:
            folders.append(p)
    groups: dict[str, tuple[str, list[Path]]] = {}
    for folder in folders:
        config = load_run(folder).config.to_dict()
        config["train"] = {
            k: v for k, v in config["train"].items() if k not in ("seed", "resume", "overwrite")
        }
        key = json.dumps({k: v for k, v in config.items() if k != "log"}, sort_keys=True)
        name, runs = groups.setdefault(key, (_group_name(folder), []))
        runs.append(folder)
    tokens = [name.split("_") for name, _ in groups.values()]
    common = set(tokens[0]).intersection(*map(set, tokens[1:])) if len(tokens) > 1 else set()
    named: dict[str, list[Path]] = {}
    for parts, (name, runs) in zip(
        tokens, groups.values()
    ):  # what tells the entries apart, never cut short
        label = "_".join(p for p in parts if p not in common) or name
        named[label if label not in named else f"{label}#{len(named) + 1}"] = runs
    return named


def tabulate(paths: list[str], own: dict, command) -> dict:
    """Evaluate every run's final checkpoint on the test split and tabulate them; nothing trains."""
    groups = existing_runs(paths)
    trusted = own["trust_code"].lower() in ("true", "1")
    for folder in (f for folders in groups.values() for f in folders):
        model = load_run(folder).config.model.model
        if not is_builtin(model) and not trusted:  # refused before any run is evaluated
            raise UserError(
                f"run {folder} carries code ({model.rsplit(':', 1)[0]}): evaluating it runs that "
                "code, which gptlab does only with --trust_code; read it, then pass --trust_code"
            )
    entries, baseline_runs, seeds = [], None, set()
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, folders) in enumerate(groups.items()):
            runs = []
            for folder in folders:
                cfg = load_run(folder).config
                final = final_checkpoint(folder, cfg.train.max_iters)
                checkpoint = final if final.is_file() else find_checkpoint(folder, "last")
                out = Path(scratch) / f"{index}_{len(runs)}.json"
                argv = [
                    "eval",
                    "--checkpoint_file",
                    str(checkpoint),
                    "--eval_data_split",
                    own["test_split"],
                    "--last_n",
                    own["eval_last_n"],
                    "--json",
                    str(out),
                ]
                argv += ["--trust_code"] if trusted else []
                run_command(command, argv, f"test evaluation of {folder}", quiet=True)
                metrics = read_json(out, "evaluation")
                runs.append(
                    {
                        "seed": cfg.train.seed,
                        "run_dir": str(folder),
                        "checkpoint": str(checkpoint),
                        "test": {k: metrics[k] for k in TEST_KEYS if k in metrics},
                    }
                )
                seeds.add(cfg.train.seed)
            per_step = resolve_batch(cfg, 1).global_batch * cfg.model.block_size
            source = {"tokens_per_second": cfg.train.tokens_per_second, "source": "config.json"}
            entries.append(
                entry_result(
                    name,
                    runs,
                    baseline_runs,
                    spec=str(folders[0]),
                    kind="run",
                    tokens_per_second=source,
                    steps=cfg.train.max_iters,
                    tokens=cfg.train.max_iters * per_step,
                )
            )
            baseline_runs = baseline_runs or runs
    return {
        "compute_class": cfg.train.compute_class or "free",
        "hours": None,
        "dataset": cfg.data.dataset,
        "test_split": own["test_split"],
        "last_n": int(own["eval_last_n"]),
        "seeds": sorted(seeds),
        "baseline": next(iter(groups)),
        "entries": entries,
    }


def tabulate_into(paths: list[str], own: dict, command) -> tuple[dict, list[Path]]:
    """tabulate(), and with --out its compare.json and plot written there."""
    out = Path(own["out"]) if own["out"] else None
    if out is not None and (out.is_symlink() or (out.exists() and not out.is_dir())):
        raise UserError(f"--out {out} must be a folder (not a link or a file)")
    result = tabulate(paths, own, command)
    if out is None:
        return result, []
    out.mkdir(parents=True, exist_ok=True)
    return result, write_outputs(result, out, RESULT_FILE, PLOT_FILE)
