"""`gptlab compare` end to end on the CPU: tiny sizes, 2 seeds; the budget arithmetic, the statistics
and the reuse of finished work checked against independent computations."""

import contextlib
import io
import json
import math
import statistics

import numpy as np
import pytest

from gptlab.commands.compare import main
from gptlab.errors import UserError
from tests.conftest import REPO, SAMPLE_TEXT

IDEAS = REPO / "examples" / "ideas"
# The baseline, a model idea and an optimiser idea (the two examples), with one entry's own option.
ENTRIES = ["baseline=baby", f"modern={IDEAS / 'modern_block.py'}:ModernGPT", f"muon={IDEAS / 'muon.py'}:keller_muon",
           "--modern.rope_base", "500"]
SHAPE = [
    "--n_layer",
    "1",
    "--n_head",
    "2",
    "--n_embd",
    "32",
    "--block_size",
    "32",
    "--batch_size",
    "4",
    "--eval_interval",
    "15",
    "--eval_iters",
    "2",
    "--log_interval",
    "1000",
    "--tensorboard",
    "false",
    "--progress",
    "off",
    "--device",
    "cpu",
]


def _command(calls):
    from gptlab.commands.compare import command_table

    def command(argv):
        calls.append(argv[0])
        return command_table(argv)

    return command


def _table(printed: str) -> list[str]:
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("entry "))
    return lines[start : next(i for i, line in enumerate(lines) if line.startswith("wrote "))]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One compare for the module's tests (they run in order: the last one interrupts a run)."""
    import torch

    from gptlab.data.prepare import prepare

    root = tmp_path_factory.mktemp("compare")
    (root / "input.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    data = root / "data" / "tiny_char"
    prepare("text", input=root / "input.txt", tokenizer="char", out=data)
    out = root / "cmp"
    positionals = [a for a in ENTRIES if "=" in a and not a.startswith("--")]
    scoped = [a for a in ENTRIES if a not in positionals]
    argv = [
        *positionals,
        "--dataset",
        str(data),
        "--compute_class",
        "0.001h",
        "--tokens_per_second",
        "2000",
        "--seeds",
        "2",
        "--test_split",
        "val",
        "--eval_last_n",
        "16",
        "--out",
        str(out),
        *SHAPE,
        *scoped,
    ]
    calls, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a busy machine
    try:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(argv, _command(calls)) == 0
        yield argv, out, list(calls), printed.getvalue()
    finally:
        torch.set_num_threads(threads)


def test_compare_trains_evaluates_tabulates_and_plots(compared):
    argv, out, calls, printed = compared
    names = [a.split("=")[0] for a in argv if "=" in a and not a.startswith("--")]
    assert calls.count("throughput") == len(names) and calls.count("train") == calls.count(
        "eval"
    ) == 2 * len(names)
    result = json.loads((out / "compare.json").read_text())
    assert [e["name"] for e in result["entries"]] == names
    base = result["entries"][0]
    assert base["tokens_per_second"] == {
        **base["tokens_per_second"],
        "tokens_per_second": 2000.0,
        "source": "given",
    }
    measured_base = base["tokens_per_second"]["measured_here"]["tokens_per_second"]
    for entry in result["entries"]:
        tps = entry["tokens_per_second"]
        if entry is not base:  # Languini's rule off the reference GPU: scaled by the baseline's ratio
            assert tps["source"] == "scaled"
            assert tps["tokens_per_second"] == pytest.approx(
                tps["measured_here"]["tokens_per_second"] * 2000 / measured_base, rel=1e-12
            )
        # steps = round(hours * 3600 * tokens/s / (batch * seq)), each entry at its own throughput
        assert entry["steps"] == round(0.001 * 3600 * tps["tokens_per_second"] / (4 * 32))
        losses = []
        for run in entry["runs"]:
            config = json.loads(
                (out / "runs" / entry["name"] / f"seed{run['seed']}" / "config.json").read_text()
            )
            assert config["train"]["max_iters"] == entry["steps"]
            assert config["train"]["tokens_per_second"] == pytest.approx(tps["tokens_per_second"])
            assert run["checkpoint"].endswith(f"ckpt_{entry['steps']:08d}.pt")
            losses.append(run["test"]["loss"])
        assert [r["seed"] for r in entry["runs"]] == [1337, 1338]
        assert entry["test_loss"]["mean"] == pytest.approx(np.mean(losses))
        assert entry["test_loss"]["std"] == pytest.approx(np.std(losses, ddof=1))
        assert 0 < entry["test_loss"]["mean"] < math.log(34)  # learned something over a 34-symbol vocab
    for entry in result["entries"][1:]:
        a, b = [r["test"]["loss"] for r in entry["runs"]], [r["test"]["loss"] for r in base["runs"]]
        diff = entry["difference"]
        assert diff["difference"] == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
        assert diff["low"] < diff["difference"] < diff["high"]
        assert entry["verdict"] in ("better", "worse") or entry["verdict"].startswith(
            "not distinguishable"
        )
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("entry "))
    for name, line in zip(names, lines[header + 2 :]):
        assert line.startswith(name) and "±" in line
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_that_exist_are_tabulated(compared, capsys):
    argv, out, _, printed = compared
    calls, tabulate = [], [str(out), "--test_split", "val", "--eval_last_n", "16"]
    with pytest.raises(UserError, match="carries code .*--trust_code"):  # the runs of the model idea
        main(tabulate, _command(calls))
    assert main([*tabulate, "--trust_code"], _command(calls)) == 0
    result = json.loads((out / "compare.json").read_text())
    assert set(calls) == {"eval"} and len(calls) == 2 * len(result["entries"])  # the refusal evaluated nothing
    table = capsys.readouterr().out
    for entry in result["entries"]:
        line = next(line for line in table.splitlines() if line.startswith(entry["name"] + " "))
        assert f"{entry['test_loss']['mean']:.4f} ± {entry['test_loss']['std']:.4f}" in line


def test_a_second_call_trains_nothing_and_an_interrupted_one_continues(compared, capsys):
    argv, out, _, printed = compared
    calls = []
    assert main(argv, _command(calls)) == 0
    assert calls == []  # measurements, runs and evaluations are all reused
    assert _table(capsys.readouterr().out) == _table(printed)  # the same table from the kept results
    result = json.loads((out / "compare.json").read_text())
    entry = result["entries"][-1]
    run_dir = out / "runs" / entry["name"] / "seed1338"
    final = run_dir / "checkpoints" / f"ckpt_{entry['steps']:08d}.pt"
    final.unlink()  # as if the compare was killed before the last save of its last run
    assert any((run_dir / "checkpoints").glob("ckpt_*.pt"))
    assert main(argv, _command(calls)) == 0
    assert calls == ["train", "eval"] and final.is_file()
