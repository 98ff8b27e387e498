"""`gptlab train [PRESET | FILE.toml|.py|.json] [--key value ...] [--smoke] [--nproc_per_node N ...]`."""

from __future__ import annotations

import os


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
    from gptlab.commands.launch import launch, parse_launch, split_launch_flags
    from gptlab.preflight import check_run_config
    from gptlab.smoke import smoke_overrides, take_smoke_flag
    from gptlab.train import train

    smoke, argv = take_smoke_flag(argv)
    launch_flags, argv = split_launch_flags(argv)
    options = parse_launch(launch_flags, config_from_argv(argv, check=False).system.device) if launch_flags else None
    world = options.world_size if options else int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun: its world
    if smoke:  # the preset shrunk; what the user passed after it still wins
        first = [argv[0]] if argv and not argv[0].startswith("-") else []
        argv = [*first, *smoke_overrides(config_from_argv(argv, check=False), world), *argv[len(first):]]
    cfg = config_from_argv(argv)
    check_run_config(cfg, world)
    if options:  # the workers start here, through PyTorch's elastic launcher
        launch(options, argv, worker)
    else:
        train(cfg, argv)
    return 0


def worker(argv: list[str]) -> dict:
    """One rank (run by the launcher in a fresh process): `gptlab train argv`. An error meant for the
    user is recorded for the launcher, which prints it once with this rank, and ends the process."""
    from gptlab.commands.launch import record_stop
    from gptlab.train import train

    try:
        return train(config_from_argv(argv), argv)
    except Exception as e:
        if getattr(e, "exit_code", None) is None:
            raise
        record_stop(e)
        raise SystemExit(e.exit_code) from None
