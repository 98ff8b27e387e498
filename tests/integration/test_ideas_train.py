"""A model idea end to end: `gptlab train PRESET --model FILE.py:Class [--option value]` trains it,
the run records it (its source, sha256, options), run folders of variants differ, downstream commands
(sample, eval, bench, plot, --init_from) use it, code a run carries runs only with --trust_code, a
changed idea is refused on --resume, and a resume after SIGKILL is bit-identical."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import textwrap
from pathlib import Path

import pytest

from gptlab import cli
from tests.conftest import run_cli
from tests.integration.test_resume import (assert_same_tensors, final_state, make_dataset, spawn, train_args,
                                           train_records, wait_for_step)

REPO = Path(__file__).resolve().parents[2]
MODERN = REPO / "examples" / "ideas" / "modern_block.py"
TINY = REPO / "tests" / "ideas" / "tiny_gpt.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ideas"))


def quick(data: Path, *extra: str, steps: int = 4) -> list[str]:
    """A tiny in-process CPU run, auto-named under the cwd's logs/ unless --out_dir is among extra."""
    args = train_args(data, Path("unused"), "random", steps, dropout=0.0)
    at = args.index("--out_dir")
    del args[at:at + 2]
    return [*args, *extra]


def run_folder(capsys) -> Path:
    out = capsys.readouterr().out
    return Path(next(line for line in out.splitlines() if line.startswith("run: ")).split("run: ", 1)[1])


def test_an_idea_trains_and_its_run_records_it(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *quick(data, "--model", f"{TINY}:TinyGPT")]) == 0
    out = capsys.readouterr().out
    run = Path(next(line for line in out.splitlines() if line.startswith("run: ")).split("run: ", 1)[1])
    assert "(counted with torch.utils.flop_counter on one sequence)" in out  # TinyGPT gives no formula
    assert "--trust_code" in out.split("Next:")[1]  # the printed sample/eval commands work as printed
    model = json.loads((run / "config.json").read_text())["model"]
    copy = run / "idea" / "tiny_gpt.py"
    assert copy.read_bytes() == TINY.read_bytes()
    assert model["model_sha256"] == hashlib.sha256(TINY.read_bytes()).hexdigest()
    assert model["model"] == f"{TINY}:TinyGPT" and model["options"] == {"scale": 1.0}
    assert run.name.startswith("tiny_gpt.TinyGPT_multi_") and "_opt" in run.name

    # Variants never share a folder: another option value, the baseline, the baseline with another bias.
    names = {run.name}
    for extra in (["--model", f"{TINY}:TinyGPT", "--scale", "0.5"], [], ["--bias", "false"]):
        assert cli.main(["train", *quick(data, *extra, steps=1)]) == 0
        names.add(run_folder(capsys).name)
    assert len(names) == 4 and sum(n.startswith("GPT_multi_") for n in names) == 2


def test_unknown_and_mistyped_options_are_one_line(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for extra, says in ((["--model", f"{MODERN}:ModernGPT", "--rope_bse", "5"], "did you mean --rope_base?"),
                        (["--model", f"{MODERN}:ModernGPT", "--qk_norm", "sometimes"], "--qk_norm: expected bool"),
                        (["--rope_base", "5"], "unknown config key 'rope_base'"),
                        (["--model", f"{MODERN}:Modern"], "did you mean")):
        assert cli.main(["train", *quick(data, *extra)]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert not (tmp_path / "logs").exists()  # nothing written


MARKER_IDEA = '''
import pathlib

pathlib.Path({marker!r}).open("a").write("ran\\n")
exec(pathlib.Path({tiny!r}).read_text())
'''


def test_code_from_a_run_runs_only_with_trust_code(data, tmp_path, monkeypatch, capsys):
    """An idea that writes a marker whenever it is executed: sample, eval and resume of its run refuse
    without --trust_code (one line naming the file and the flag, exit 2) and run nothing; with it,
    they work. Each check is a fresh process, so no cached import can hide an execution."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    idea = tmp_path / "marked.py"
    idea.write_text(textwrap.dedent(MARKER_IDEA.format(marker=str(marker), tiny=str(TINY))))
    run = tmp_path / "run"
    assert cli.main(["train", *quick(data, "--model", f"{idea}:TinyGPT", "--out_dir", str(run),
                                     "--eval_interval", "2")]) == 0
    capsys.readouterr()
    marker.unlink()
    copy = run / "idea" / "marked.py"
    for args in (["sample", "--run", str(run), "--max_new_tokens", "2", "--num_samples", "1"],
                 ["eval", "--run", str(run), "--eval_data_split", "val"],
                 ["train", *quick(data, "--model", f"{idea}:TinyGPT", "--out_dir", str(run), "--resume"),
                  "--max_iters", "6"],
                 ["train", *quick(data, "--init_from", str(run), "--out_dir", str(tmp_path / "child"))],
                 ["train", str(run / "config.json"), "--out_dir", str(tmp_path / "again")],
                 ["export", str(run), str(tmp_path / "hf"), "--to", "hf"]):
        res = run_cli(args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr[-2000:])
        line = res.stderr.strip()
        assert "\n" not in line and "Traceback" not in line, line
        assert ("--trust_code" in line and "marked.py" in line) or args[0] == "export", line
        assert str(copy) in line or args[0] != "sample", line  # the run's own copy is what would run
        assert not marker.exists(), f"{args[0]} executed the idea without --trust_code"
    assert not (tmp_path / "child").exists() and not (tmp_path / "again").exists() and not (tmp_path / "hf").exists()
    res = run_cli(["sample", "--run", str(run), "--max_new_tokens", "3", "--num_samples", "1", "--trust_code"],
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "cache off" in res.stdout and marker.read_text() == "ran\n"  # the run's copy, executed once


def test_downstream_commands_work_with_an_idea(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert cli.main(["train", *quick(data, "--model", f"{MODERN}:ModernGPT", "--rope_base", "500",
                                     "--out_dir", str(run), "--eval_interval", "4")]) == 0
    trained = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert trained["kind"] == "eval" and trained["split"] == "val"
    capsys.readouterr()
    assert cli.main(["eval", "--run", str(run), "--trust_code", "--eval_data_split", "val", "--streams", "16",
                     "--json", str(tmp_path / "eval.json"), "--max_eval_steps", "1"]) == 0
    assert cli.main(["sample", "--run", str(run), "--trust_code", "--max_new_tokens", "40", "--num_samples", "1",
                     "--start", "the "]) == 0
    assert "cache off" in capsys.readouterr().out  # the modern block has no cache: the window is recomputed
    assert cli.main(["plot", str(run), "--out", str(tmp_path / "loss.png")]) == 0
    assert (tmp_path / "loss.png").stat().st_size > 0
    # --init_from the idea's run: the same idea (the run's copy), its weights, a new run that records it.
    child = tmp_path / "child"
    assert cli.main(["train", *quick(data, "--init_from", str(run), "--out_dir", str(child), "--trust_code")]) == 0
    model = json.loads((child / "config.json").read_text())["model"]
    assert model["options"] == {"rope_base": 500.0, "qk_norm": False}
    assert (child / "idea" / "modern_block.py").read_bytes() == MODERN.read_bytes()
    assert cli.main(["bench", "baby", "--model", f"{MODERN}:ModernGPT", "--n_layer", "1", "--n_embd", "32",
                     "--n_head", "2", "--block_size", "32", "--batch_size", "2", "--steps", "2", "--warmup", "1",
                     "--device", "cpu", "--no_matmul", "--json", str(tmp_path / "bench.json")]) == 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["flops_formula"] == "the model's flops_per_token" and bench["tokens_per_sec"] > 0


def test_a_changed_idea_is_refused_on_resume(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    idea = tmp_path / "modern.py"
    shutil.copyfile(MODERN, idea)
    run = tmp_path / "run"
    args = quick(data, "--model", f"{idea}:ModernGPT", "--out_dir", str(run))
    assert cli.main(["train", *args]) == 0
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} | {
        "config.json": (run / "config.json").read_bytes()}
    marker = tmp_path / "marker"  # the new version would leave it, if it ran
    idea.write_text(idea.read_text().replace("10000.0", "20000.0") + f"\nopen({str(marker)!r}, 'w').close()\n")
    capsys.readouterr()
    assert cli.main(["train", *args, "--resume", "--trust_code", "--max_iters", "8"]) == 2
    err = capsys.readouterr().err
    assert "has changed since the run started" in err and str(idea) in err and err.count("\n") == 1
    after = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} | {
        "config.json": (run / "config.json").read_bytes()}
    assert after == before and not marker.exists()


def test_an_idea_resumes_bit_identically_after_sigkill(data, tmp_path, capsys):
    """The modern block with dropout (so a lost RNG state shows), gradient accumulation and random
    windows: killed at a random step after a checkpoint and resumed, every logged loss and the final
    weights, optimiser and RNG states equal an uninterrupted run's."""
    n = 16
    idea = ["--model", f"{MODERN}:ModernGPT", "--qk_norm", "true"]
    killed = tmp_path / "killed"
    proc = spawn([*train_args(data, killed, "random", n), *idea], tmp_path, "killed")
    try:
        ref = tmp_path / "ref"
        assert cli.main(["train", *train_args(data, ref, "random", n), *idea]) == 0
        wait_for_step(proc, killed, random.Random().randint(3, n - 6), need_checkpoint=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and max(train_records(killed)) < n
    capsys.readouterr()
    assert cli.main(["train", *train_args(data, killed, "random", n), *idea, "--resume", "--trust_code"]) == 0
    assert "resuming from" in capsys.readouterr().out
    a, b = train_records(ref), train_records(killed)
    assert sorted(a) == sorted(b) == list(range(1, n + 1))
    for step in a:
        assert (a[step]["loss"], a[step]["lr"]) == (b[step]["loss"], b[step]["lr"]), f"step {step}"
    for key in ("model", "optimizer", "rng", "sampler", "loop"):
        assert_same_tensors(final_state(ref, n)[key], final_state(killed, n)[key], key)
