import json

import pytest

from gptlab import resolve as resolution
from gptlab.budget import budget_report, main, steps_for_budget, token_budget
from gptlab.config_files import build_config
from gptlab.errors import UserError


# The step counts the Languini GPT README publishes for its compute classes.
@pytest.mark.parametrize("hours,tps,bsz,steps", [
    (6, 55416, 128, 18265),
    (12, 55416, 128, 36529),
    (24, 55416, 256, 36529),
    (48, 16618, 256, 21908),
    (96, 16618, 256, 43817),
])
def test_published_step_counts(hours, tps, bsz, steps):
    assert steps_for_budget(hours, tps, bsz, 512) == steps


def test_token_budget_and_seconds_per_step():
    assert token_budget(6, 55416) == 6 * 3600 * 55416
    assert budget_report(6, 55416, 128, 512)["accel_seconds_per_step"] == pytest.approx(128 * 512 / 55416)


@pytest.mark.parametrize("args", [(0, 55416, 128, 512), (6, 0, 128, 512), (6, 55416, 0, 512),
                                  (6, 55416, 128, -1), (float("nan"), 1, 1, 1), (1e-9, 1, 128, 512)])
def test_bad_inputs_are_user_errors(args):
    with pytest.raises(UserError):
        steps_for_budget(*args)


def _resolved(cfg, world_size=1):
    return resolution.resolve(cfg, world_size=world_size, device="cpu", data_meta=None)


def test_compute_class_sets_steps_small_6h():
    cfg = _resolved(build_config("small", overrides={"compute_class": "6h", "tokens_per_second": 55416}))
    assert cfg.train.max_iters == 18265
    assert cfg.optim.lr_decay_iters == 18265


def test_compute_class_medium_48h_with_languini_flags(monkeypatch):
    monkeypatch.setattr(resolution, "check_memory", lambda cfg: None)  # the memory check is not the point
    cfg = build_config("medium", overrides={"compute_class": "48", "tokens_per_second": 16618,
                                            "train_batch_size": 256, "gradient_accumulation_steps": 32})
    final = _resolved(cfg, world_size=4)  # global batch, so the world size changes nothing
    assert (final.train.max_iters, final.optim.lr_decay_iters) == (21908, 21908)


def test_without_compute_class_steps_are_kept():
    cfg = _resolved(build_config("small", overrides={"max_train_steps": 123, "decay_steps": 77}))
    assert (cfg.train.max_iters, cfg.optim.lr_decay_iters) == (123, 77)


def test_compute_class_needs_throughput():
    cfg = build_config("small")
    cfg.train.compute_class = "6h"  # set after validation, as a caller might
    with pytest.raises(UserError, match="tokens_per_second"):
        _resolved(cfg)


def test_cli_prints_budget(capsys):
    assert main(["--hours", "6h", "--tokens_per_second", "55416", "--train_batch_size", "128",
                 "--seq_len", "512"]) == 0
    out = capsys.readouterr().out
    assert "18,265" in out and "1,196,985,600" in out and "--max_train_steps 18265" in out


def test_cli_json(capsys):
    main(["--hours", "96", "--tokens_per_second", "16618", "--train_batch_size", "256", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["steps"] == 43817 and r["seq_len"] == 512
    assert r["accel_seconds_per_step"] == pytest.approx(256 * 512 / 16618)


@pytest.mark.parametrize("hours", ["six", "-1", "0h", "nan", "inf"])
def test_cli_bad_hours_names_the_flag(hours):
    with pytest.raises(UserError, match=r"^--hours ") as e:
        main(["--hours", hours, "--tokens_per_second", "1", "--train_batch_size", "1"])
    assert "compute_class" not in str(e.value)


# The benchmark's README recipes: --compute_class alone selects batch, accumulation, throughput, steps.
@pytest.mark.parametrize("size,cc,bsz,accum,tps,steps", [
    ("small", "6h", 128, 4, 55416, 18265),
    ("small", "12h", 128, 4, 55416, 36529),
    ("small", "24h", 256, 8, 55416, 36529),
    ("medium", "48h", 256, 32, 16618, 21908),
    ("medium", "96h", 256, 32, 16618, 43817),
])
def test_compute_class_selects_the_published_recipe(size, cc, bsz, accum, tps, steps, monkeypatch):
    cfg = build_config(size, overrides={"compute_class": cc})
    t = cfg.train
    assert (t.train_batch_size, t.gradient_accumulation_steps, t.tokens_per_second) == (bsz, accum, tps)
    monkeypatch.setattr(resolution, "check_memory", lambda cfg: None)
    final = _resolved(cfg)
    assert final.train.max_iters == final.optim.lr_decay_iters == steps
    # The benchmark's eval size, periodic checkpoints and gradient logging come with every Languini preset.
    assert (t.eval_batch_size, t.eval_iters, t.eval_interval, t.checkpoint_interval, cfg.log.log_grads_every) == \
        (16, 500, 500, 1000, 1000)


def test_compute_class_recipe_yields_to_the_command_line():
    cfg = build_config("small", overrides={"compute_class": "24h", "train_batch_size": 64, "tokens_per_second": 50000})
    assert (cfg.train.train_batch_size, cfg.train.gradient_accumulation_steps, cfg.train.tokens_per_second) == (64, 8, 50000)
    # A class whose recipe is for another size: the size's reference throughput, the preset's batch.
    cfg = build_config("mini", overrides={"compute_class": "6h"})
    assert (cfg.train.train_batch_size, cfg.train.tokens_per_second) == (128, 238719)
    assert build_config("small").train.tokens_per_second == 0  # no class: no recipe
