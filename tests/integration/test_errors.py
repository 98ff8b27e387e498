"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, and not a
byte written or overwritten. Then a fuzz pass over every file a user can hand us.

Most cases go through `gptlab.cli.main` in-process (the same code path as the command,
without paying a torch import per case); a few run the real `python -m gptlab` to show
the process-level contract (exit status, stderr, no traceback).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_resume import make_dataset, train_args

from gptlab import checkpoint as ck
from gptlab import cli
from gptlab.data import tokens as tk
from gptlab.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def snapshot(root: Path) -> dict:
    """Every path under root with its bytes (files) or None (folders)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() else None
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A prepared dataset, a finished tiny run, and a few broken datasets, built once."""
    root = tmp_path_factory.mktemp("errors")
    data = make_dataset(root)
    run = root / "run_ok"
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    assert cli.main(["train", *train_args(data, run, "random", 2, eval_iters=1)]) == 0
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)
    meta = tk.read_meta(data)

    def variant(name, meta_changes=None, bins=None):
        d = root / "bad" / name
        shutil.copytree(data, d)
        m = json.loads((d / "meta.json").read_text())
        for split, arr in (bins or {}).items():
            # a consistent edit: the recorded hash follows the bytes, so the later checks are what refuse
            tk.bin_path(d, split).write_bytes(np.asarray(arr, dtype="<u2").tobytes())
            m["splits"][split]["sha256"] = ck.sha256_file(tk.bin_path(d, split))
        if meta_changes is not None:
            meta_changes(m)
        (d / "meta.json").write_text(json.dumps(m))
        if bins:  # the hash cache is gptlab's own derived file: current before the cases run
            tk.verify_bins(d, m)
        return d

    def set_tokens(split, n):
        def f(m):
            m["splits"][split]["tokens"] = n
        return f

    bad = {
        "empty": variant("empty", set_tokens("train", 0), {"train": []}),
        "short": variant("short", set_tokens("train", 20), {"train": np.ones(20)}),
        "big_id": variant("big_id", None, {"train": np.minimum(np.arange(meta["splits"]["train"]["tokens"]), 99)}),
        "dtype": variant("dtype", lambda m: m.update(dtype="uint32")),
        "vocab": variant("vocab", lambda m: m.update(vocab_size=70000)),
        "count": variant("count", set_tokens("train", meta["splits"]["train"]["tokens"] + 1)),
        "no_meta": root / "bad" / "no_meta",
    }
    bad["no_meta"].mkdir()
    other_cfg = root / "other_config.json"
    c = json.loads((run / "config.json").read_text())
    c["model"]["n_layer"] = 2
    other_cfg.write_text(json.dumps(c))
    return {"root": root, "data": data, "run": run, "bad": bad, "other_cfg": other_cfg}


def expect_user_error(argv, capsys, root: Path, must_mention=()):
    before = snapshot(root)
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in must_mention:
        assert word in lines[0], lines[0]
    assert snapshot(root) == before, "a failed command changed files"
    return lines[0]


def _train(world, *extra, data=None, run=None, sampler="random", **opts):
    args = train_args(data or world["data"], run or (world["root"] / "new_run"), sampler, 3, **opts)
    return ["train", *args, *extra]


CASES = {
    "missing dataset": (lambda w: _train(w, data=w["root"] / "nope"), ("not found", "prepare")),
    "folder without meta.json": (lambda w: _train(w, data=w["bad"]["no_meta"]), ("prepare",)),
    "empty train split": (lambda w: _train(w, data=w["bad"]["empty"]), ("0 tokens", "block_size")),
    "fewer tokens than seq_len + 1": (lambda w: _train(w, data=w["bad"]["short"]), ("20 tokens", "33")),
    "token id >= vocab": (lambda w: _train(w, data=w["bad"]["big_id"]), ("at position", "outside the vocabulary")),
    "meta dtype not matching the bin": (lambda w: _train(w, data=w["bad"]["dtype"]), ("bytes", "uint32", "prepare")),
    "meta vocab too big for its dtype": (lambda w: _train(w, data=w["bad"]["vocab"]), ("cannot hold vocab_size",)),
    "meta count not matching the bin": (lambda w: _train(w, data=w["bad"]["count"]), ("bytes", "prepare")),
    "unknown preset": (lambda w: ["train", "babyy"], ("unknown preset", "'baby'")),
    "mistyped key": (lambda w: _train(w, "--learnin_rate", "0.1"), ("learnin_rate", "--learning_rate")),
    "mistyped alias": (lambda w: _train(w, "--n_layers_", "2"), ("--n_layers",)),
    "wrong type": (lambda w: _train(w, "--n_layer", "two"), ("n_layer", "int")),
    "lr zero": (lambda w: _train(w, "--learning_rate", "0"), ("learning_rate", "> 0")),
    "lr negative": (lambda w: _train(w, "--learning_rate", "-1e-3"), ("learning_rate",)),
    "batch not divisible": (lambda w: _train(w, "--train_batch_size", "10", "--batch_size", "0",
                                             "--gradient_accumulation_steps", "3"), ("divisible", "multiple of 3")),
    "last_n not dividing seq_len": (lambda w: _train(w, "--last_n", "5"), ("last_n", "divide")),
    "existing run folder": (lambda w: _train(w, run=w["run"]), ("exists", "--resume", "--overwrite")),
    "resume and overwrite": (lambda w: _train(w, "--resume", "--overwrite", run=w["run"]), ("--resume", "--overwrite")),
    "resume with nothing to resume": (lambda w: _train(w, "--resume", run=w["root"] / "missing_run"), ("--resume",)),
    "resume with another n_layer": (lambda w: _train(w, "--resume", run=w["run"], n_layer=2), ("n_layer", "config.json")),
    "resume with another sampler": (lambda w: _train(w, "--resume", run=w["run"], sampler="stream"), ("sampler",)),
    "resume with another seed": (lambda w: _train(w, "--resume", run=w["run"], seed=8, lr_decay_iters=2), ("seed",)),
    "eval with a mismatched config": (lambda w: ["eval", "--checkpoint_file", str(w["run"] / "checkpoints" / "model.pt"),
                                                 "--config_file", str(w["other_cfg"]), "--eval_data_split", "val"],
                                      ("does not fit",)),
    "eval of a missing split": (lambda w: ["eval", "--run", str(w["run"]), "--eval_data_split", "test"], ("test",)),
    "unknown prepare recipe": (lambda w: ["prepare", "txt", "--out", str(w["root"] / "p")], ("'text'",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clean_line(world, capsys, case):
    build, words = CASES[case]
    expect_user_error(build(world), capsys, world["root"], words)


def test_token_ids_beyond_vocab_are_refused_at_prepare(tmp_path):
    w = tk.SplitWriter(tmp_path, "train", np.uint16, vocab_size=65)
    with pytest.raises(UserError, match="outside the vocabulary"):
        w.append(np.array([1, 2, 300]))
    w.close()
    assert (tmp_path / "train.bin.partial").stat().st_size == 0  # nothing of the batch was written


@pytest.mark.parametrize("content", [b"bad \x80\x81 bytes \xc3", b""], ids=["non-utf8", "empty"])
def test_prepare_refuses_unreadable_text(tmp_path, capsys, content):
    src = tmp_path / "in.txt"
    src.write_bytes(content)
    line = expect_user_error(["prepare", "text", "--input", str(src), "--tokenizer", "char",
                              "--out", str(tmp_path / "old")], capsys, tmp_path / "none")
    assert ("UTF-8" in line) if content else ("empty" in line)


def test_prepare_with_unreadable_text_leaves_out_dir_alone(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_bytes(b"\xff\xfe")
    data = make_dataset(tmp_path / "d")
    before = snapshot(tmp_path)
    rc = cli.main(["prepare", "text", "--input", str(src), "--tokenizer", "char", "--out", str(data), "--overwrite"])
    capsys.readouterr()
    assert rc == 2 and snapshot(tmp_path) == before


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "gptlab", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_real_command_exits_2_with_one_line(world):
    """The process-level contract, on the two commands that import torch and read user files."""
    import pickle

    root = world["root"]
    marker = root.parent / f"{root.name}_PWNED"
    # A checkpoint that would run code if it were unpickled without weights_only.
    (root / "evil.pt").write_bytes(pickle.dumps({"model": {}, "x": _Payload(marker)}))
    before = snapshot(root)
    runs = [
        _cli(_train(world, data=world["bad"]["big_id"]), root),
        _cli(["eval", "--checkpoint_file", str(root / "evil.pt"), "--config_file", str(world["run"] / "config.json"),
              "--eval_data_split", "val"], root),
    ]
    for r in runs:
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, r.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert snapshot(root) == before
    assert not marker.exists()
    assert "not a valid gptlab/PyTorch checkpoint" in runs[1].stderr


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


# --------------------------------------------------------------------------------------
# Fuzz: random bytes and truncated copies of real files, as every file a user can give us.
# --------------------------------------------------------------------------------------

def _mutants(good: bytes, rng: random.Random, n: int) -> list[bytes]:
    out = [b"", os.urandom(1), os.urandom(len(good) or 16)]
    for _ in range(n):
        kind = rng.choice(["truncate", "random", "flip", "splice"])
        if kind == "truncate" and len(good) > 1:
            out.append(good[: rng.randrange(1, len(good))])
        elif kind == "random":
            out.append(os.urandom(rng.randrange(1, 4096)))
        elif kind == "flip" and good:
            b = bytearray(good)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            out.append(bytes(b))
        else:
            cut = rng.randrange(len(good) + 1)
            out.append(good[:cut] + os.urandom(rng.randrange(1, 64)) + good[cut:])
    return out


def _clean(argv, capsys, allowed=(2,)):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc in allowed, (argv, err)
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    return rc


def test_fuzz_every_user_file(world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ or logs/ of the repository in reach
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    seed_note = rng.random()
    good_data, run = world["data"], world["run"]

    # Dataset files: meta.json, a bin, the document starts. Each goes into a fresh copy of the
    # good dataset, and training on it must stop with a user error before anything runs.
    targets = {"meta.json": 14, "train.bin": 10, "train.docs.npy": 8, "val.bin": 6}
    for name, n in targets.items():
        good = (good_data / name).read_bytes()
        for i, blob in enumerate(_mutants(good, rng, n)):
            d = tmp_path / f"data_{name}_{i}"
            shutil.copytree(good_data, d)
            (d / name).write_bytes(blob)
            sampler = "stream" if name.endswith(".npy") else "random"
            # eval_only: a dataset that happens to stay valid is scored once instead of trained on
            args = ["train", *train_args(d, tmp_path / f"run_{name}_{i}", sampler, 2, eval_only="true")]
            rc = _clean(args, capsys, allowed=(0, 2))
            if rc == 0:  # only possible when the mutation left a consistent dataset
                meta = tk.read_meta(d)
                for s in meta["splits"]:
                    tk.check_token_range(tk.load_split(d, s, meta), meta["vocab_size"])

    # Checkpoints: given to eval, and dropped into a run as its newest checkpoint for --resume.
    good_ckpt = (run / "checkpoints" / "model.pt").read_bytes()
    for i, blob in enumerate(_mutants(good_ckpt, rng, 12)):
        f = tmp_path / f"ckpt_{i}.pt"
        f.write_bytes(blob)
        _clean(["eval", "--checkpoint_file", str(f), "--config_file", str(run / "config.json"),
                "--eval_data_split", "val", "--max_eval_steps", "1"], capsys, allowed=(0, 2))  # flipped weights may still load
        try:
            ck.load_checkpoint(f)
        except UserError:
            pass

    # Configs: TOML for train, config.json for eval.
    toml_good = (f'preset = "baby"\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 32\n'
                 f'[data]\ndataset = "{good_data}"\n[train]\nmax_iters = 2\neval_only = true\n').encode()
    for i, blob in enumerate(_mutants(toml_good, rng, 25) + [b'preset = 5\n', b'[[model]]\nn_layer = 1\n',
                                                              b'[model]\nn_layer = {a = 1}\n', b'n_layer = nan\n']):
        f = tmp_path / f"c_{i}.toml"
        f.write_bytes(blob)
        # out_dir points at a finished run: a config that is still valid stops there, never trains.
        _clean(["train", str(f), "--out_dir", str(run)], capsys)
    cfg_good = (run / "config.json").read_bytes()
    structured = []
    for key, val in [("n_layer", "x"), ("n_layer", [1]), ("dropout", {"a": 1}), ("qkv", 3), ("learning_rate", None),
                     ("n_head", True), ("block_size", 1.5), ("max_iters", float("inf"))]:
        c = json.loads(cfg_good)
        for section in c.values():
            if isinstance(section, dict) and key in section:
                section[key] = val
        structured.append(json.dumps(c).encode())
    structured += [b"[]", b"null", b'{"model": 3}', b'{"nope": {}}', b'{"model": {"n_layerz": 1}}']
    for i, blob in enumerate(_mutants(cfg_good, rng, 20) + structured):
        f = tmp_path / f"config_{i}.json"
        f.write_bytes(blob)
        _clean(["eval", "--checkpoint_file", str(run / "checkpoints" / "model.pt"), "--config_file", str(f),
                "--eval_data_split", "val", "--max_eval_steps", "1"], capsys, allowed=(0, 2))
    assert seed_note is not None


# --------------------------------------------------------------------------------------
# Concurrency and signals: a live trainer's lock keeps every second writer out; a killed
# trainer's lock is stale and the next --resume takes it over.
# --------------------------------------------------------------------------------------

def _start_trainer(data: Path, run: Path, cwd: Path) -> subprocess.Popen:
    """A real `gptlab train` that runs until stopped, checkpointing every step."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = train_args(data, run, "random", 100000, checkpoint_interval=1, eval_iters=1)
    return subprocess.Popen([sys.executable, "-m", "gptlab", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, what: str) -> None:
    import time

    for _ in range(1200):  # polls, not a timing assertion: up to 2 minutes on a loaded machine
        if path.exists():
            return
        assert proc.poll() is None, f"trainer exited early: {proc.stderr.read()}"
        time.sleep(0.1)
    pytest.fail(f"{what} never appeared")


def test_second_trainer_into_a_running_out_dir_is_refused(world, tmp_path, capsys):
    from gptlab.files import LOCK_FILE

    run = tmp_path / "run"
    proc = _start_trainer(world["data"], run, tmp_path)
    try:
        _wait_for(run / "checkpoints" / "latest", proc, "the first checkpoint")
        for extra in ([], ["--resume"], ["--overwrite"]):
            args = ["train", *train_args(world["data"], run, "random", 3, eval_iters=1), *extra]
            rc = cli.main([str(a) for a in args])
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1, (extra, err)
            assert f"pid {proc.pid}" in err[0] and LOCK_FILE in err[0], err[0]
        assert not [p for p in tmp_path.iterdir() if ".old-" in p.name]  # --overwrite moved nothing aside
        assert proc.poll() is None  # the first trainer is untouched and still running
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    assert not (run / LOCK_FILE).exists()  # released on a clean stop


def test_killed_trainer_leaves_a_stale_lock_that_resume_takes_over(world, tmp_path, capsys):
    import signal

    from gptlab.files import LOCK_FILE

    run = tmp_path / "run"
    proc = _start_trainer(world["data"], run, tmp_path)
    try:
        _wait_for(run / "checkpoints" / "latest", proc, "the first checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == proc.pid  # left behind by the kill
    step = int(ck.CKPT_RE.match(ck.list_checkpoints(run)[0].name).group(1))
    args = ["train", *train_args(world["data"], run, "random", step + 1, eval_iters=1, lr_decay_iters=100000),
            "--resume"]
    assert cli.main([str(a) for a in args]) == 0, capsys.readouterr().err
    assert "stale lock" in capsys.readouterr().out
    assert not (run / LOCK_FILE).exists()


@pytest.mark.parametrize("command", ["train", "sample", "eval"])
def test_device_cuda_without_cuda_real_command(world, tmp_path, command):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = {"train": ["train", *train_args(world["data"], tmp_path / "r", "random", 2), "--device", "cuda"],
            "sample": ["sample", "--run", str(world["run"]), "--device", "cuda"],
            "eval": ["eval", "--run", str(world["run"]), "--eval_data_split", "val", "--device", "cuda"]}[command]
    before = snapshot(world["root"])
    r = _cli(argv, tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--device cpu" in lines[0] and "CUDA build of torch" in lines[0]
    assert snapshot(world["root"]) == before and list(tmp_path.iterdir()) == []
