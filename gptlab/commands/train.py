"""`gptlab train [PRESET | FILE.toml|.py|.json] [--key value ...]`."""

from __future__ import annotations


def config_from_argv(argv: list[str], check: bool = True):
    """The Config of `gptlab train [PRESET | FILE.toml|.py|.json] [--key value ...]`; check=False: unvalidated."""
    from gptlab.config_files import build_config, parse_overrides

    first = argv[0] if argv and not argv[0].startswith("-") else ""
    is_file = first.endswith((".toml", ".py", ".json")) or "/" in first or "\\" in first
    preset, config_file = (None, first) if is_file else (first or None, None)
    return build_config(preset, config_file, parse_overrides(argv[1:] if first else argv, options=True),
                        check=check)


def main(argv: list[str]) -> int:
    from gptlab import registry
    from gptlab.args import take_flag
    from gptlab.config import help_text, is_builtin
    from gptlab.errors import UserError
    from gptlab.train import train

    trust_code, rest = take_flag(argv, "--trust_code")
    if any(a in ("-h", "--help") for a in rest):
        rest = [a for a in rest if a not in ("-h", "--help")]
        shown = config_from_argv(rest, check=False) if rest and not rest[0].startswith("-") or \
            any(a.split("=", 1)[0] == "--model" for a in rest) else None
        if shown and not is_builtin(shown.model.model) and (trust_code or not _names_a_run(rest)):
            registry.resolve_model(shown.model)  # the idea's own keys, with their defaults
        print("usage: gptlab train [PRESET | CONFIG.toml | nanoGPT_config.py | RUN/config.json] [--key=value ...]"
              " [--model FILE.py:Class] [--trust_code]\n")
        print(help_text(shown))
        return 0
    cfg = config_from_argv(rest)
    if _names_a_run(rest) and not is_builtin(cfg.model.model) and not trust_code:
        raise UserError(f"{rest[0]} names the model idea {cfg.model.model.rsplit(':', 1)[0]}: gptlab runs code "
                        "named by a run's config only with --trust_code; read it, then add --trust_code")
    train(cfg, argv, trust_code)
    return 0


def _names_a_run(argv: list[str]) -> bool:
    """Is the config a run's config.json (whose model idea is code the run carries)?"""
    return bool(argv) and argv[0].endswith(".json")
