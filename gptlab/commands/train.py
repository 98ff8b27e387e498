"""`gptlab train [PRESET | FILE.toml|.py|.json] [--key value ...]`."""

from __future__ import annotations


def config_from_argv(argv: list[str], check: bool = True):
    """The Config of `gptlab train [PRESET | FILE.toml|.py|.json] [--key value ...]`; check=False: unvalidated."""
    from gptlab.config_files import build_config, parse_overrides

    first = argv[0] if argv and not argv[0].startswith("-") else ""
    is_file = first.endswith((".toml", ".py", ".json")) or "/" in first or "\\" in first
    preset, config_file = (None, first) if is_file else (first or None, None)
    return build_config(preset, config_file, parse_overrides(argv[1:] if first else argv), check=check)


def main(argv: list[str]) -> int:
    from gptlab.config import help_text

    if any(a in ("-h", "--help") for a in argv):
        argv = [a for a in argv if a not in ("-h", "--help")]
        shown = config_from_argv(argv, check=False) if argv and not argv[0].startswith("-") else None
        print("usage: gptlab train [PRESET | CONFIG.toml | nanoGPT_config.py | RUN/config.json] [--key=value ...]\n")
        print(help_text(shown))
        return 0
    from gptlab.train import train

    train(config_from_argv(argv), argv)
    return 0
