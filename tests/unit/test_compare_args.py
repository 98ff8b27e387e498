"""gptlab compare's arguments: entries, scoped overrides, refusals before anything is written."""

from pathlib import Path

import pytest

from gptlab.compare import PLAN_FILE, code_kind, make_plan, parse_entries, split_argv
from gptlab.compare_run import run_plan
from gptlab.errors import UserError

IDEA = """import torch.nn as nn
class Net(nn.Module):
    def __init__(self, config):
        super().__init__()
def build(model, config):
    return None
"""


def _argv(data_dir, *extra):
    return [
        "baseline=baby",
        "--dataset",
        str(data_dir),
        "--compute_class",
        "0.001h",
        "--tokens_per_second",
        "1000",
        "--test_split",
        "val",
        "--eval_last_n",
        "16",
        "--block_size",
        "32",
        *extra,
    ]


def test_entries_and_scoped_overrides(tmp_path):
    idea = tmp_path / "idea.py"
    idea.write_text(IDEA)
    positionals, own, shared, scoped = split_argv(
        [
            "baseline=small",
            f"net={idea}:Net",
            f"opt={idea}:build",
            "net.n_layer=2",
            "--seeds",
            "2",
            "--n_head",
            "4",
            "--opt.learning_rate=0.01",
            "--trust_code",
        ]
    )
    entries = parse_entries(positionals, scoped)
    assert [(e.name, e.kind, e.preset) for e in entries] == [
        ("baseline", "preset", "small"),
        ("net", "model", "small"),
        ("opt", "optimizer", "small"),
    ]
    assert own["seeds"] == "2" and own["trust_code"] == "true" and shared == {"n_head": "4"}
    assert entries[1].overrides == {"n_layer": "2"} and entries[2].overrides == {"learning_rate": "0.01"}
    assert entries[1].config_argv(shared) == [
        "small",
        "--n_head=4",
        "--n_layer=2",
        f"--model={idea}:Net",
    ]
    assert entries[2].config_argv(shared)[-1] == f"--optimizer={idea}:build"
    assert list(entries[1].files.values())[0] == __import__("hashlib").sha256(IDEA.encode()).hexdigest()


def test_module_specs_are_read_without_importing():
    kind, path = code_kind("gptlab.optimizers:muon_with_adamw")
    assert kind == "optimizer" and path.name == "optimizers.py"
    assert code_kind("gptlab.optimizers:ChainedOptimizer")[0] == "model"  # a class: the model slot


@pytest.mark.parametrize(
    "positionals,message",
    [
        (["idea=x.py:Net"], "file x.py not found"),
        (["idea=no_such.module:Net"], "no Python file or importable module"),
        (["1bad=small"], "entry '1bad=small'"),
        (["a=small", "a=baby"], "given twice"),
        (["a=small", "b.n_layer=2"], "names no entry"),
        (["a=gptlab/stats.py:nothing"], "no class or function 'nothing'"),
    ],
)
def test_bad_entries(positionals, message):
    with pytest.raises(UserError, match=message):
        parse_entries(*split_argv(positionals)[::3])


def test_no_preset_entry(tmp_path):
    idea = tmp_path / "idea.py"
    idea.write_text(IDEA)
    with pytest.raises(UserError, match="no preset entry"):
        parse_entries([f"net={idea}:Net"], {})


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--seeds", "0"], "--seeds '0' must be a positive"),
        (["--out_dir", "x"], "--out_dir is set by compare"),
        (["--baseline.seed", "3"], "--baseline.seed is set by compare"),
        (["--eval_last_n", "24"], "does not divide"),
        (["--test_split", "test"], "no split 'test'"),
        (["--n_layr", "2"], "did you mean --n_layer"),
    ],
)
def test_refusals_name_the_fix(char_dataset, extra, message):
    with pytest.raises(UserError, match=message):
        make_plan(_argv(char_dataset, *extra))


def test_missing_budget_figures(char_dataset):
    with pytest.raises(UserError, match="--compute_class is required"):
        make_plan(["baseline=baby", "--dataset", str(char_dataset)])
    with pytest.raises(UserError, match="no published reference throughput"):
        make_plan(["baseline=baby", "--dataset", str(char_dataset), "--compute_class", "1h"])


def test_a_folder_compare_did_not_make_is_refused_untouched(char_dataset, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    plan = make_plan(_argv(char_dataset, "--out", str(foreign)))
    with pytest.raises(UserError, match="holds no plan.json"):
        run_plan(plan, command=lambda argv: pytest.fail("nothing may run"))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    link = tmp_path / "link"
    link.symlink_to(foreign)
    with pytest.raises(UserError, match="symbolic link"):
        run_plan(make_plan(_argv(char_dataset, "--out", str(link))), command=None)


def test_an_entry_that_changed_is_refused(char_dataset, tmp_path):
    idea = tmp_path / "idea.py"
    idea.write_text(IDEA)
    out = tmp_path / "cmp"
    out.mkdir()
    plan = make_plan(_argv(char_dataset, "--out", str(out)))
    plan.entries[0].spec = "other"  # as if an earlier call had trained baseline=other here
    from gptlab.compare import plan_record
    from gptlab.files import atomic_write_json

    atomic_write_json(out / PLAN_FILE, {"entries": plan_record(plan)})
    with pytest.raises(UserError, match="entry 'baseline': it differs"):
        run_plan(make_plan(_argv(char_dataset, "--out", str(out))), command=None)
    assert Path(out / PLAN_FILE).is_file()


def test_a_folder_of_another_budget_is_refused(char_dataset, tmp_path):
    from gptlab.files import atomic_write_json

    out = tmp_path / "cmp"
    out.mkdir()
    atomic_write_json(out / PLAN_FILE, {"entries": {}, "budget": {"hours": 6.0, "dataset": "books16384"}})
    with pytest.raises(UserError, match="another budget or dataset"):
        run_plan(make_plan(_argv(char_dataset, "--out", str(out))), command=None)
