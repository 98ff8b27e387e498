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
