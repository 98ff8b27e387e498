"""Charts from runs' metrics.jsonl files.

metrics.jsonl is written by the trainer, one JSON object per line:

    {"kind": "train"|"eval"|"grads", "step": int, "tokens": int,
     "accel_hours": float|null,      # tokens / tokens_per_second / 3600; null without tokens_per_second
     "time_s": float, ...}
    train lines add: loss, lr, ms_per_step, tokens_per_sec, mfu
    eval lines add:  split, loss, ppl, normalised_ppl, bpb, acc1, acc10, eval_tokens, eval_chars, ...
                     ('tokens' is the training tokens of the step, as on train lines)

Two pictures:
- several runs on one chart: an eval metric against steps, tokens or accelerator-hours
  (eval loss or normalised perplexity against accelerator-hours is how methods are
  compared under a compute budget);
- `--kind train`: train loss and step time over iterations, as two panels.

matplotlib is imported lazily (an optional dependency) and driven through its
object API with the Agg canvas, so plotting never touches pyplot's global state or
needs a display.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from gptlab.cli import ArgParser
from gptlab.errors import UserError

METRICS_FILE = "metrics.jsonl"
X_KEYS = {"steps": "step", "tokens": "tokens", "hours": "accel_hours"}
X_LABELS = {"steps": "step", "tokens": "tokens", "hours": "accelerator-hours (reference throughput)"}
_LABEL_MAX = 60


def metrics_path(run: str | Path) -> Path:
    """A run folder or a metrics file itself."""
    p = Path(run)
    return p / METRICS_FILE if p.is_dir() else p


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl.

    A line that does not parse is skipped with a warning: a run killed mid-write leaves
    a truncated last line, and if it was then resumed that fragment sits mid-file.
    """
    path = metrics_path(run)
    if not path.is_file():
        raise UserError(f"no metrics file at {str(path)!r}: pass a run folder written by `gptlab train`")
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    last = 0
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            last = lineno
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad.append(lineno)
                continue
            if isinstance(rec, dict) and "kind" in rec and "step" in rec:
                records.append(rec)
            else:
                bad.append(lineno)
    if not records:
        raise UserError(f"{path} holds no metrics records: the run logged nothing yet, or this is not a metrics file")
    if bad and bad[-1] == last:
        bad.pop()  # a partial last line is normal while a run is writing or after a kill: no warning
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        print(f"warning: {path}: skipped {len(bad)} unreadable line(s) ({shown})", file=sys.stderr)
    return records


def _run_folder(run: str | Path) -> Path:
    p = Path(run)
    if p.name == METRICS_FILE or p.is_file():
        p = p.parent
    return p.resolve()


def short_labels(runs: list[str | Path]) -> list[str]:
    """Legend labels: the parts of the run names that differ between the runs.

    Languini names are `_`-joined hyperparameters; the shared ones say nothing in a
    legend. The class and preset folders take part, since two runs can differ only there.
    """
    if not runs:
        return []
    folders = [_run_folder(r) for r in runs]
    if len(runs) == 1:
        labels = [folders[0].name]
    else:
        tokens = [[t for t in [f.parent.parent.name, f.parent.name, *f.name.split("_")] if t] for f in folders]
        common = set(tokens[0]).intersection(*map(set, tokens[1:]))
        labels = []
        for f, toks in zip(folders, tokens):
            diff = [t for t in toks if t not in common]
            labels.append("_".join(diff) if diff else f.name)
    out = []
    for i, lab in enumerate(labels):
        lab = lab or str(runs[i])
        if len(lab) > _LABEL_MAX:  # a legend wider than the chart is unreadable
            lab = lab[: _LABEL_MAX - 1] + "…"
        out.append(lab)
    # Identical labels (the same run twice, or names cut to one prefix) get numbered.
    counts = {lab: out.count(lab) for lab in out}
    seen: dict[str, int] = {}
    for i, lab in enumerate(out):
        if counts[lab] > 1:
            seen[lab] = seen.get(lab, 0) + 1
            out[i] = f"{lab} #{seen[lab]}"
    return out


def _x_value(rec: dict, x: str, tokens_per_second: float | None, run: str | Path) -> float:
    if x == "hours":
        if tokens_per_second:
            if rec.get("tokens") is None:
                raise UserError(f"{metrics_path(run)}: records lack 'tokens', so hours cannot be computed: use --x steps")
            return rec["tokens"] / tokens_per_second / 3600
        h = rec.get("accel_hours")
        if h is None:
            raise UserError(
                f"run {str(run)!r} has no accelerator-hours (trained without --tokens_per_second): "
                f"pass --tokens_per_second T to compute them, or plot with --x steps or --x tokens")
        return h
    v = rec.get(X_KEYS[x])
    if v is None:
        raise UserError(f"{metrics_path(run)}: records lack {X_KEYS[x]!r}: plot with --x steps")
    return v


def training_tokens(records: list[dict]) -> list[dict]:
    """Records whose 'tokens' are the training tokens of their step, eval records included.

    Eval records hold the training tokens, steps and accelerator-hours of the step they
    evaluate, and the eval's own counts as eval_tokens (or tokens_scored). Files written
    before that held the count of tokens scored under 'tokens' (with 'windows' beside it);
    those records get the training tokens of their step back from the train records
    (tokens per step), and their accelerator-hours with them.
    """
    per_step = next((r["tokens"] / r["step"] for r in records
                     if r.get("kind") == "train" and r.get("step") and r.get("tokens")), None)
    hours_per_token = next((r["accel_hours"] / r["tokens"] for r in records
                            if r.get("kind") == "train" and r.get("accel_hours") and r.get("tokens")), None)
    out = []
    for r in records:
        old = r.get("kind") == "eval" and "windows" in r and not ({"eval_tokens", "tokens_scored"} & set(r))
        if old and per_step is not None:
            tokens = round(r["step"] * per_step)
            r = dict(r, tokens=tokens, tokens_scored=r.get("tokens"))
            if hours_per_token is not None:
                r["accel_hours"] = tokens * hours_per_token
        out.append(r)
    return out


def series(records: list[dict], kind: str, metric: str, x: str = "steps", split: str | None = None,
           tokens_per_second: float | None = None, run: str | Path = "") -> dict[str | None, tuple[list, list]]:
    """{split (None for train): (xs, ys)} for one run, sorted by step.

    A step logged twice (a resumed run re-logs the steps after its last checkpoint)
    keeps its last record, the one from the run that continued.
    """
    chosen = [r for r in training_tokens(records) if r.get("kind") == kind]
    if split is not None:
        chosen = [r for r in chosen if r.get("split") == split]
    if not chosen:
        what = f"{kind} records" + (f" for split {split!r}" if split else "")
        have = sorted({str(r.get("split")) for r in records if r.get("kind") == kind})
        hint = f" (splits present: {', '.join(have)})" if have and split else ""
        raise UserError(f"{metrics_path(run)} has no {what}{hint}: check --kind/--split, or wait for the first eval")
    if not any(metric in r for r in chosen):
        avail = sorted({k for r in chosen for k in r} - {"kind", "step", "tokens", "accel_hours", "time_s", "split"})
        raise UserError(f"{metrics_path(run)}: no {kind} metric {metric!r}; available: {', '.join(avail)}")
    by_split: dict[str | None, dict[int, dict]] = {}
    for r in chosen:
        if r.get(metric) is None:
            continue
        key = r.get("split") if kind == "eval" else None
        by_split.setdefault(key, {})[int(r["step"])] = r
    out: dict[str | None, tuple[list, list]] = {}
    for key, steps in by_split.items():
        xs, ys = [], []
        for step in sorted(steps):
            r = steps[step]
            try:
                y = float(r[metric])
            except (TypeError, ValueError):
                raise UserError(f"{metrics_path(run)}: {metric!r} is not a number ({r[metric]!r}): "
                                f"choose a numeric --metric") from None
            if not math.isfinite(y):  # a diverged step would flatten the whole axis
                continue
            xs.append(_x_value(r, x, tokens_per_second, run))
            ys.append(y)
        out[key] = (xs, ys)
    return out


def _new_figure(nrows: int):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(9, 4.5 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, 1, i + 1) for i in range(nrows)]
    return fig, axes


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
    fig, axes = _new_figure(len(panels))
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
    title_split = f" ({split})" if split else ""
    axes[0].set_title(f"{kind} {metric}{title_split} vs {X_LABELS[x]}")
    return fig


def _parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="gptlab plot",
        description="Plot runs' metrics.jsonl: several runs on one chart (eval metric vs steps, tokens or "
                    "accelerator-hours), or --kind train for train loss and ms/step over iterations.",
        epilog="example: gptlab plot logs/6h/small/RUN_A logs/6h/small/RUN_B --x hours "
               "--metric normalised_ppl --out compare.png",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder (or its metrics.jsonl)")
    p.add_argument("--x", choices=list(X_KEYS), default="steps", help="x axis (default steps)")
    p.add_argument("--metric", default="loss",
                   help="y value: loss, normalised_ppl, ppl, bpb, acc1, acc10 (eval); loss, lr, mfu, ... (train)")
    p.add_argument("--kind", choices=("eval", "train"), default="eval",
                   help="eval records (default), or train records with a step-time panel")
    p.add_argument("--split", default=None, help="eval split to plot (default: every split logged)")
    p.add_argument("--tokens_per_second", type=float, default=None,
                   help="compute hours from tokens with this reference throughput (for runs logged without it)")
    p.add_argument("--logy", action="store_true", help="logarithmic y axis")
    p.add_argument("--out", required=True, help="image file to write (.png, .pdf or .svg)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--out {args.out!r}: give a file ending in .png, .pdf or .svg")
    fig = make_figure(args.runs, x=args.x, metric=args.metric, kind=args.kind, split=args.split,
                      tokens_per_second=args.tokens_per_second, logy=args.logy)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")
    return 0
