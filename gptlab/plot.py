"""`gptlab plot`: charts from runs' metrics.jsonl (one JSON record per line: kind train|eval|grads, step,
tokens = training tokens of the step, accel_hours, time_s, the metrics): several runs' eval metric
against steps, tokens or accelerator-hours, or `--kind train`: train loss and ms/step panels. matplotlib
(optional) is driven through its object API: no pyplot state, no display."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from gptlab.args import ArgParser
from gptlab.errors import UserError
from gptlab.files import check_output_file
from gptlab.layout import METRICS_FILE

X_KEYS = {"steps": "step", "tokens": "tokens", "hours": "accel_hours"}
X_LABELS = {"steps": "step", "tokens": "tokens", "hours": "accelerator-hours (reference throughput)"}
_LABEL_MAX = 60
# in every image plot writes (PNG Software / PDF, SVG Creator): it may replace those
PLOT_TAG = "gptlab plot"


def metrics_path(run: str | Path) -> Path:
    """A run folder or a metrics file itself."""
    p = Path(run)
    return p / METRICS_FILE if p.is_dir() else p


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl. A line that does not parse is skipped with a warning
    (a run killed mid-write leaves a fragment, mid-file once resumed); a partial last line silently."""
    path = metrics_path(run)
    if not path.is_file():
        raise UserError(f"no metrics file at {str(path)!r}: pass a run folder written by `gptlab train`")
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    lines = [(n, line) for n, line in enumerate(path.read_text("utf-8", errors="replace").split("\n"),
                                                1) if line.strip()]
    for lineno, line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and "kind" in rec and "step" in rec:
            records.append(rec)
        else:
            bad.append(lineno)
    if not records:
        raise UserError(f"{path} holds no metrics records: the run logged nothing yet, or this is not a "
                        "metrics file")
    if bad and bad[-1] == lines[-1][0]:
        bad.pop()  # a partial last line is normal while a run is writing or after a kill
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        print(f"warning: {path}: skipped {len(bad)} unreadable line(s) ({shown})", file=sys.stderr)
    return records


def wrap_label(label: str, width: int = _LABEL_MAX) -> str:
    """The label on lines of at most `width` characters, broken after `_`; no part is ever cut."""
    lines = [""]
    for part in label.split("_"):
        if lines[-1] and len(lines[-1]) + 1 + len(part) > width:
            lines[-1] += "_"
            lines.append(part)
        else:
            lines[-1] += f"_{part}" if lines[-1] else part
    return "\n".join(lines)


def short_labels(runs: list[str | Path]) -> list[str]:
    """Legend labels: the `_`-joined parts of the run names (and class/preset folders) that
    differ between the runs; shared hyperparameters say nothing in a legend."""
    folders = [(p.parent if p.name == METRICS_FILE or p.is_file() else p).resolve()
               for p in map(Path, runs)]
    tokens = [[t for t in [f.parent.parent.name, f.parent.name,
                           *f.name.split("_")] if t] for f in folders]
    common = set(tokens[0]).intersection(*map(set, tokens[1:])) if len(runs) > 1 else set()
    labels = [("_".join(t for t in toks if t not in common) if len(runs) > 1 else "") or f.name or str(r)
              for r, f, toks in zip(runs, folders, tokens)]
    # A legend wider than the chart is unreadable, and a cut one hides what tells runs apart: wrap.
    out = [wrap_label(lab) for lab in labels]
    # Identical labels (the same run twice) get numbered.
    return [f"{lab} #{out[:i].count(lab) + 1}" if out.count(lab) > 1 else lab
            for i, lab in enumerate(out)]


def _x_value(rec: dict, x: str, tokens_per_second: float | None, run: str | Path) -> float:
    # hours from a throughput given here
    key = "tokens" if x == "hours" and tokens_per_second else X_KEYS[x]
    v = rec.get(key)
    if v is None and key == "accel_hours":
        raise UserError(f"run {str(run)!r} has no accelerator-hours (trained without "
                        "--tokens_per_second): pass --tokens_per_second T to compute them, or plot "
                        "with --x steps or --x tokens")
    if v is None:
        raise UserError(f"{metrics_path(run)}: records lack {key!r}: plot with --x steps")
    return v if key == X_KEYS[x] else v / tokens_per_second / 3600


def series(records: list[dict], kind: str, metric: str, x: str = "steps", split: str | None = None,
           tokens_per_second: float | None = None, run: str | Path = "") -> dict[str | None,
                                                                                 tuple[list, list]]:
    """{split (None for train): (xs, ys)} for one run, sorted by step; a step logged twice (a
    resumed run re-logs the steps after its checkpoint) keeps its last record."""
    chosen = [r for r in records if r.get("kind") == kind]
    if split is not None:
        chosen = [r for r in chosen if r.get("split") == split]
    if not chosen:
        what = f"{kind} records" + (f" for split {split!r}" if split else "")
        have = sorted({str(r.get("split")) for r in records if r.get("kind") == kind})
        hint = f" (splits present: {', '.join(have)})" if have and split else ""
        raise UserError(f"{metrics_path(run)} has no {what}{hint}: check --kind/--split, or wait for "
                        "the first eval")
    if not any(metric in r for r in chosen):
        avail = sorted({k for r in chosen for k in r} - {"kind", "step", "tokens", "accel_hours",
                                                         "time_s", "split"})
        raise UserError(f"{metrics_path(run)}: no {kind} metric {metric!r}; available: "
                        f"{', '.join(avail)}")
    by_split: dict[str | None, dict[int, dict]] = {}
    for r in chosen:
        if r.get(metric) is None:
            continue
        key = r.get("split") if kind == "eval" else None
        by_split.setdefault(key, {})[int(r["step"])] = r
    out: dict[str | None, tuple[list, list]] = {}
    for key, steps in by_split.items():
        try:
            ys = {s: float(steps[s][metric]) for s in sorted(steps)}
        except (TypeError, ValueError):
            raise UserError(f"{metrics_path(run)}: {metric!r} is not a number: choose a numeric "
                            "--metric") from None
        # a diverged step would flatten the whole axis
        kept = [s for s, y in ys.items() if math.isfinite(y)]
        out[key] = ([_x_value(steps[s], x, tokens_per_second, run) for s in kept], [ys[s] for s in kept])
    return out


def make_figure(runs: list[str | Path], x: str = "steps", metric: str = "loss", kind: str = "eval",
                split: str | None = None, tokens_per_second: float | None = None, logy: bool = False):
    """A matplotlib Figure: one line per run (and eval split) on one chart; with
    kind='train', a second panel shows ms per step. Lines carry the plotted data."""
    if not runs:
        raise UserError("name at least one run folder to plot")
    if x not in X_KEYS:
        raise UserError(f"--x {x!r}: choose one of {', '.join(X_KEYS)}")
    if kind not in ("eval", "train"):
        raise UserError(f"--kind {kind!r}: choose eval or train")
    if tokens_per_second is not None and not tokens_per_second > 0:
        raise UserError(f"--tokens_per_second must be positive, got {tokens_per_second}")
    all_records = [read_metrics(r) for r in runs]
    labels = short_labels(runs)
    panels = [(metric, metric)] + ([("ms_per_step", "ms per step")] if kind == "train" else [])
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(9, 4.5 * len(panels)), dpi=100, layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (key, ylabel) in zip(axes, panels):
        for run, records, label in zip(runs, all_records, labels):
            lines = series(records, kind, key, x, split, tokens_per_second, run)
            several = len(lines) > 1  # several eval splits: name each line's split
            for sp, (xs, ys) in lines.items():
                ax.plot(xs, ys, label=f"{label} ({sp})" if several else label,
                        marker="o" if kind == "eval" and len(xs) < 30 else None, markersize=3)
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel(f"{kind} {ylabel}" if key == metric else ylabel)
        ax.grid(True, alpha=0.3)
        if logy:
            ax.set_yscale("log")
        ax.legend(fontsize="small")
    axes[0].set_title(f"{kind} {metric}{f' ({split})' if split else ''} vs {X_LABELS[x]}")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="gptlab plot",
                  description="Plot runs' metrics.jsonl: several runs on one chart (eval metric "
                  "vs steps, tokens or accelerator-hours), or --kind train for train loss and ms/step "
                  "over iterations.",
                  epilog="example: gptlab plot logs/6h/small/RUN_A logs/6h/small/RUN_B --x hours "
                  "--metric normalised_ppl --out compare.png")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder (or its metrics.jsonl)")
    p.add_argument("--x", choices=list(X_KEYS), default="steps", help="x axis (default steps)")
    p.add_argument("--metric", default="loss",
                   help="y: loss, normalised_ppl, ppl, bpb, acc1, acc10 (eval); lr, mfu... (train)")
    p.add_argument("--kind", choices=("eval", "train"), default="eval",
                   help="eval (default) or train (+ step-time panel)")
    p.add_argument("--split", default=None, help="eval split to plot (default: every split logged)")
    p.add_argument("--tokens_per_second", type=float, default=None,
                   help="reference throughput for hours from tokens")
    p.add_argument("--logy", action="store_true", help="logarithmic y axis")
    p.add_argument("--out", required=True, help="image file to write (.png, .pdf or .svg)")
    p.add_argument("--trust_code", action="store_true",
                   help="accepted as by every command that loads runs; "
                   "plotting reads metrics only and runs no code")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--out {args.out!r}: give a file ending in .png, .pdf or .svg")
    check_output_file(out, "--out", PLOT_TAG, make_parents=True)  # before the runs are read
    fig = make_figure(args.runs, x=args.x, metric=args.metric, kind=args.kind, split=args.split,
                      tokens_per_second=args.tokens_per_second, logy=args.logy)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software" if out.suffix.lower() == ".png" else "Creator": PLOT_TAG})
    print(f"wrote {out}")
    return 0
