"""Config: presets, aliases, TOML, overrides, and one-line errors for mistakes."""

import json

import pytest

from gptlab.config import Config, help_text
from gptlab.config_files import build_config, parse_overrides
from gptlab.errors import UserError
from gptlab.resolve import resolve_batch
from tests.conftest import run_cli


def test_both_vocabularies_reach_one_key():
    a = build_config("gpt2", overrides=parse_overrides(["--n_layers", "3", "--h_dim=96", "--max_lr", "1e-3",
                                                        "--seq_len", "128", "--max_train_steps", "7"]))
    assert (a.model.n_layer, a.model.n_embd, a.optim.learning_rate, a.model.block_size, a.train.max_iters) == \
        (3, 96, 1e-3, 128, 7)
    b = build_config("gpt2", overrides=parse_overrides(["--n_layer=3", "--n_embd", "96", "--learning_rate=1e-3",
                                                        "--block_size=128", "--max_iters", "7"]))
    assert a.to_dict() == b.to_dict()


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(UserError, match="--learning_rate"):
        parse_overrides(["--learnig_rate", "1e-3"])
    with pytest.raises(UserError, match="--n_layer"):
        parse_overrides(["--n_layr=2"])


def test_wrong_type_is_a_user_error():
    with pytest.raises(UserError, match="expected int"):
        build_config("baby", overrides={"n_layer": "two"})
    with pytest.raises(UserError, match="expected float"):
        build_config("baby", overrides={"learning_rate": "fast"})
    with pytest.raises(UserError, match="not one of"):
        build_config("baby", overrides={"sampler": "shuffle"})


def test_impossible_values():
    with pytest.raises(UserError, match="learning_rate"):
        build_config("baby", overrides={"learning_rate": 0})
    with pytest.raises(UserError, match="divide"):
        build_config("baby", overrides={"last_n": 7})
    with pytest.raises(UserError, match="--ce_chunk -2"):
        build_config("baby", overrides={"ce_chunk": -2})
    with pytest.raises(UserError, match="--ddp_bucket_mb"):
        build_config("baby", overrides={"ddp_bucket_mb": 0})
    cfg = build_config("small", overrides={"train_batch_size": 130, "gradient_accumulation_steps": 4})
    with pytest.raises(UserError, match="not divisible"):
        resolve_batch(cfg, world_size=1)


def test_chunked_loss_is_on_by_default_only_under_compile():
    from gptlab.loss import resolve_ce_chunk

    assert build_config("gpt2").system.ce_chunk == -1
    assert resolve_ce_chunk(-1, "default", 50304) == 8192 and resolve_ce_chunk(-1, "max-autotune", 50304) == 8192
    assert resolve_ce_chunk(-1, "none", 50304) == 0
    assert resolve_ce_chunk(0, "default", 50304) == 0 and resolve_ce_chunk(100, "none", 50304) == 100


def test_global_and_micro_batch():
    cfg = build_config("small")  # Languini: 128 global, 4 accumulation on each rank
    assert resolve_batch(cfg, 1) == (32, 4, 128)
    assert resolve_batch(cfg, 2) == (16, 4, 128)
    # nanoGPT: batch_size is the micro batch, accumulation is global and split over the ranks.
    cfg = build_config("baby", overrides={"batch_size": 8, "gradient_accumulation_steps": 2})
    assert resolve_batch(cfg, 1) == (8, 2, 16) and resolve_batch(cfg, 2) == (8, 1, 16)
    with pytest.raises(UserError, match="does not divide over 3 ranks"):
        resolve_batch(cfg, 3)
    # No accumulation: one micro-batch on each rank.
    assert resolve_batch(build_config("baby", overrides={"batch_size": 8}), 2) == (8, 1, 16)


def test_gpt2_presets_keep_nanogpts_global_batch():
    """12 x 40 x 1024 = 491,520 tokens per step on 1 GPU or 8 (5 accumulation steps each)."""
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        cfg = build_config(name)
        for world, accum in ((1, 40), (2, 20), (4, 10), (8, 5)):
            split = resolve_batch(cfg, world)
            assert split == (12, accum, 480)
            assert split.global_batch * cfg.model.block_size == 491_520


def test_compile_accepts_both_styles():
    assert build_config("baby", overrides={"compile": "None"}).system.compile == "none"
    assert build_config("baby", overrides={"compile": "True"}).system.compile == "default"
    assert build_config("baby", overrides={"compile": "max-autotune"}).system.compile == "max-autotune"


def test_toml_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('preset = "baby"\nmax_iters = 11\n[optim]\nlearning_rate = 2e-3\n')
    cfg = build_config(None, str(f), {"max_iters": "12"})
    assert cfg.preset == "baby" and cfg.optim.learning_rate == 2e-3 and cfg.train.max_iters == 12
    bad = tmp_path / "bad.toml"
    bad.write_text("max_iters = = 3\n")
    with pytest.raises(UserError, match="not valid TOML"):
        build_config(None, str(bad))


def test_json_round_trip_rebuilds_the_same_config():
    cfg = build_config("small", overrides={"comment": "x"})
    again = Config.from_dict(json.loads(cfg.to_json()))
    assert again.to_dict() == cfg.to_dict()


def test_help_lists_every_key_with_default():
    text = help_text()
    for key in ("--n_layer", "[n_layers]", "--learning_rate", "max_lr", "--train_batch_size", "--log_grads_every"):
        assert key in text
    assert "--block_size [seq_len] = 1024" in text


@pytest.mark.parametrize("args, needle", [
    (["train", "baby", "--n_layr", "2"], "--n_layer"),
    (["train", "bbay"], "baby"),
    (["train", "baby", "--dropout", "high"], "expected float"),
])
def test_cli_config_mistakes_exit_2_with_one_line(args, needle, tmp_path):
    r = run_cli(args, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())  # nothing written
