"""Every configuration problem of a run reported together before anything starts, each with a
command that works: the Languini preset on other data is the worked case."""

from __future__ import annotations

import re

import pytest

from gptlab import cli
from gptlab.data.prepare import prepare

SHRINK = ["--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--head_dim", "16", "--mlp_dim", "64",
          "--block_size", "16", "--device", "cpu", "--compile", "none", "--max_iters", "1", "--eval_iters", "1",
          "--eval_interval", "0", "--train_batch_size", "4", "--gradient_accumulation_steps", "1",
          "--log_root", "logs", "--num_threads", "1"]


@pytest.fixture
def one_book(tmp_path, monkeypatch):
    """A char-level dataset with one document in train and no `test` split (Languini's presets want both)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "book.txt").write_text("a small book about cats and dogs. " * 200)
    prepare("text", input=tmp_path / "book.txt", tokenizer="char", out=tmp_path / "data" / "book", val_fraction=0.1)
    return tmp_path


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_languini_preset_on_other_data_reports_every_problem_at_once(one_book, capsys):
    argv = ["train", "mini", "--dataset", "book", "--vocab_size", "8", *SHRINK]
    assert cli.main(argv) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    text = "\n".join(lines)
    assert "--val_split 'test'" in text and "pass --val_split val" in text
    assert "vocab_size 8 " in text and re.search(r"pass --vocab_size \d+", text)
    assert "1 document(s), too few for 4 document streams" in text and "pass --sampler random" in text
    assert not (one_book / "logs").exists()  # nothing written
    # Every hint is a command: applied together, the run trains.
    fixes = re.findall(r"pass (--\w+ \w+)", text)
    assert len(fixes) == 3
    assert cli.main(argv + " ".join(fixes).split()) == 0


def test_missing_dataset_hint_is_a_prepare_command_that_works(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "baby", "--data_root", "mydata", *SHRINK, "--train_batch_size", "0", "--batch_size", "2"]
    assert cli.main(argv) == 2
    (line,) = _error_lines(capsys)
    command = re.search(r"run `gptlab (prepare [^`]+)`", line).group(1)
    assert command == "prepare shakespeare_char --out mydata/shakespeare_char"
    assert cli.main(command.split()) == 0
    assert cli.main(argv) == 0


def test_languini_books_hint_names_a_recipe_never_the_dataset_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "mini", "--device", "cpu"]) == 2
    (line,) = _error_lines(capsys)
    assert "books16384" in line and "gptlab prepare books16384" not in line
    assert re.search(r"gptlab prepare (openbooks|books --input \S+) --out data/books16384", line), line


def test_under_torchrun_only_rank_zero_reports(one_book, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["train", "mini", "--dataset", "book", *SHRINK]) == 2
    assert capsys.readouterr().err == ""  # rank 0 prints the same problems once
