"""An idea in the config: --model and the idea's own keys from the command line and files, their
round trip through config.json, and run-folder names that tell variants apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptlab import registry
from gptlab.args import take_flag
from gptlab.config import Config
from gptlab.config_files import build_config, parse_overrides
from gptlab.errors import UserError
from gptlab.resolve import run_name

REPO = Path(__file__).resolve().parents[2]
MODERN = f"{REPO / 'examples' / 'ideas' / 'modern_block.py'}:ModernGPT"
LANGUINI_6H = ("GPT_books16384_bsz128_micro4_sl512_coslr0.0006to6e-06_h768_ff3072_nH12_dH64_nl12_"
               "clip0.0_decay18k_workers1_defaultCompile_fp16_seed0")


def config(preset: str, *argv: str) -> Config:
    cfg = build_config(preset, None, parse_overrides(list(argv), options=True))
    registry.resolve_model(cfg.model)
    return cfg


def test_the_idea_and_its_keys_come_from_the_command_line_typed():
    cfg = config("baby", "--model", MODERN, "--rope_base", "5e5", "--qk_norm", "yes", "--n_layer", "3")
    assert cfg.model.options == {"rope_base": 500000.0, "qk_norm": True} and cfg.model.n_layer == 3
    assert cfg.model.model == MODERN and len(cfg.model.model_sha256) == 64


def test_the_idea_and_its_keys_come_from_a_toml_file(tmp_path):
    toml = tmp_path / "idea.toml"
    toml.write_text(f'preset = "baby"\n[model]\nmodel = "{MODERN}"\nrope_base = 1000\nn_layer = 2\n')
    cfg = build_config(None, str(toml), parse_overrides(["--qk_norm", "true"], options=True))
    registry.resolve_model(cfg.model)
    assert cfg.model.options == {"rope_base": 1000.0, "qk_norm": True} and cfg.model.n_layer == 2
    toml.write_text(f'preset = "baby"\n[model]\nmodel = "{MODERN}"\noptions = {{ rope_base = 7 }}\n')
    cfg = build_config(None, str(toml))
    registry.resolve_model(cfg.model)
    assert cfg.model.options == {"rope_base": 7.0, "qk_norm": False}


def test_the_builtin_model_still_refuses_unknown_keys():
    with pytest.raises(UserError, match=r"unknown config key 'rope_base'"):
        build_config("baby", None, parse_overrides(["--rope_base", "5"], options=True))
    with pytest.raises(UserError, match=r"did you mean --n_layer"):
        parse_overrides(["--n_layr", "5"])  # the strict form, as before


def test_config_json_round_trip_keeps_the_idea(tmp_path):
    cfg = config("baby", "--model", MODERN, "--rope_base", "123")
    again = Config.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.model.options == {"rope_base": 123.0, "qk_norm": False}
    saved = tmp_path / "config.json"
    saved.write_text(cfg.to_json())
    from_file = build_config(None, str(saved), parse_overrides(["--qk_norm", "true"], options=True))
    assert from_file.model.options == {"rope_base": 123.0, "qk_norm": "true"}  # typed when the idea loads
    bad = json.loads(cfg.to_json())
    bad["model"]["options"] = {"rope_base": [1, 2]}
    with pytest.raises(UserError, match="model.options must map option names"):
        Config.from_dict(bad)


def test_a_presets_own_run_keeps_languinis_name():
    assert run_name(config("small", "--compute_class", "6h", "--compile", "default"), 1) == LANGUINI_6H


@pytest.mark.parametrize("argv", [["--bias", "false"], ["--weight_decay", "0.01"], ["--warmup_iters", "100"],
                                  ["--qkv", "fused"], ["--dropout", "0.1"]])
def test_architecture_and_optimiser_keys_the_name_does_not_show_change_it(argv):
    """Keys outside Languini's name that set the model or optimiser apart (the baseline's too) add a
    short hash of their values; each variant gets its own."""
    name = run_name(config("small", "--compute_class", "6h", "--compile", "default", *argv), 1)
    assert name.startswith(LANGUINI_6H + "_opt") and len(name) == len(LANGUINI_6H) + 10
    other = {"false": "true", "0.01": "0.02", "100": "300", "fused": "separate", "0.1": "0.2"}[argv[1]]
    assert run_name(config("small", "--compute_class", "6h", "--compile", "default", argv[0], other), 1) != name


def test_an_idea_is_named_and_its_options_hashed():
    plain = run_name(config("baby", "--model", MODERN), 1)
    assert plain.startswith("modern_block.ModernGPT_shakespearechar_bsz12_")
    names = {plain, run_name(config("baby", "--model", MODERN, "--rope_base", "500"), 1),
             run_name(config("baby", "--model", MODERN, "--qk_norm", "true"), 1),
             run_name(config("baby"), 1)}
    assert len(names) == 4
    # An explicit default is the same model: the same folder.
    assert run_name(config("baby", "--model", MODERN, "--rope_base", "10000"), 1) == plain


@pytest.mark.parametrize("argv, value, rest", [
    (["--trust_code"], True, []),
    (["a", "--trust_code", "--x", "1"], True, ["a", "--x", "1"]),
    (["--trust_code", "false", "--x"], False, ["--x"]),
    (["--trust_code=yes"], True, []),
    (["--x", "1"], False, ["--x", "1"]),
])
def test_take_flag(argv, value, rest):
    assert take_flag(argv, "--trust_code") == (value, rest)
