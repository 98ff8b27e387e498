"""`gptlab train [PRESET | FILE.toml|.py|.json] [--key value ...] [--model FILE.py:Class] [--trust_code]
[--smoke] [--nproc_per_node N ...]`."""

from __future__ import annotations

import os


def config_from_argv(argv: list[str], check: bool = True):
    """The Config of `gptlab train [PRESET | FILE.toml|.py|.json] [--key value ...]`; check=False:
    unvalidated."""
    from gptlab.config_files import build_config, parse_overrides

    first = argv[0] if argv and not argv[0].startswith("-") else ""
    is_file = first.endswith((".toml", ".py", ".json")) or "/" in first or "\\" in first
    preset, config_file = (None, first) if is_file else (first or None, None)
    return build_config(preset, config_file, parse_overrides(argv[1:] if first else argv, options=True),
                        check=check)


def _help(rest: list[str], trust_code: bool) -> int:
    from gptlab import registry
    from gptlab.config import help_text, is_builtin

    rest = [a for a in rest if a not in ("-h", "--help")]
    shown = config_from_argv(rest, check=False) if rest and not rest[0].startswith("-") or \
        any(a.split("=", 1)[0] == "--model" for a in rest) else None
    if shown and not is_builtin(shown.model.model) and (trust_code or not _names_a_run(rest)):
        registry.resolve_model(shown.model)  # the idea's own keys, with their defaults
    print("usage: gptlab train [PRESET | CONFIG.toml | nanoGPT_config.py | RUN/config.json] "
          "[--key=value ...] [--model FILE.py:Class] [--trust_code] [--smoke] [--nproc_per_node N]\n")
    print(help_text(shown))
    return 0


def main(argv: list[str]) -> int:
    from gptlab.args import take_flag
    from gptlab.commands.launch import launch, parse_launch, split_launch_flags
    from gptlab.config import is_builtin
    from gptlab.errors import UserError
    from gptlab.preflight import check_run_config
    from gptlab.smoke import smoke_overrides, take_smoke_flag
    from gptlab.train import train

    trust_code, rest = take_flag(argv, "--trust_code")
    if any(a in ("-h", "--help") for a in rest):
        return _help(rest, trust_code)
    smoke, rest = take_smoke_flag(rest)
    launch_flags, rest = split_launch_flags(rest)
    options = (parse_launch(launch_flags, config_from_argv(rest, check=False).system.device)
               if launch_flags else None)
    # under torchrun: its world
    world = options.world_size if options else int(os.environ.get("WORLD_SIZE", "1"))
    if smoke:  # the preset shrunk; what the user passed after it still wins
        first = [rest[0]] if rest and not rest[0].startswith("-") else []
        rest = [*first, *smoke_overrides(config_from_argv(rest, check=False), world), *rest[len(first):]]
    cfg = config_from_argv(rest)
    if _names_a_run(rest) and not is_builtin(cfg.model.model) and not trust_code:
        raise UserError(f"{rest[0]} names the model idea {cfg.model.model.rsplit(':', 1)[0]}: gptlab "
                        "runs code named by a run's config only with --trust_code; read it, then add "
                        "--trust_code")
    check_run_config(cfg, world)
    worker_argv = [*rest, "--trust_code"] if trust_code else rest
    if options:  # the workers start here, through PyTorch's elastic launcher
        launch(options, worker_argv, worker)
    else:
        train(cfg, worker_argv, trust_code)
    return 0


def _names_a_run(argv: list[str]) -> bool:
    """Is the config a run's config.json (whose model idea is code the run carries)?"""
    return bool(argv) and argv[0].endswith(".json")


def worker(argv: list[str]) -> dict:
    """One rank (run by the launcher in a fresh process): `gptlab train argv`. An error meant for the
    user is recorded for the launcher, which prints it once with this rank, and ends the process."""
    from gptlab.args import take_flag
    from gptlab.commands.launch import record_stop
    from gptlab.train import train

    try:
        trust_code, rest = take_flag(argv, "--trust_code")
        return train(config_from_argv(rest), argv, trust_code)
    except Exception as e:
        if getattr(e, "exit_code", None) is None:
            raise
        record_stop(e)
        raise SystemExit(e.exit_code) from None
