"""The config of a resumed run: its config.json is the only source.

`train --resume` starts from the run's config.json; the keys this command set (its --flags and the
keys of a config file it names) go over it, and config.resolve refuses any that a resume may not
change, naming the key and `--init_from RUN` (a new run from the run's weights) as the way to change
it. Keys not set are the run's, whatever the defaults or a preset say. The global batch is the run's;
on another number of processes the per-process split follows from it.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

from gptlab import runs
from gptlab.config import ALIASES, FIELD_INFO, Config, canonical_key
from gptlab.config_files import load_config_file, load_run_config
from gptlab.errors import UserError
from gptlab.layout import CONFIG_FILE

BATCH_KEYS = ("batch_size", "gradient_accumulation_steps", "train_batch_size")

NO_CONFIG = ("--resume: {run} has no config.json, so the settings it trained with are unknown: "
             "start afresh with --overwrite instead of --resume")
NO_BATCH = ("--resume: {path} holds no resolved batch (batch_size, gradient_accumulation_steps, "
            "train_batch_size), so it was not written by `gptlab train` or was edited: restore it, "
            "or start afresh with --overwrite")
OTHER_PRESET = ("--resume: preset {given!r} differs from the run's {saved!r}: drop it (a resumed run "
                "keeps its config.json), or start a new run from its weights with --init_from {run}")
NOTE_SPLIT = ("note: resuming on {world} process(es): {world} x {micro} sequences x {accum} "
              "accumulation = the run's global batch of {total}")
NO_SPLIT = ("--resume: the run's global batch of {total} sequences cannot be split over {world} "
            "process(es) (it trained on {ran_on}): launch a number of processes that divides {total}, "
            "e.g. torchrun --nproc_per_node {ran_on}")
BAD_SPLIT = ("--resume: {named} cannot split the run's global batch of {total} sequences over "
             "{world} process(es): pass --batch_size {micro} --gradient_accumulation_steps {accum}, "
             "or drop them")


def given_keys(cfg: Config, argv: list[str] | None) -> set[str]:
    """The keys a command set: its --flags and its config file's keys. Without argv (a call from
    Python), the keys whose value differs from the defaults."""
    if argv is None:
        default = Config()
        return {k for k in FIELD_INFO if cfg.get(k) != default.get(k)}
    keys = set()
    first = argv[0] if argv and not argv[0].startswith("-") else ""
    if first.endswith((".toml", ".py", ".json")) or "/" in first or "\\" in first:
        keys |= {canonical_key(k) for k in load_config_file(first)[0] if k != "preset"}
    for arg in argv:
        name = arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else ""
        if name in FIELD_INFO or name in ALIASES:
            keys.add(canonical_key(name))
    return keys


def resume_config(cfg: Config, given: set[str], run: Path, world_size: int, log=print,
                  main: bool = True) -> tuple[Config, Config]:
    """(the config to resolve: the run's config.json with the given keys over it, config.json as
    saved). The main process first checks the folder as train does (in use, missing, empty, no
    checkpoint); nothing moves."""
    if main:
        runs.prepare_run_dir(run, resume=True, overwrite=cfg.train.overwrite)
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        raise UserError(NO_CONFIG.format(run=run))
    saved = load_run_config(path)
    t = saved.train
    if min(t.batch_size, t.gradient_accumulation_steps, t.train_batch_size) <= 0:
        raise UserError(NO_BATCH.format(path=path))
    if cfg.preset not in ("custom", saved.preset):
        raise UserError(OTHER_PRESET.format(given=cfg.preset, saved=saved.preset,
                                            run=shlex.quote(str(run))))
    out = copy.deepcopy(saved)
    for key in sorted(given):
        out.set(key, cfg.get(key))
    out.log.out_dir, out.train.resume, out.train.init_from = str(run), True, t.init_from
    split_batch(saved, out, given, world_size, log)
    return out, saved


def split_batch(saved: Config, cfg: Config, given: set[str], world: int, log=print) -> None:
    """Set cfg's batch to the run's global batch split over `world` processes: the micro batch and
    accumulation given (either habit: per process, or nanoGPT's global count), else the run's micro
    batch with the accumulation it needs (a smaller micro batch if it must). Else refused."""
    t, old = cfg.train, saved.train
    total = old.train_batch_size
    if t.train_batch_size not in (0, total):
        return  # config.resolve refuses it, naming --train_batch_size (which this command set)
    micro = t.batch_size if "batch_size" in given and t.batch_size > 0 else 0
    accum = t.gradient_accumulation_steps if "gradient_accumulation_steps" in given else 0
    if not (micro or accum):  # the run's micro batch, or the largest below it that fits
        micro = _largest_micro(total, world, old.batch_size)
    if accum:  # per process (Languini's habit), or the global count over the processes (nanoGPT's)
        accums = [accum] + ([accum // world] if world > 1 and accum % world == 0 else [])
    else:
        accums = [total // (world * micro) if micro else 0]
    fits = [(m, a) for a in accums for m in [micro or (total // (world * a) if a else 0)]
            if m > 0 and a > 0 and world * m * a == total]
    if not fits:
        raise UserError(_split_refusal(saved, cfg, given, world))
    micro, accum = fits[0]
    t.batch_size, t.gradient_accumulation_steps, t.train_batch_size = micro, accum, total
    if (micro, accum) != (old.batch_size, old.gradient_accumulation_steps):
        log(NOTE_SPLIT.format(world=world, micro=micro, accum=accum, total=total))


def _largest_micro(total: int, world: int, most: int) -> int:
    """The largest micro batch up to `most` that divides a process's share of `total` (0: none)."""
    share = total // world if total % world == 0 else 0
    return max((m for m in range(1, most + 1) if share and share % m == 0), default=0)


def _split_refusal(saved: Config, cfg: Config, given: set[str], world: int) -> str:
    old = saved.train
    total, ran_on = old.train_batch_size, old.train_batch_size // (
        old.batch_size * old.gradient_accumulation_steps)
    if total % world:
        return NO_SPLIT.format(total=total, world=world, ran_on=ran_on)
    micro = _largest_micro(total, world, old.batch_size)
    named = " ".join(f"--{k} {cfg.get(k)}" for k in BATCH_KEYS if k in given)
    return BAD_SPLIT.format(named=named, total=total, world=world, micro=micro,
                            accum=total // world // micro)
