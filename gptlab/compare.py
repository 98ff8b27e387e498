"""`gptlab compare`: ideas against the baseline under the same compute budget, over seeds.

    gptlab compare baseline=small idea=path/idea.py:Name [muon=path/opt.py:fn ...] --dataset D
                   --compute_class 6h --seeds 3 [--key value ...] [--NAME.key value ...] [--trust_code]

An entry is NAME=PRESET, NAME=FILE.py:Class (a model idea) or NAME=FILE.py:function (an optimiser idea);
`module:attr` works as well. Ideas take the preset and recipe of the first preset entry, the baseline.
Every entry trains for the same reference accelerator-hours at its own reference throughput, as
Languini does: steps = hours * 3600 * tokens_per_second / tokens_per_step (budget.steps_for_budget).
The baseline's figure is its config's (the published one of a Languini size, or --tokens_per_second);
any other entry's is measured here with `gptlab throughput` and scaled by the baseline's published /
measured-here ratio (measured as is on the reference accelerator), unless --NAME.tokens_per_second is
given. Each run is driven through the command table (`gptlab train`, `gptlab eval`), so compare uses
what a user types; its folders: OUT/plan.json, OUT/runs/NAME/seedS (run folders), OUT/throughput,
OUT/evals, OUT/compare.json, OUT/compare.png. Finished runs, measurements and evaluations are reused."""

from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from gptlab import optimizers, registry
from gptlab.config import parse_hours
from gptlab.config_files import build_config, parse_overrides
from gptlab.data.tokens import read_meta
from gptlab.errors import UserError
from gptlab.files import read_json, sha256_file
from gptlab.runtime import resolve_data_dir

REFERENCE_ACCELERATOR = "RTX 3090"  # Languini's budgets are hours of this GPU
PLAN_FILE, RESULT_FILE, PLOT_FILE = "plan.json", "compare.json", "compare.png"
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
OWN_FLAGS = {
    "seeds": "3",
    "out": "",
    "trust_code": "false",
    "tokens_per_second": "",
    "eval_last_n": "128",
    "test_split": "test",
    "compute_class": "",
}
RUN_ONLY_KEYS = {
    "out_dir",
    "name",
    "resume",
    "overwrite",
    "seed",
    "max_iters",
    "lr_decay_iters",
    "comment",
    "log_root",
    "relative_log_path",
    "init_from",
    "eval_only",
}
USAGE = (
    "usage: gptlab compare baseline=PRESET NAME=FILE.py:Class|FILE.py:function ... --dataset D "
    "--compute_class 6h [--seeds 3] [--out DIR] [--key value ...] [--NAME.key value ...]\n"
    "       [--trust_code]\n"
    "       gptlab compare RUN [RUN ...] | COMPARE_DIR   (tabulate runs that exist)"
)


@dataclass
class Entry:
    """One line of the table: a preset, or the baseline's preset with a model or optimiser idea."""

    name: str
    spec: str
    kind: str  # preset | model | optimizer
    preset: str = ""
    overrides: dict = field(default_factory=dict)  # this entry's own --NAME.key values
    files: dict = field(default_factory=dict)  # code the entry runs: path -> sha256

    def values(self, shared: dict) -> dict:
        """The config overrides of this entry: the shared ones, its own, its idea."""
        values = {**shared, **self.overrides}
        if self.kind != "preset":
            values[self.kind] = self.spec
        return values

    def config_argv(self, shared: dict) -> list[str]:
        """The `gptlab train`/`throughput` arguments of this entry, without run-folder or seed keys."""
        return [self.preset] + [f"--{k}={v}" for k, v in self.values(shared).items()]


# ------------------------------------------------------------------------------ arguments


def split_argv(argv: list[str]) -> tuple[list[str], dict, dict, dict]:
    """(positionals, compare's own options, shared --key values, {entry name: {key: value}})."""
    first_flag = next((i for i, a in enumerate(argv) if a.startswith("--")), len(argv))
    positionals, rest = argv[:first_flag], argv[first_flag:]
    own, scoped, plain = dict(OWN_FLAGS), {}, []
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            raise UserError(
                f"unexpected argument {token!r} after the options: entries (NAME=SPEC) come first, "
                f"then --key value options"
            )
        key, eq, value = token[2:].partition("=")
        bare = key.replace("-", "_")
        takes_next = not eq and i + 1 < len(rest) and not rest[i + 1].startswith("--")
        if (
            bare == "trust_code"
            and takes_next
            and rest[i + 1].lower() not in ("true", "false", "1", "0")
        ):
            takes_next = False
        value = value if eq else (rest[i + 1] if takes_next else "true")
        i += 1 + takes_next
        if "." in bare:
            name, _, sub = bare.partition(".")
            scoped.setdefault(name, []).extend([f"--{sub}", value])
        elif bare in OWN_FLAGS:
            own[bare] = value
        else:
            plain.extend([f"--{bare}", value])
    # Keys gptlab does not know may be an idea's options: its build_config keeps or refuses them.
    shared = parse_overrides(plain, options=True)
    return positionals, own, shared, {n: parse_overrides(v, options=True) for n, v in scoped.items()}


def code_kind(spec: str) -> tuple[str, Path]:
    """('model' | 'optimizer', the file) of FILE.py:Name or module:Name, read with ast (nothing runs)."""
    target, _, attr = spec.rpartition(":")
    path = Path(target)
    if not target.endswith(".py"):
        try:
            found = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.origin or not found.origin.endswith(".py"):
            raise UserError(
                f"{spec!r}: no Python file or importable module {target!r}: give FILE.py:Name "
                "or module.path:Name"
            )
        path = Path(found.origin)
    if not path.is_file():
        raise UserError(f"{spec!r}: file {target} not found: check the path")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not readable Python ({e.__class__.__name__}): fix the file") from None
    for node in tree.body:
        if getattr(node, "name", None) == attr:
            if isinstance(node, ast.ClassDef):
                return "model", path
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return "optimizer", path
    names = [
        n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    close = difflib.get_close_matches(attr, names, n=1)
    raise UserError(
        f"{path} defines no class or function {attr!r} at its top level: "
        + (f"did you mean {target}:{close[0]}? " if close else "")
        + "name a model class "
        "(an nn.Module) or an optimiser function (model, config) -> optimizer"
    )


def parse_entries(positionals: list[str], scoped: dict) -> list[Entry]:
    entries: list[Entry] = []
    for token in positionals:
        name, eq, spec = token.partition("=")
        if "." in name and eq:  # NAME.key=value: an entry's own override
            entry_name, _, key = name.partition(".")
            scoped.setdefault(entry_name, {}).update(parse_overrides([f"--{key}", spec], options=True))
            continue
        if not eq or not NAME_RE.fullmatch(name) or not spec:
            raise UserError(
                f"entry {token!r}: write NAME=PRESET or NAME=FILE.py:Class (NAME: a letter, then "
                "letters, digits, '-' or '_', at most 40)"
            )
        if any(e.name == name for e in entries):
            raise UserError(f"entry name {name!r} is given twice: give each entry its own name")
        if ":" in spec:
            kind, path = code_kind(spec)
            entries.append(Entry(name, spec, kind, files={str(path): sha256_file(path)}))
        else:
            entries.append(Entry(name, spec, "preset", preset=spec))
    presets = [e for e in entries if e.kind == "preset"]
    if not presets:
        raise UserError(
            "no preset entry: the first one (e.g. baseline=small) is the baseline whose shape and "
            "recipe the ideas take"
        )
    for e in entries:
        e.preset = e.preset or presets[0].preset
        e.overrides = scoped.pop(e.name, {})
    if scoped:
        raise UserError(
            f"--{next(iter(scoped))}.KEY names no entry: the entries are "
            f"{', '.join(e.name for e in entries)}"
        )
    return sorted(entries, key=lambda e: e is not presets[0])  # the baseline first


# ------------------------------------------------------------------------------ the plan


@dataclass
class Plan:
    entries: list[Entry]
    shared: dict
    hours: float
    seeds: list[int]
    out: Path
    data_dir: Path
    test_split: str
    last_n: int
    baseline_tps: float
    baseline_source: str  # published (the preset's figure) or given (--tokens_per_second)
    trust_code: bool
    vocab_size: int
    configs: dict = field(default_factory=dict)  # entry name -> built (unresolved) Config

    @property
    def baseline(self) -> Entry:
        return self.entries[0]

    def run_dir(self, entry: Entry, seed: int) -> Path:
        return self.out / "runs" / entry.name / f"seed{seed}"


def _default_out(entries: list[Entry], hours: float, log_root: str) -> Path:
    return Path(log_root) / "compare" / f"{hours:g}h" / "_vs_".join(e.name for e in entries)


def _checked_data(shared: dict, preset_config, split: str) -> tuple[Path, dict]:
    data_dir = resolve_data_dir(preset_config.data.dataset, preset_config.data.data_root)
    meta = read_meta(data_dir)
    if split not in meta["splits"]:
        raise UserError(
            f"dataset {data_dir} has no split {split!r} to test on (it has "
            f"{', '.join(meta['splits'])}): pass --test_split with one of those"
        )
    return data_dir, meta


def make_plan(argv: list[str]) -> Plan:
    """Everything checked before anything is measured, trained or written."""
    positionals, own, shared, scoped = split_argv(argv)
    for key in RUN_ONLY_KEYS & set(shared) - {"seed"}:
        raise UserError(
            f"--{key} is set by compare for each run: drop it (use --out for compare's folder)"
        )
    entries = parse_entries(positionals, scoped)
    if not own["compute_class"]:
        raise UserError(
            "--compute_class is required: the accelerator-hours every entry trains for, e.g. 6h"
        )
    hours = parse_hours(own["compute_class"])
    seeds = count(own["seeds"], "--seeds")
    for e in entries:
        for key in RUN_ONLY_KEYS & set(e.overrides):
            raise UserError(f"--{e.name}.{key} is set by compare for each run: drop it")
    cc = own["compute_class"]
    base_cfg = build_config(
        entries[0].preset, None, {**shared, **entries[0].overrides, "compute_class": cc}, check=False
    )
    tps = float(own["tokens_per_second"] or base_cfg.train.tokens_per_second or 0)
    if not tps > 0:
        raise UserError(
            f"the baseline {entries[0].name}={entries[0].spec} has no published reference throughput: "
            "pass --tokens_per_second T (its tokens/s on the reference GPU, from `gptlab throughput`)"
        )
    shape_keys = {"n_layer", "n_head", "n_embd", "head_dim", "mlp_dim", "block_size", "vocab_size"}
    if not own["tokens_per_second"] and shape_keys & {*shared, *entries[0].overrides}:
        print(
            f"note: {tps:,.0f} tokens/s is the published figure of {entries[0].preset}'s own shape; "
            "the shape given here differs: pass --tokens_per_second for its reference figure"
        )
    # Each entry's config as its runs build it (the throughput here stands in until its own is known).
    budget = {"compute_class": cc, "tokens_per_second": tps}
    configs = {e.name: build_config(e.preset, None, {**budget, **e.values(shared)}) for e in entries}
    for e in entries:  # an idea's file runs now, so a broken one stops everything before a write
        if e.kind == "model":
            registry.resolve_model(copy.deepcopy(configs[e.name].model))
        elif e.kind == "optimizer":
            optimizers.load_idea(e.spec)
    base_cfg = configs[entries[0].name]
    data_dir, meta = _checked_data(shared, base_cfg, own["test_split"])
    last_n = count(own["eval_last_n"], "--eval_last_n")
    for e in entries:
        block = configs[e.name].model.block_size
        if block % last_n:
            raise UserError(
                f"--eval_last_n {last_n} does not divide {e.name}'s block_size {block}: "
                f"pass --eval_last_n {block // 4 or 1}"
            )
    out = Path(own["out"]) if own["out"] else _default_out(entries, hours, base_cfg.log.log_root)
    first_seed = base_cfg.train.seed
    return Plan(
        entries,
        shared,
        hours,
        list(range(first_seed, first_seed + seeds)),
        out,
        data_dir,
        own["test_split"],
        last_n,
        tps,
        "given" if own["tokens_per_second"] else "published",
        own["trust_code"].lower() in ("true", "1"),
        int(meta["vocab_size"]),
        configs,
    )


def count(text: str, flag: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{flag} {text!r} must be a positive whole number")
    return int(text)


def plan_record(plan: Plan) -> dict:
    """What plan.json keeps, to refuse reusing runs of another entry under the same name."""
    return {
        e.name: {"spec": e.spec, "kind": e.kind, "argv": e.config_argv(plan.shared), "files": e.files}
        for e in plan.entries
    }


def budget_record(plan: Plan) -> dict:
    """What every run of a compare folder shares: the accelerator-hours and the dataset."""
    return {"hours": plan.hours, "dataset": str(plan.data_dir.resolve())}


def check_out_folder(plan: Plan) -> dict:
    """The folder's earlier plan ({} for a new folder); UserError for a folder compare did not make,
    a link, or an entry name that now means something else."""
    out = plan.out
    if out.is_symlink():
        raise UserError(
            f"--out {out} is a symbolic link: compare writes only into a real folder; pass another --out"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / PLAN_FILE).is_file():
        raise UserError(
            f"--out {out} is not empty and holds no {PLAN_FILE}: compare writes only into its own "
            "folders; pass a new --out"
        )
    old = read_json(out / PLAN_FILE, "compare plan") if (out / PLAN_FILE).is_file() else {}
    if not isinstance(old, dict):
        raise UserError(f"{out / PLAN_FILE} is not a compare plan: pass a new --out")
    if old.get("budget", budget_record(plan)) != budget_record(plan):
        raise UserError(
            f"{out} holds runs of another budget or dataset ({old['budget']}): pass a new --out"
        )
    for name, now in plan_record(plan).items():
        before = (old.get("entries") or {}).get(name)
        if before is None or before == now:
            continue
        changed = [p for p, h in now["files"].items() if before.get("files", {}).get(p) not in (None, h)]
        what = f"its file {changed[0]} changed since" if changed else "it differs from the entry that"
        raise UserError(
            f"entry {name!r}: {what} trained the runs in {out}: pass a new --out (or a new name), "
            "or restore the entry"
        )
    return old
