"""`gptlab demo` is an ordinary run: the resume command printed for it continues it."""

import shlex

from gptlab import cli
from gptlab.commands.demo import demo_argv
from gptlab.train import resume_command

SMALL = ["--max_iters", "3", "--lr_decay_iters", "6", "--warmup_iters", "1", "--eval_interval", "3", "--eval_iters", "1",
         "--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "4",
         "--progress", "off", "--tensorboard", "false"]


def test_demo_then_its_resume_command(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", *SMALL]) == 0
    assert "out/demo" in capsys.readouterr().out
    cmd = shlex.split(resume_command(demo_argv(SMALL)))
    assert cmd[:3] == ["gptlab", "train", "baby"] and "--overwrite" not in cmd
    assert cli.main([*cmd[1:], "--max_iters", "5"]) == 0  # continues out/demo, does not start a new run
    out = capsys.readouterr().out
    assert "resum" in out.lower() and "done: 5 steps" in out


def test_quick_demo_announces_its_evaluation_and_shows_progress(tmp_path, monkeypatch, capsys, one_thread):
    """`gptlab demo --max_iters N`: decays over its N steps; the evaluation says its size before it runs
    (2 splits x 25 batches x 16 streams x 16 tokens = 6,400 targets each) and shows its progress."""
    import json

    monkeypatch.chdir(tmp_path)
    quick = ["--max_iters", "6", "--eval_interval", "6", "--eval_iters", "25", "--eval_cap", "0", *SMALL[4:6], *SMALL[10:]]
    assert cli.main(["demo", *quick]) == 0
    captured = capsys.readouterr()
    out = captured.out
    announced = ("in-training eval: train 25 batches x 16 streams x 16 tokens (6,400 scored) + val 25 batches x "
                 "16 streams x 16 tokens (6,400 scored), every 6 steps and at the end: 1 evaluation(s) in 6 steps")
    assert announced in out and out.index(announced) < out.index("eval step 6:")
    assert out.count("in-training eval:") == 1
    assert "eval step 6 val: 100/100 batches (100%" in captured.err  # forwards of 4 windows
    config = json.loads((tmp_path / "out" / "demo" / "config.json").read_text())
    assert config["optim"]["lr_decay_iters"] == 6 and config["train"]["max_iters"] == 6


def test_short_run_evaluation_is_capped_and_says_so(tmp_path, monkeypatch, capsys, one_thread):
    """6 steps of 4 x 16 tokens train 384 tokens; 25 eval batches of 16 x 16 on 2 splits would score 12,800:
    capped to eval_cap 0.5 of 384 = 192 tokens -> 1 batch (at least one), announced with how to get all."""
    monkeypatch.chdir(tmp_path)
    quick = ["--max_iters", "6", "--eval_interval", "6", "--eval_iters", "25", *SMALL[4:6], *SMALL[10:]]
    assert cli.main(["demo", *quick]) == 0
    out = capsys.readouterr().out
    assert "train 1 batches x 16 streams x 16 tokens (256 scored)" in out
    assert "(capped from --eval_iters 25: evaluation kept to 0.5 of this run's training tokens; --eval_cap 0" in out
