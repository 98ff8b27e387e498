"""Run folders: (no) reuse, locks, opening one for reading. A folder with contents is never deleted
or written over: --resume continues it, --overwrite moves it aside. Its name: resolve.run_dir."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import time
from pathlib import Path

from gptlab import ideas
from gptlab.checkpoint import find_checkpoint, list_checkpoints, load_checkpoint
from gptlab.config import BUILTIN_MODEL_NAMES, Config
from gptlab.config_files import load_run_config
from gptlab.data.tokenizers import tokenizer_from_meta
from gptlab.errors import UserError
from gptlab.files import (
    LOCK_FILE,
    RUN_LAYOUT,
    atomic_write_bytes,
    check_name,
    check_output_folder,
    folder_lock,
    read_json,
    reject_symlinks,
)
from gptlab.layout import CHECKPOINT_DIR, CONFIG_FILE, DATA_META_FILE, IDEA_DIR, METRICS_FILE
from gptlab.registry import build_model, load_spec


def _has_contents(path: Path) -> bool:
    """Anything in path besides a lock file (a stale lock alone leaves a folder empty)."""
    return path.is_dir() and any(not p.name.startswith(LOCK_FILE) for p in path.iterdir())


def _is_run(path: Path) -> bool:
    """Does path hold something `gptlab train` writes?"""
    return any((path / name).exists() for name in (CONFIG_FILE, CHECKPOINT_DIR, METRICS_FILE,
                                                   DATA_META_FILE))


def _check_place(path: Path, overwrite: bool) -> None:
    """Refusals that need no look inside the folder: a file, a file on the way, the cwd or above."""
    if path.exists() and not path.is_dir():
        raise UserError(f"run folder {str(path)!r} is a file: choose another --out_dir")
    for parent in path.absolute().parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"cannot create run folder {str(path)!r}: {parent} is a file, not a folder: "
                            "choose another --out_dir")
    here = Path.cwd().resolve()
    if path.exists() and (path.resolve() == here or path.resolve() in here.parents):
        if not _is_run(path):
            raise UserError(f"--out_dir {str(path)!r} is the current folder (or holds it), not a run "
                            "folder: choose a new folder such as --out_dir out/myrun")
        if overwrite:
            raise UserError(f"--overwrite would move {str(path)!r} aside while you are in it: run from "
                            "another folder or choose another --out_dir")


def _check_contents(path: Path, resume: bool, overwrite: bool) -> None:
    """Refusals that depend on what the folder holds; none of them writes anything."""
    if not _has_contents(path):
        if resume:
            raise UserError(f"--resume: run folder {str(path)!r} is missing or empty, so there is "
                            "nothing to continue: drop --resume to start a new run")
        return
    if not _is_run(path):
        raise UserError(f"{str(path)!r} is not empty and is not a run folder (no {CONFIG_FILE}, "
                        f"{CHECKPOINT_DIR}/ or {METRICS_FILE}): gptlab leaves it alone; choose a new or "
                        "empty --out_dir")
    if resume:
        if not list_checkpoints(path):
            raise UserError(f"--resume: run folder {str(path)!r} has no checkpoint (it stopped before "
                            "its first save): pass --overwrite instead of --resume to move it aside and "
                            "start afresh")
    elif not overwrite:
        raise UserError(f"run folder {str(path)!r} exists: pass --resume to continue it or --overwrite "
                        "to move it aside")


def _check_not_inside(path: Path, flag: str, source, overwrite: bool) -> None:
    """--overwrite moves path aside: refuse it when the run reads an input from inside path."""
    if not overwrite or not source or not path.exists():
        return
    with contextlib.suppress(OSError, RuntimeError):
        src, here = Path(source).resolve(), path.resolve()
        if src == here or here in src.parents:
            raise UserError(f"{flag} {source} lies in --out_dir {path}, which --overwrite would move "
                            f"aside: choose another --out_dir (nothing was moved)")


def prepare_run_dir(path: str | Path, resume: bool = False, overwrite: bool = False,
                    inputs: dict[str, str | Path] | None = None) -> Path:
    """Check `path`, every refusal before any write: a run is continued (--resume) or renamed to
    `<path>.old-<timestamp>` (--overwrite); a folder of other files, the cwd, a file, a locked folder, an
    input of the run (`inputs`: flag -> path) inside a folder --overwrite would move, a run file that is
    a symbolic link: refused. Nothing is deleted or created."""
    path = check_name(path, "run folder")
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: pass one of them")
    _check_place(path, overwrite)
    check_output_folder(path, "run folder", "run")
    for flag, source in (inputs or {}).items():
        _check_not_inside(path, flag, source, overwrite)
    if resume:
        reject_symlinks(path, RUN_LAYOUT, "--resume")
    if (path / LOCK_FILE).exists():
        with folder_lock(path, "run folder"):  # a live holder refuses here, before anything moves
            pass
    _check_contents(path, resume, overwrite)
    if overwrite and _has_contents(path):
        stem = f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        # two overwrites in one second
        names = itertools.chain([stem], (f"{stem}-{n}" for n in itertools.count(1)))
        aside = next(p for p in map(path.with_name, names) if not p.exists())
        path.rename(aside)
        print(f"moved the old run {path} aside to {aside} (nothing was deleted)")
    return path


@contextlib.contextmanager
def run_lock(path: str | Path, enabled: bool = True):
    """Hold the run folder's lock for the run; folders it created go if left empty. enabled=False (ranks
    > 0): no-op."""
    path = Path(path)
    if not enabled:
        yield path
        return
    made = [p for p in (path, *path.absolute().parents) if not p.exists()]  # innermost first
    try:
        with folder_lock(path, "run folder"):
            yield path
    finally:
        for p in made:
            with contextlib.suppress(OSError):  # not empty: the run wrote something
                p.rmdir()


@dataclasses.dataclass
class Run:
    """A run folder opened for reading (sample, eval, export, init_from); paths resolve against `dir`,
    not the cwd."""

    dir: Path
    config: Config
    data_meta: dict | None
    checkpoint_file: Path | None = None  # set when load_run was given a checkpoint file
    trust_code: bool = False  # may the idea this run records be executed?

    def tokenizer(self):
        """The tokenizer the run trained with (from its data_meta.json and copied model file)."""
        if self.data_meta is None:
            raise UserError(f"{self.dir} has no {DATA_META_FILE}: it was not written by `gptlab train`, "
                            "so its tokenizer is unknown")
        return tokenizer_from_meta(self.data_meta, self.dir)

    def checkpoint(self, which: str = "best") -> Path:
        """The file load_run was given, else the run's best (or last) checkpoint."""
        if which not in ("best", "last"):
            raise UserError(f"checkpoint {which!r}: use best or last")
        return self.checkpoint_file or find_checkpoint(self.dir, which)

    def model_state(self, which: str = "best") -> tuple[dict, int]:
        """(model state_dict with wrapper prefixes removed, the step it was saved at)."""
        state = load_checkpoint(self.checkpoint(which))  # a 'step' it holds is an int >= 0
        # torch.compile and DDP prefix every key; the weights are the same.
        sd = {re.sub(r"^((_orig_mod|module)\.)+", "", k): v for k, v in state["model"].items()}
        return sd, state.get("step", 0)

    def build_model(self, device="cpu", which: str = "best"):
        """The run's GPT with the checkpoint's weights, on `device` (train mode; call .eval() to
        sample)."""
        if not self.config.model.vocab_size:
            raise UserError(f"{self.dir}/{CONFIG_FILE} has no vocab_size: the run never started "
                            "training")
        idea = self.idea()  # before the checkpoint is read: a refusal costs nothing
        sd, _ = self.model_state(which)
        model = build_model(self.config.model, idea)
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            raise UserError(f"checkpoint {self.checkpoint(which)} does not fit {self.dir}/{CONFIG_FILE} "
                            f"({str(e).splitlines()[0][:150]}): the run folder is "
                            "inconsistent") from None
        return model.to(device)

    def idea_spec(self) -> str:
        """The run's --model: the built-in name, a module, or its recorded copy of an idea's file."""
        m = self.config.model
        spec = ideas.parse_spec(m.model, BUILTIN_MODEL_NAMES)
        return (f"{self.dir.absolute() / idea_copy(spec)}:{spec.class_name}" if spec.kind == "file"
                else m.model)

    def idea(self) -> ideas.Idea | None:
        """The run's model idea (None for a built-in model), loaded from the run's copy of its file, or
        its module; only with trust_code, as running it runs whatever the run folder holds."""
        spec = ideas.parse_spec(self.config.model.model, BUILTIN_MODEL_NAMES)
        if spec.kind == "builtin":
            return None
        where = self.idea_spec().rsplit(":", 1)[0]
        if not self.trust_code:
            raise UserError(f"run {self.dir} carries code ({where}): gptlab runs it only with "
                            "--trust_code; read it, then pass --trust_code")
        if spec.kind == "file" and not Path(where).is_file():
            raise UserError(f"run {self.dir} names the idea {spec.text} but holds no copy of it "
                            f"({where}): the run folder is incomplete")
        return load_spec(self.idea_spec())

    def data_dir(self) -> Path:
        """The run's prepared dataset: its recorded path, else relative to the cwd or the run folder's
        ancestors."""
        d = self.config.data
        rel = [Path(d.dataset), Path(d.data_root) / d.dataset]
        bases = [Path(".")] + [self.dir.resolve(), *self.dir.resolve().parents]
        for cand in [r for r in rel if r.is_absolute()] + [b / r for b in bases for r in rel
                                                           if not r.is_absolute()]:
            if (cand / "meta.json").is_file():
                return cand
        raise UserError(f"dataset {d.dataset!r} of run {self.dir} not found (data_root "
                        f"{d.data_root!r}): prepare it again with `gptlab prepare "
                        f"{Path(d.dataset).name}` or pass --dataset/--data_root")


def idea_copy(spec: ideas.Spec) -> Path:
    """Where a run keeps the source of its idea, relative to the run folder."""
    name = Path(spec.target).name if spec.kind == "file" else spec.target + ".py"
    return Path(IDEA_DIR) / name


def record_optimizer(run_dir: Path, loaded: ideas.Loaded | None) -> None:
    """Copy an optimiser idea's source (the bytes hashed and executed) into the run's idea folder."""
    if loaded is None or loaded.source is None:
        return
    target = run_dir / IDEA_DIR / f"optimizer_{loaded.source.name}"
    if target.parent.is_symlink() or (target.parent.exists() and not target.parent.is_dir()):
        raise UserError(f"{target.parent} is not a folder gptlab made (a link or a file): move it out "
                        "of the run folder, then run the command again")
    target.parent.mkdir(exist_ok=True)
    atomic_write_bytes(target, loaded.code)


def record_idea(run_dir: Path, idea: ideas.Idea) -> None:
    """Copy the idea's source (the bytes hashed, and for a file executed) into the run folder."""
    if idea.spec.kind == "builtin":
        return
    target = run_dir / idea_copy(idea.spec)
    if target.parent.is_symlink() or (target.parent.exists() and not target.parent.is_dir()):
        raise UserError(f"{target.parent} is not a folder gptlab made (a link or a file): move it out "
                        "of the run folder, then run the command again")
    target.parent.mkdir(exist_ok=True)
    # a rename: a link at the file's own place is replaced, not followed
    atomic_write_bytes(target, idea.code)


def load_run(path: str | Path, config_file: str | Path | None = None, trust_code: bool = False) -> Run:
    """Open a run: its folder, its config.json, or a checkpoint in its checkpoints/ (kept elsewhere: pass
    config_file)."""
    p = Path(path).expanduser()
    ckpt_file = None
    if p.is_file() and p.name == CONFIG_FILE:
        p = p.parent
    elif p.is_file():
        ckpt_file, p = p, p.absolute().parent.parent
        if config_file is None and not (p / CONFIG_FILE).is_file():
            raise UserError(f"checkpoint {path} is not inside a run's {CHECKPOINT_DIR}/ folder: pass "
                            f"the run folder, or the run's config with --config_file")
    elif not p.is_dir():
        raise UserError(f"run {str(path)!r} not found: pass a run folder written by `gptlab train` or a "
                        "checkpoint file")
    cfg_path = Path(config_file) if config_file else p / CONFIG_FILE
    if cfg_path.suffix in (".pickle", ".pkl"):  # Languini's eval habit: --config_file P/config.pickle
        raise UserError(f"--config_file {cfg_path}: gptlab never unpickles a config; drop --config_file "
                        f"(the run's {CONFIG_FILE} beside {CHECKPOINT_DIR}/ is found) or pass that "
                        f"{CONFIG_FILE}")
    if not cfg_path.is_file():
        raise UserError(f"{p} has no {CONFIG_FILE}: pass a run folder written by `gptlab train`")
    meta_path = p / DATA_META_FILE
    meta = read_json(meta_path, "the run's data meta") if meta_path.is_file() else None
    if meta is not None and not isinstance(meta, dict):
        raise UserError(f"{meta_path} does not hold a JSON object: the run folder is damaged")
    return Run(dir=p, config=load_run_config(cfg_path), data_meta=meta, checkpoint_file=ckpt_file,
               trust_code=trust_code)
