"""--optimizer muon and --optimizer FILE.py:function through `gptlab train`: a bit-identical resume, the
run's record of the file, and one-line refusals (changed file, missing --trust_code, broken functions)."""

import json
import shutil

import pytest
import torch

from gptlab.commands.train import main as train_main
from gptlab.errors import UserError
from tests.conftest import REPO

COMMON = ["baby", "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "4",
          "--max_iters", "10", "--lr_decay_iters", "10", "--warmup_iters", "2", "--eval_interval", "5",
          "--eval_iters", "2", "--log_interval", "100", "--deterministic", "true", "--tensorboard", "false",
          "--progress", "off", "--device", "cpu"]


def _train(data, run, *extra):
    return train_main([*COMMON, "--dataset", str(data), "--out_dir", str(run), *extra])


def _final(run, step=10):
    return torch.load(run / "checkpoints" / f"ckpt_{step:08d}.pt", weights_only=True)


@pytest.mark.parametrize("optimizer", ["muon", str(REPO / "examples" / "ideas" / "muon.py") + ":keller_muon"])
def test_a_resumed_run_equals_the_straight_one(char_dataset, tmp_path, optimizer, one_thread):
    _train(char_dataset, tmp_path / "straight", "--optimizer", optimizer)
    part = tmp_path / "part"
    _train(char_dataset, part, "--optimizer", optimizer, "--max_iters", "5")
    trust = [] if optimizer == "muon" else ["--trust_code"]
    _train(char_dataset, part, "--optimizer", optimizer, "--resume", *trust)
    straight, resumed = _final(tmp_path / "straight"), _final(part)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for index, state in straight["optimizer"]["state"].items():  # Muon's momentum, AdamW's moments
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed["optimizer"]["state"][index][key]))
    assert any("momentum_buffer" in s for s in straight["optimizer"]["state"].values())


def test_the_run_records_the_file_and_refuses_it_changed(char_dataset, tmp_path, one_thread):
    idea = tmp_path / "my_opt.py"
    shutil.copyfile(REPO / "examples" / "ideas" / "muon.py", idea)
    run = tmp_path / "run"
    _train(char_dataset, run, "--optimizer", f"{idea}:keller_muon", "--max_iters", "5")
    config = json.loads((run / "config.json").read_text())
    import hashlib

    assert config["optim"]["optimizer_sha256"] == hashlib.sha256(idea.read_bytes()).hexdigest()
    assert (run / "idea" / "optimizer_my_opt.py").read_bytes() == idea.read_bytes()
    with pytest.raises(UserError, match="--resume runs the optimiser idea .* --trust_code"):
        _train(char_dataset, run, "--optimizer", f"{idea}:keller_muon", "--resume")
    idea.write_text(idea.read_text().replace("0.02", "0.03"))
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(UserError, match="has changed since the run started"):
        _train(char_dataset, run, "--optimizer", f"{idea}:keller_muon", "--resume", "--trust_code")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


BROKEN = {
    "not_a_function = 3\n": "not a function",
    "def build(model, config):\n    return 'adam'\n": "lacks param_groups",
    "import torch\ndef build(model, config):\n    return torch.optim.SGD(list(model.parameters())[:1], lr=0.1)\n":
        "holds 1 of",
    "def build(model, config):\n    raise RuntimeError('oops')\n": r"my_opt.py:2: RuntimeError: oops",
}


@pytest.mark.parametrize("source,message", list(BROKEN.items()))
def test_broken_optimiser_ideas_are_one_line_errors(char_dataset, tmp_path, source, message):
    idea = tmp_path / "my_opt.py"
    idea.write_text(source)
    name = "not_a_function" if "not_a_function" in source else "build"
    with pytest.raises(UserError, match=message):
        _train(char_dataset, tmp_path / "run", "--optimizer", f"{idea}:{name}")
    assert not (tmp_path / "run").exists()  # nothing written


def test_an_unknown_optimizer_is_refused_before_anything_runs():
    from gptlab.config_files import build_config

    with pytest.raises(UserError, match="did you mean muon"):
        build_config("baby", overrides={"optimizer": "muom"})
