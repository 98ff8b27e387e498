"""One run loader: a run written by train() with relative paths opens from any other
working directory for sample, eval, export and --init_from."""

import json
import os
from pathlib import Path

import pytest

from gptlab import cli
from gptlab.errors import UserError
from gptlab.runs import load_run


@pytest.fixture
def chdir():
    """chdir(path) for the rest of the test; the old cwd comes back after it."""
    old = os.getcwd()
    yield os.chdir
    os.chdir(old)


@pytest.fixture
def relative_run(char_dataset, tmp_path, chdir, one_thread):
    """A tiny run trained in tmp/project with relative --data_root and --out_dir."""
    from gptlab.config_files import build_config
    from gptlab.train import train

    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "data").rename(project / "data")  # the prepared dataset lives inside the project
    chdir(project)
    cfg = build_config("baby", overrides=dict(
        dataset="tiny_char", data_root="data", out_dir="runs/r1", n_layer=1, n_head=2, n_embd=16, block_size=16,
        batch_size=4, max_iters=4, lr_decay_iters=4, warmup_iters=1, eval_interval=4, eval_iters=1, device="cpu",
        dtype="float32", compile="none", progress="off", tensorboard="false"))
    train(cfg)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    chdir(elsewhere)
    return Path("..") / "project" / "runs" / "r1"


def test_load_run_api_from_another_directory(relative_run):
    run = load_run(relative_run)
    assert run.config.model.vocab_size > 0 and run.data_meta["tokenizer"]["kind"] == "char"
    assert run.tokenizer().decode(run.tokenizer().encode("All:")) == "All:"
    sd, step = run.model_state("last")
    assert step == 4 and "transformer.wte.weight" in sd
    model = run.build_model("cpu")
    assert model.config.vocab_size == run.config.model.vocab_size
    # A checkpoint file inside the run's checkpoints/ opens the same run.
    by_file = load_run(run.checkpoint("last"))
    assert by_file.dir.resolve() == run.dir.resolve() and by_file.checkpoint() == run.checkpoint("last")
    assert run.data_dir().resolve() == (relative_run / ".." / ".." / "data" / "tiny_char").resolve()


def test_sample_eval_export_from_another_directory(relative_run, capsys):
    assert cli.main(["sample", "--out_dir", str(relative_run), "--num_samples", "2", "--max_new_tokens", "8",
                     "--start", "All:"]) == 0
    out = capsys.readouterr().out
    assert out.count("All:") == 2 and "16 tokens" in out
    assert cli.main(["eval", "--run", str(relative_run), "--eval_data_split", "val", "--max_eval_steps", "1"]) == 0
    assert '"split": "val"' in capsys.readouterr().out
    assert cli.main(["export", str(relative_run), "--to", "hf", "exported"]) == 0
    meta = json.loads(Path("exported/data_meta.json").read_text())  # the run's tokenizer travels with it
    assert meta["tokenizer"]["kind"] == "char" and Path("exported/model.safetensors").is_file()
    # The export samples on its own, with the run's character tokenizer.
    assert cli.main(["sample", "--init_from", "exported", "--num_samples", "1", "--max_new_tokens", "4",
                     "--start", "All:"]) == 0
    assert "All:" in capsys.readouterr().out


def test_init_from_run_in_another_directory(relative_run, capsys):
    from gptlab.config_files import build_config
    from gptlab.train import train

    data = (relative_run / ".." / ".." / "data" / "tiny_char").resolve()
    cfg = build_config("baby", overrides=dict(
        dataset=str(data), out_dir="ft", init_from=str(relative_run), batch_size=4, max_iters=2, lr_decay_iters=2,
        warmup_iters=1, eval_interval=2, eval_iters=1, device="cpu", dtype="float32", compile="none",
        progress="off", tensorboard="false"))
    train(cfg)
    src, ft = load_run(relative_run), load_run("ft")
    assert ft.config.model.n_embd == src.config.model.n_embd == 16  # the architecture came from the source run


def test_load_run_errors_are_one_line(tmp_path):
    for bad, match in ((tmp_path / "missing", "not found"), (tmp_path, "no config.json")):
        with pytest.raises(UserError, match=match):
            load_run(bad)
    with pytest.raises(UserError, match="never unpickles"):
        load_run(tmp_path, config_file=tmp_path / "config.pickle")
    stray = tmp_path / "stray.pt"
    stray.write_bytes(b"x")
    with pytest.raises(UserError, match="not inside a run"):
        load_run(stray)
