"""Config file formats and layering: TOML, nanoGPT .py (a bounded `ast` walk, never exec), a run's
config.json, `--key value` overrides; build_config layers defaults -> preset -> file -> CLI."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

from gptlab import pyconfig
from gptlab.config import (
    FIELD_INFO,
    NANOGPT_BASE,
    NO_MEANING,
    OPTIONS,
    PRESETS,
    SECTIONS,
    Config,
    canonical_key,
    is_builtin,
    is_key,
    languini_recipe,
    unknown_key_message,
)
from gptlab.config_check import validate
from gptlab.errors import UserError
from gptlab.files import closest_path, read_json, read_toml


def layer_key(key: str, where: str = "") -> str | None:
    """The canonical key, or None (after a note) for a flag with no meaning here; `where` (file:line)
    opens both."""
    bare = key.replace("-", "_")
    if bare in NO_MEANING:
        print(f"note: {where}--{bare} is accepted but has no effect: {NO_MEANING[bare]}",
              file=sys.stderr)
        return None
    return canonical_key(bare, where)


def load_py_config(path: str | Path) -> dict[str, Any]:
    """A nanoGPT-style config file (`key = value` lines), read with ast under pyconfig's limits, never
    executed."""
    p = Path(path)
    try:
        with open(p, "rb") as f:  # one byte past the limit is enough to refuse it
            text = f.read(pyconfig.LIMITS.source_bytes + 1).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a readable Python config file (not UTF-8 text): fix its "
                        "encoding") from None
    except OSError as e:
        raise UserError(f"cannot read config file {p}: {e.strerror}: check the path and its "
                        "permissions") from None
    out: dict[str, Any] = {}
    for assignment in pyconfig.read_assignments(text, str(p)):
        for name in assignment.names:
            key = layer_key(name, f"{p}:{assignment.line}: ")
            if assignment.value is not pyconfig.COMPUTED:
                if key is not None:
                    out[key] = assignment.value
            # only names things: nanoGPT's 'ft-' + str(time.time()) is dropped, not refused
            elif key == "wandb_run":
                print(f"note: {p}:{assignment.line}: {name} is computed, not a literal; ignored (the "
                      "run folder's name is used)", file=sys.stderr)
            else:
                raise UserError(f"{p}:{assignment.line}: `{assignment.text}` is not a literal value: "
                                "gptlab reads config files without running them; write the value "
                                f"itself, e.g. {name} = 5 * 8")
    return out


def load_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(values, base layer, preset label) of a .toml, a nanoGPT .py (over NANOGPT_BASE) or a run's
    config.json."""
    p = Path(path)
    if not p.is_file():
        close = closest_path(p, (".toml", ".py", ".json"))
        raise UserError(f"config file {str(p)!r} not "
                        "found" + (f": did you mean {str(close)!r}?" if close else
                        ": give the path of a .toml, a nanoGPT .py or a run's config.json"))
    if p.suffix == ".py":  # train_shakespeare_char.py -> runs under .../train_shakespeare_char/
        return load_py_config(p), NANOGPT_BASE, "".join(c if c.isalnum() or c in "._-" else "-"
                                                        for c in p.stem)
    if p.suffix == ".json":
        saved = load_run_config(p)
        return {k: saved.get(k) for k in FIELD_INFO} | saved.model.options, {}, saved.preset
    # TOML: flat keys and/or [section] tables, plus an optional `preset = "..."`.
    flat: dict[str, Any] = {}
    for k, v in read_toml(p, "config file").items():
        if isinstance(v, dict) and k not in SECTIONS:
            raise UserError(f"{p}: unknown section [{k}]; sections are {', '.join(SECTIONS)}")
        flat.update(v if isinstance(v, dict) else {k: v})
    return flat, {}, None


def parse_overrides(argv: list[str], options: bool = False) -> dict[str, str]:
    """`--key=value` or `--key value` pairs; a bare `--flag` means true. options=True: a key gptlab does
    not know is kept as given, for build_config to treat as an idea's option (or refuse)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        if not argv[i].startswith("--"):
            raise UserError(f"unexpected argument {argv[i]!r}: overrides look like --key=value or --key "
                            "value")
        key, eq, value = argv[i][2:].partition("=")
        if not eq:  # the next argument is the value unless it is another --flag
            has_value = i + 1 < len(argv) and not (argv[i + 1].startswith("--") and len(argv[i + 1]) > 2)
            value = argv[i + 1] if has_value else "true"
            i += has_value
        i += 1
        bare = key.replace("-", "_")
        key = bare if options and not is_key(bare) and bare not in NO_MEANING else layer_key(key)
        if key is not None:
            out[key] = value
    return out


def split_options(cfg: Config, layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The keys of `layers` that are not gptlab's: an idea's options (typed when the idea is loaded),
    or, for the built-in model, the first one refused as an unknown key."""
    unknown: dict[str, Any] = {}
    for layer in layers:  # a TOML [model] table may hold them as `options = {...}` too
        for k, v in layer.items():
            if k == OPTIONS and isinstance(v, dict):
                unknown.update(v)
            elif not is_key(k):
                unknown[k.replace("-", "_")] = v
    for layer in layers:
        for k in [k for k in layer if not is_key(k)]:
            del layer[k]
    if unknown and is_builtin(cfg.model.model):
        raise UserError(unknown_key_message(next(iter(unknown))))
    return unknown


def build_config(preset: str | None = None, config_file: str | None = None,
                 overrides: dict[str, Any] | None = None, check: bool = True) -> Config:
    """defaults -> preset (or NANOGPT_BASE under a .py file) -> config file -> overrides; validated
    unless check=False."""
    cfg = Config()
    file_values, base, label = load_config_file(config_file) if config_file else ({}, {}, None)
    preset = preset or file_values.get("preset")
    file_values.pop("preset", None)
    overrides = overrides or {}
    if preset and not isinstance(preset, str):  # e.g. `preset = 5` in a TOML file
        raise UserError(f"preset must be a name like 'baby' or 'small', got {preset!r}")
    if preset:  # "xl" works for "XL"
        preset = cfg.preset = {k.lower(): k for k in PRESETS}.get(preset.lower(), preset)
    if preset and preset not in PRESETS:
        close = difflib.get_close_matches(preset, list(PRESETS), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}?" if close else f"presets: {', '.join(PRESETS)}"
        raise UserError(f"unknown preset {preset!r}: {hint}")
    if label and not preset:
        cfg.preset = label
    # Keys gptlab does not know are an idea's options (typed when it is loaded), refused for the GPT.
    file_values, overrides = dict(file_values), dict(overrides)
    cfg.model.model = str(overrides.get("model", file_values.get("model", "gpt")))
    options = split_options(cfg, [file_values, overrides])
    # A Languini preset under --compute_class takes that class's published recipe, below what
    # the config file and the command line set.
    chosen = {canonical_key(k): v for k, v in {**file_values, **overrides}.items()}
    recipe = languini_recipe(preset, str(chosen.get("compute_class", "")))
    for layer in (base, PRESETS[preset] if preset else {}, recipe, file_values, overrides):
        keys = {canonical_key(k) for k in layer}
        # Two ways to say the batch size: the one a layer names wins over the other.
        if "batch_size" in keys and "train_batch_size" not in keys:
            cfg.train.train_batch_size = 0
        if "train_batch_size" in keys and "batch_size" not in keys:
            cfg.train.batch_size = 0
        for k, v in layer.items():
            cfg.set(k, v)
    cfg.model.options = options
    if check:
        validate(cfg)
    return cfg


def load_run_config(path: str | Path) -> Config:
    """Rebuild a Config from a run's config.json (every caller has checked that the file exists)."""
    d = read_json(Path(path), "run config")
    if not isinstance(d, dict):
        raise UserError(f"{path} does not hold a config object")
    return Config.from_dict(d)
