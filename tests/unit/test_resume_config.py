"""The batch of a resumed run on another number of processes: the run's global batch, split so that
processes x micro batch x accumulation equals it (checked by multiplication, the split's definition),
with the micro batch never above the run's (the memory a process needs); impossible splits refused."""

from __future__ import annotations

import copy

import pytest

from gptlab.config_files import build_config
from gptlab.errors import UserError
from gptlab.resume import given_keys, split_batch


def _saved(micro: int, accum: int, total: int):
    cfg = build_config("baby")
    cfg.train.batch_size, cfg.train.gradient_accumulation_steps, cfg.train.train_batch_size = micro, accum, total
    return cfg


@pytest.mark.parametrize("saved, world, given, want", [
    ((4, 1, 8), 1, {}, (4, 2)),  # 2 processes x 4 x 1 on one: the same 8 sequences as 4 x 2
    ((4, 2, 8), 2, {}, (4, 1)),
    ((8, 1, 8), 2, {}, (4, 1)),  # the micro batch shrinks only when it must
    ((4, 2, 8), 2, {"batch_size": 4, "gradient_accumulation_steps": 2}, (4, 1)),  # nanoGPT's global count
    ((4, 2, 8), 1, {"gradient_accumulation_steps": 4}, (2, 4)),  # Languini's per-process count
    ((32, 4, 128), 4, {}, (32, 1)),
])
def test_the_global_batch_is_kept_on_any_process_count(saved, world, given, want):
    run = _saved(*saved)
    cfg = copy.deepcopy(run)
    for key, value in given.items():
        cfg.set(key, value)
    notes = []
    split_batch(run, cfg, set(given), world, notes.append)
    t = cfg.train
    assert (t.batch_size, t.gradient_accumulation_steps) == want
    assert world * t.batch_size * t.gradient_accumulation_steps == t.train_batch_size == saved[2]
    assert t.batch_size <= saved[0]
    assert bool(notes) == (want != saved[:2])


@pytest.mark.parametrize("saved, world, given, words", [
    ((4, 1, 8), 3, {}, ("8 sequences cannot be split over 3", "--nproc_per_node 2")),
    ((4, 2, 8), 1, {"batch_size": 3}, ("--batch_size 3", "--batch_size 4 --gradient_accumulation_steps 2")),
])
def test_an_impossible_split_names_the_process_count_and_what_to_pass(saved, world, given, words):
    run = _saved(*saved)
    cfg = copy.deepcopy(run)
    for key, value in given.items():
        cfg.set(key, value)
    with pytest.raises(UserError) as e:
        split_batch(run, cfg, set(given), world)
    assert all(w in str(e.value) for w in words) and "--train_batch_size" not in str(e.value)


def test_given_keys_are_the_flags_and_file_keys_of_the_command(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[optim]\nlr = 0.1\n")
    cfg = build_config("baby")
    assert given_keys(cfg, ["baby", "--out_dir", "r", "--resume", "--n-layers=2"]) == {"out_dir", "resume",
                                                                                      "n_layer"}
    assert given_keys(cfg, [str(toml), "--resume"]) == {"learning_rate", "resume"}
    assert given_keys(build_config(None, None, {"dropout": 0.3}), None) == {"dropout"}
