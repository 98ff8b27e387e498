"""What `gptlab compare` reports: the results of every entry and seed gathered into compare.json, one
table (mean ± std over seeds, Welch's 95% interval of the difference to the baseline, a verdict), and a
plot of the held-out loss during training against accelerator-hours, one colour per entry and a band
over its seeds."""

from __future__ import annotations

import io
import math
from pathlib import Path

from gptlab.errors import UserError
from gptlab.files import atomic_write_bytes, atomic_write_json
from gptlab.plot import read_metrics
from gptlab.resolve import resolve_batch
from gptlab.stats import mean_std, verdict, welch_interval

TEST_KEYS = ("loss", "normalised_ppl", "ppl", "bpb", "acc1", "eval_tokens", "eval_chars")


def summarise(values: list[float]) -> dict:
    mean, std = mean_std(values)
    return {"mean": mean, "std": None if math.isnan(std) else std, "n": len(values), "values": values}


def entry_result(name: str, runs: list[dict], baseline_runs: list[dict] | None, **facts) -> dict:
    """One entry's line: its facts (spec, throughput, steps ...), its runs, the statistics over seeds."""
    losses = [r["test"]["loss"] for r in runs]
    result = dict(name=name, **facts, runs=runs, test_loss=summarise(losses))
    norm = [r["test"].get("normalised_ppl") for r in runs]
    result["normalised_ppl"] = summarise(norm) if all(v is not None for v in norm) else None
    if baseline_runs is not None:
        interval = welch_interval(losses, [r["test"]["loss"] for r in baseline_runs])
        result["difference"] = interval
        result["verdict"] = verdict(interval)
    return result


def collect(plan, throughput: dict, steps: dict, evals: dict) -> dict:
    """compare.json's content from a finished plan (gptlab.compare.Plan)."""
    entries, baseline_runs = [], None
    for e in plan.entries:
        cfg = plan.configs[e.name]
        per_step = resolve_batch(cfg, 1).global_batch * cfg.model.block_size
        here = throughput[e.name].get("measured_here") or {}
        runs = [
            {
                "seed": seed,
                "run_dir": str(plan.run_dir(e, seed)),
                "test": {k: m[k] for k in TEST_KEYS if k in m},
                "checkpoint": m.get("checkpoint"),
            }
            for seed, m in evals[e.name].items()
        ]
        entries.append(
            entry_result(
                e.name,
                runs,
                baseline_runs,
                spec=e.spec,
                kind=e.kind,
                preset=e.preset,
                overrides=e.overrides,
                files=e.files,
                params=here.get("params"),
                flops_per_token=here.get("flops_per_token"),
                tokens_per_second=throughput[e.name],
                steps=steps[e.name],
                tokens=steps[e.name] * per_step,
            )
        )
        baseline_runs = baseline_runs or runs
    return {
        "compute_class": f"{plan.hours:g}h",
        "hours": plan.hours,
        "dataset": str(plan.data_dir),
        "test_split": plan.test_split,
        "last_n": plan.last_n,
        "seeds": plan.seeds,
        "baseline": plan.baseline.name,
        "entries": entries,
    }


# ------------------------------------------------------------------------------ the table


def _number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean_std(stat: dict | None, digits: int = 4) -> str:
    if stat is None:
        return "-"
    return _number(stat["mean"], digits) + (
        f" ± {_number(stat['std'], digits)}" if stat["std"] is not None else ""
    )


def _count(value) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _difference(entry: dict) -> str:
    if "difference" not in entry:
        return "(baseline)"
    d = entry["difference"]
    if d is None:
        return "-"
    return f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def table_rows(result: dict) -> list[list[str]]:
    head = [
        "entry",
        "params",
        "FLOPs/token",
        "ref tokens/s",
        "steps",
        "tokens",
        "test loss",
        "norm. ppl",
        f"Δ loss vs {result['baseline']} (95%)",
        "verdict",
    ]
    rows = [head]
    for e in result["entries"]:
        tps = e["tokens_per_second"]
        rows.append(
            [
                e["name"],
                _count(e.get("params")),
                _count(e.get("flops_per_token")),
                f"{tps['tokens_per_second']:,.0f} ({tps['source']})",
                _count(e["steps"]),
                _count(e["tokens"]),
                _mean_std(e["test_loss"]),
                _mean_std(e["normalised_ppl"], 3),
                _difference(e),
                e.get("verdict", ""),
            ]
        )
    return rows


def format_table(result: dict) -> str:
    rows = table_rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    seeds = result["seeds"]
    lines.append(
        f"{result['compute_class']} of reference accelerator-hours per entry; test split "
        f"{result['test_split']!r}, last_n {result['last_n']}; mean ± std over {len(seeds)} seed(s) "
        f"{', '.join(map(str, seeds))}; Δ: Welch's 95% interval of the test-loss difference "
        f"(negative is better)."
    )
    sources = {e["tokens_per_second"]["source"] for e in result["entries"]}
    notes = {
        "published": "published = the baseline preset's figure on the reference GPU",
        "scaled": "scaled = measured here x (baseline published / baseline measured here)",
        "measured": "measured = on the reference GPU itself",
        "given": "given = --tokens_per_second / --NAME.tokens_per_second",
        "config.json": "config.json = the run's own --tokens_per_second",
    }
    lines.append("ref tokens/s: " + "; ".join(notes[s] for s in notes if s in sources) + ".")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the plot


def _held_out_curve(run_dir: Path) -> dict[int, tuple[float, float]]:
    """{step: (accelerator-hours, held-out loss)} of a run's in-training evaluations."""
    records = [r for r in read_metrics(run_dir) if r.get("kind") == "eval" and r.get("split") != "train"]
    return {
        int(r["step"]): (r["accel_hours"], r["loss"])
        for r in records
        if r.get("accel_hours") is not None and isinstance(r.get("loss"), (int, float))
    }


def make_figure(result: dict):
    """Mean held-out loss over seeds against accelerator-hours, one colour per entry, the range of the
    seeds as a band; legends carry the entry names whole."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("the plot needs matplotlib: pip install 'gptlab[plot]'") from None
    figure = Figure(figsize=(9, 5), dpi=100, layout="constrained")
    axes = figure.subplots()
    for index, entry in enumerate(result["entries"]):
        curves = [_held_out_curve(Path(run["run_dir"])) for run in entry["runs"]]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if not steps:
            continue
        hours = [curves[0][s][0] for s in steps]
        losses = [[c[s][1] for c in curves] for s in steps]
        colour = f"C{index % 10}"
        axes.plot(
            hours,
            [sum(v) / len(v) for v in losses],
            color=colour,
            marker="o",
            markersize=3,
            label=f"{entry['name']} ({len(curves)} seed{'s' * (len(curves) > 1)})",
        )
        axes.fill_between(
            hours,
            [min(v) for v in losses],
            [max(v) for v in losses],
            color=colour,
            alpha=0.2,
            linewidth=0,
        )
    axes.set_xlabel("accelerator-hours (reference throughput)")
    axes.set_ylabel("held-out loss (in-training evaluation)")
    axes.set_title(f"{result['compute_class']}: mean over seeds, band = range over seeds")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def write_outputs(result: dict, out: Path, json_name: str, plot_name: str) -> list[Path]:
    """compare.json and the plot (a note instead where matplotlib is missing), written atomically."""
    atomic_write_json(out / json_name, result)
    written = [out / json_name]
    try:
        figure = make_figure(result)
    except UserError as e:
        print(f"note: no plot: {e}")
        return written
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(
        out / plot_name, buffer.getvalue()
    )  # replaces a link rather than writing through it
    return written + [out / plot_name]
