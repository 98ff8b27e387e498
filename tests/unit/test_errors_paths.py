"""Issue 22, output paths, unbounded work and tracebacks: every case exits 2 with one `error:` line, no
traceback, and leaves the file tree as it was: every entry's path, type, mode, sha256 (files) and link target
(symbolic links), read without following a link, so a link loop or a link out of the tree is compared too.
The cases that must work (a command replacing its own earlier output) are tests of their own below."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_errors_cli import make_data, train_argv

from gptlab import cli, files
from gptlab.evaluate import EVAL_JSON_MARK
from gptlab.plot import PLOT_TAG


def tree(root: Path) -> dict:
    """path -> (kind, mode, sha256 | link target) of everything under root, links never followed."""
    out = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            p = Path(folder) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[str(p.relative_to(root))] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[str(p.relative_to(root))] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[str(p.relative_to(root))] = ("other", st.st_mode)
    return out


def refused(argv, capsys, roots) -> str:
    """cli.main(argv): exit 2, one 'error:' line, no traceback, every tree under roots unchanged."""
    before = [tree(r) for r in roots]
    threads = torch.get_num_threads()
    try:
        rc = cli.main([a if isinstance(a, str) else str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert [tree(r) for r in roots] == before, "a refused command changed files"
    return lines[0]


def run_ok(argv, capsys) -> str:
    threads = torch.get_num_threads()
    try:
        rc = cli.main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset, a finished 2-step run and an export of it, built once; cases copy what they modify."""
    root = tmp_path_factory.mktemp("paths_world")
    data = make_data(root)
    run = root / "run"
    threads = torch.get_num_threads()
    assert cli.main([str(a) for a in ["train", *train_argv(data, run)]]) == 0
    assert cli.main(["export", str(run), "--to", "hf", str(root / "export")]) == 0
    torch.set_num_threads(threads)
    return {"root": root, "data": data, "run": run, "export": root / "export"}


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


def _loop(tmp: Path) -> Path:
    os.symlink(tmp / "loop_b", tmp / "loop_a")
    os.symlink(tmp / "loop_a", tmp / "loop_b")
    return tmp / "loop_a"


def _link(tmp: Path, target: Path, name="link") -> Path:
    os.symlink(target, tmp / name)
    return tmp / name


def _eval(w, *extra):
    return ["eval", "--run", w["run"], "--eval_data_split", "val", "--device", "cpu", *extra]


def _train(w, tmp, *extra, **opts):
    return ["train", *train_argv(opts.pop("data", w["data"]), opts.pop("run", tmp / "new_run"), **opts), *extra]


def _resume_with_link(w, tmp, name):
    """A copy of the run whose `name` is a link to a file outside it (the victim)."""
    run = _copy(w["run"], tmp / "run")
    victim = tmp / "victim.txt"
    victim.write_text("outside the run\n")
    (run / name).unlink()
    os.symlink(victim, run / name)
    return _train(w, tmp, "--resume", run=run, max_iters=3)


def _earlier_export_plus(w, tmp, extra: str):
    out = _copy(w["export"], tmp / "export")
    (out / extra).write_text("the user's own notes")
    return out


NON_UTF8 = os.fsdecode(b"\xff\xfename")
LONG = "n" * 300

CASES = {
    # eval --json: only a new file or an earlier eval's
    "eval --json onto the run's config.json": lambda w, t: _eval(w, "--json", w["run"] / "config.json"),
    "eval --json onto a checkpoint": lambda w, t: _eval(w, "--json", w["run"] / "checkpoints" / "model.pt"),
    "eval --json onto a dataset's meta.json": lambda w, t: _eval(w, "--json", w["data"] / "meta.json"),
    "eval --json onto the user's file": lambda w, t: _eval(w, "--json", t / "work" / "notes.txt"),
    "eval --json new file in a dataset": lambda w, t: _eval(w, "--json", w["data"] / "scores.json"),
    "eval --json new file in checkpoints/": lambda w, t: _eval(w, "--json", w["run"] / "checkpoints" / "s.json"),
    "eval --json onto a run layout name": lambda w, t: _eval(w, "--json", w["run"] / "tensorboard"),
    "eval --json new file in an export": lambda w, t: _eval(w, "--json", w["export"] / "scores.json"),
    "eval --json a dangling link": lambda w, t: _eval(w, "--json", _link(t, t / "elsewhere.json")),
    "eval --json a link to the user's file": lambda w, t: _eval(w, "--json", _link(t, t / "work" / "notes.txt")),
    "eval --json a symlink loop": lambda w, t: _eval(w, "--json", _loop(t)),
    "eval --json under a symlink loop": lambda w, t: _eval(w, "--json", _loop(t) / "x.json"),
    "eval --json non-UTF-8 name": lambda w, t: _eval(w, "--json", t / NON_UTF8),
    "eval --json name of 300 characters": lambda w, t: _eval(w, "--json", t / LONG),
    # plot --out
    "plot --out onto the user's png": lambda w, t: ["plot", w["run"], "--kind", "train", "--out",
                                                    (lambda p: p.write_bytes(b"\x89PNG mine") and p)(t / "mine.png")],
    "plot --out into a dataset": lambda w, t: ["plot", w["run"], "--out", w["data"] / "loss.png"],
    "plot --out under a symlink loop": lambda w, t: ["plot", w["run"], "--out", _loop(t) / "x.png"],
    "plot --out non-UTF-8 name": lambda w, t: ["plot", w["run"], "--out", t / (NON_UTF8 + ".png")],
    "plot --out name of 300 characters": lambda w, t: ["plot", w["run"], "--out", t / (LONG + ".png")],
    # bench / throughput outputs, checked before any step runs
    "bench --json onto the user's file": lambda w, t: ["bench", "baby", "--device", "cpu", "--json",
                                                       t / "work" / "notes.txt"],
    "throughput --csv onto the user's file": lambda w, t: ["throughput", "baby", "--device", "cpu", "--csv",
                                                           t / "work" / "notes.txt"],
    "bench --profile beside the user's trace": lambda w, t: ["bench", "baby", "--device", "cpu", "--profile",
                                                             (lambda p: (t / "p_trace.json.gz").write_bytes(b"x") and p)(
                                                                 t / "p")],
    # export: every refusal before anything is deleted
    "export --overwrite over an export plus one file": lambda w, t: [
        "export", w["run"], "--to", "hf", _earlier_export_plus(w, t, "notes.txt"), "--overwrite"],
    "export --overwrite over an export plus a folder": lambda w, t: [
        "export", w["run"], "--to", "hf", (lambda o: (o / "sub").mkdir() or o)(_copy(w["export"], t / "exp")),
        "--overwrite"],
    "export --overwrite over an export with a linked file": lambda w, t: [
        "export", w["run"], "--to", "hf", (lambda o: ((o / "config.json").unlink(), os.symlink(
            t / "work" / "notes.txt", o / "config.json")) and o)(_copy(w["export"], t / "exp")), "--overwrite"],
    "export into a symlink loop": lambda w, t: ["export", w["run"], "--to", "hf", _loop(t)],
    "export to a link to an empty folder": lambda w, t: ["export", w["run"], "--to", "hf",
                                                         _link(t, (lambda d: d.mkdir() or d)(t / "empty"))],
    "export inside a dataset": lambda w, t: ["export", w["run"], "--to", "hf", w["data"] / "hf"],
    "export inside the run": lambda w, t: ["export", w["run"], "--to", "hf", w["run"] / "hf"],
    "export name of 300 characters": lambda w, t: ["export", w["run"], "--to", "hf", t / LONG],
    "export non-UTF-8 name": lambda w, t: ["export", w["run"], "--to", "hf", t / NON_UTF8],
    # train: run folders
    "resume with metrics.jsonl a link out": lambda w, t: _resume_with_link(w, t, "metrics.jsonl"),
    "resume with config.json a link out": lambda w, t: _resume_with_link(w, t, "config.json"),
    "init_from R, out_dir R, overwrite": lambda w, t: _train(
        w, t, "--overwrite", run=(r := _copy(w["run"], t / "run")), init_from=r),
    "init_from a checkpoint of R, out_dir R, overwrite": lambda w, t: _train(
        w, t, "--overwrite", run=(r := _copy(w["run"], t / "run")), init_from=r / "checkpoints" / "model.pt"),
    "dataset inside out_dir, overwrite": lambda w, t: _train(
        w, t, "--overwrite", run=(r := _copy(w["run"], t / "run")), data=_copy(w["data"], r / "data")),
    "out_dir a symlink loop": lambda w, t: _train(w, t, run=_loop(t)),
    "out_dir under a symlink loop": lambda w, t: _train(w, t, run=_loop(t) / "run"),
    "out_dir a link to an empty folder": lambda w, t: _train(w, t, run=_link(t, (lambda d: d.mkdir() or d)(t / "e"))),
    "out_dir inside a dataset": lambda w, t: _train(w, t, run=w["data"] / "run"),
    "out_dir inside another run": lambda w, t: _train(w, t, run=w["run"] / "checkpoints" / "run"),
    "out_dir non-UTF-8 name": lambda w, t: _train(w, t, run=t / NON_UTF8),
    "name of 300 characters": lambda w, t: _train(w, t, "--name", LONG, "--log_root", t / "logs", run=""),
    "comment of 300 characters": lambda w, t: _train(w, t, "--comment", LONG, "--log_root", t / "logs", run=""),
    # unbounded work
    "sample --start FILE:/dev/zero": lambda w, t: ["sample", "--run", w["run"], "--start", "FILE:/dev/zero"],
    "sample --max_new_tokens 10**12": lambda w, t: ["sample", "--run", w["run"], "--max_new_tokens", "1000000000000"],
    "sample --num_samples 10**9": lambda w, t: ["sample", "--run", w["run"], "--num_samples", "1000000000"],
    "sample --seed 2**70": lambda w, t: ["sample", "--run", w["run"], "--seed", str(2**70)],
    "eval --streams 10**8 (7.5 GB, then MemoryError)": lambda w, t: _eval(w, "--streams", "100000000"),
    "bench --steps 10**20": lambda w, t: ["bench", "baby", "--device", "cpu", "--steps", str(10**20)],
    "bench --json onto a FIFO (blocked)": lambda w, t: ["bench", "baby", "--device", "cpu", "--json",
                                                        (lambda p: os.mkfifo(p) or p)(t / "fifo")],
    # tracebacks before
    "budget --tokens_per_second inf": lambda w, t: ["budget", "--hours", "1", "--tokens_per_second", "inf",
                                                    "--train_batch_size", "8", "--seq_len", "16"],
    "budget --hours 1e300 x 1e300 tokens/s": lambda w, t: ["budget", "--hours", "1e300", "--tokens_per_second",
                                                          "1e300", "--train_batch_size", "8"],
    "train TOML nested 100,000 deep": lambda w, t: [
        "train", (lambda p: p.write_text("a = " + "[" * 100_000 + "]" * 100_000) and p)(t / "deep.toml")],
    "train JSON config nested 100,000 deep": lambda w, t: [
        "train", (lambda p: p.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}") and p)(t / "deep.json")],
    "train TOML of 65 MiB": lambda w, t: [
        "train", (lambda p: os.truncate(p.touch() or p, 65 << 20) or p)(t / "huge.toml")],
    # hostile nanoGPT config files: refused before the work, in one line
    "config.py x = x*x 40 times": lambda w, t: ["train", _py(t, "x = 2\n" + "x = x * x\n" * 40)],
    "config.py x = x**64 repeated": lambda w, t: ["train", _py(t, "x = 3\n" + "x = x ** 64\n" * 20)],
    "config.py s = s + s 36 times": lambda w, t: ["train", _py(t, "s = 'ab' * 40\n" + "s = s + s\n" * 36)],
    "config.py 200,000 nested operators": lambda w, t: ["train", _py(t, "x = " + "-" * 200_000 + "1\n")],
    "config.py a number of 4,400 digits": lambda w, t: ["train", _py(t, "batch_size = " + "7" * 4400 + "\n")],
    "config.py a decorated function": lambda w, t: ["train", _py(t, "@dec\ndef f():\n    return 1\n")],
    "config.py an if block": lambda w, t: ["train", _py(t, "if True:\n    batch_size = 1\n    n_layer = 2\n")],
    "config.py of 10 MB": lambda w, t: ["train", _py(t, "batch_size = 1\n" * 700_000)],
}
XFAIL: dict[str, str] = {}


def _py(tmp: Path, text: str) -> Path:
    (tmp / "config.py").write_text(text)
    return tmp / "config.py"


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_line_and_the_tree_unchanged(world, tmp_path, capsys, monkeypatch, case):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the user's own file")
    monkeypatch.chdir(work)
    argv = CASES[case](world, tmp_path)
    refused(argv, capsys, [tmp_path, world["root"]])


# --- what must work ---------------------------------------------------------------------------------

def test_eval_json_replaces_only_its_own_file(world, tmp_path, capsys):
    out = tmp_path / "scores.json"
    run_ok(_eval(world, "--json", out, "--max_eval_steps", "1"), capsys)
    first = json.loads(out.read_text())
    assert first["written_by"] == EVAL_JSON_MARK and first["split"] == "val" and first["loss"] > 0
    out.write_text(out.read_text().replace('"split": "val"', '"split": "old"'))
    run_ok(_eval(world, "--json", out, "--max_eval_steps", "1"), capsys)
    assert json.loads(out.read_text())["split"] == "val"
    beside = world["run"] / "scores.json"  # a new file beside the run's own is fine (as plot's default is)
    try:
        run_ok(_eval(world, "--json", beside, "--max_eval_steps", "1"), capsys)
        assert json.loads(beside.read_text())["written_by"] == EVAL_JSON_MARK
    finally:
        beside.unlink(missing_ok=True)


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_plot_replaces_its_own_image(world, tmp_path, capsys, suffix):
    out = tmp_path / "sub" / f"loss{suffix}"
    run_ok(["plot", world["run"], "--kind", "train", "--out", out], capsys)
    assert files.made_by(out, PLOT_TAG)
    run_ok(["plot", world["run"], "--kind", "train", "--out", out], capsys)


def test_export_overwrite_replaces_the_earlier_export_whole(world, tmp_path, capsys):
    out = _copy(world["export"], tmp_path / "exp")
    (out / "vocab.json").write_text("{}")  # a stale file an earlier export may have written
    (out / "model.safetensors").write_bytes(b"old weights")
    run_ok(["export", world["run"], "--to", "hf", out, "--overwrite"], capsys)
    assert sorted(os.listdir(tmp_path)) == ["exp"]  # no work or old folder left beside it
    assert not (out / "vocab.json").exists()
    assert (out / "model.safetensors").read_bytes() == (world["export"] / "model.safetensors").read_bytes()
    marker = json.loads((out / "gptlab_export.json").read_text())
    assert sorted(marker["files"]) == sorted(p.name for p in out.iterdir() if p.name != "gptlab_export.json")


def test_export_into_a_read_only_folder(world, tmp_path, capsys, monkeypatch):
    """Root ignores permission bits, so the folder's "read-only" answer is modelled at files._writable;
    as another user the real permission is tried too."""
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(files, "_writable", lambda folder: Path(folder).absolute() != ro)
    line = refused(["export", world["run"], "--to", "hf", ro / "hf"], capsys, [tmp_path, world["root"]])
    assert "cannot write in" in line
    monkeypatch.undo()
    if os.geteuid() != 0:
        ro.chmod(0o500)
        try:
            refused(["export", world["run"], "--to", "hf", ro / "hf"], capsys, [tmp_path, world["root"]])
        finally:
            ro.chmod(0o700)


def test_resume_never_appends_through_a_link(world, tmp_path, capsys):
    """Even past prepare_run_dir's check, the logger opens metrics.jsonl without following a link."""
    from gptlab.config import Config
    from gptlab.tracker import RunLogger

    victim = tmp_path / "victim.txt"
    victim.write_text("outside\n")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(victim, run / "metrics.jsonl")
    with pytest.raises(OSError):
        RunLogger(run, Config())
    assert victim.read_text() == "outside\n"


def test_atomic_write_never_follows_a_link_at_its_temporary_name(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    os.symlink(victim, tmp_path / f".out.json.tmp-{os.getpid()}")
    files.atomic_write_json(tmp_path / "out.json", {"a": 1})
    assert victim.read_text() == "keep" and json.loads((tmp_path / "out.json").read_text()) == {"a": 1}


def test_help_into_a_closed_pipe_exits_quietly(tmp_path):
    """`gptlab train --help | head`: the reader is gone before the first write; no traceback, no message."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    for argv in (["train", "--help"], ["--help"]):
        p = subprocess.Popen([sys.executable, "-m", "gptlab", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=tmp_path, env=env)
        p.stdout.close()
        err = p.stderr.read().decode()
        p.wait(timeout=60)
        assert err == "", err
        assert p.returncode in (0, 141)
