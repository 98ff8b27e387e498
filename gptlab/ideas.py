"""Ideas: a model class named by a spec, loaded without running anything but its own file.

A spec is a built-in name ("gpt"), "path/to/file.py:ClassName" or "package.module:ClassName". A file
is read once, hashed (sha256) and executed from those same bytes as a module of its own (a unique
name, no bytecode written, its folder not put on sys.path). An idea declares its extra config keys
as a class attribute, `config_defaults = {"rope_base": 10000.0, ...}`: each default's type (bool,
int, float, str) is how a `--key value` string is read. The idea's constructor receives an
IdeaConfig: every model config key with the derived sizes filled in, padded_vocab, and the options."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from gptlab import config as config_schema
from gptlab.errors import UserError
from gptlab.model import padded_vocab

OPTIONS_ATTRIBUTE = "config_defaults"
OPTION_TYPES = (bool, int, float, str)
# Names an option may not take: gptlab's own keys, and what IdeaConfig adds.
DERIVED_KEYS = ("padded_vocab", "options")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Spec:
    """A parsed --model value: kind is "builtin", "file" or "module"; target the name, path or module."""

    text: str
    kind: str
    target: str
    class_name: str

    @property
    def label(self) -> str:
        """A short name for run folders: GPT, or the class after the file's stem or module's last
        part."""
        if self.kind == "builtin":
            return self.target.upper()
        stem = Path(self.target).stem if self.kind == "file" else self.target.rsplit(".", 1)[-1]
        return f"{stem}.{self.class_name}"


@dataclass(frozen=True)
class Idea:
    """A loaded model class with what a run records about it."""

    spec: Spec
    cls: type
    source: Path | None  # the file that defines the class (None for a built-in)
    sha256: str  # of that file's bytes ("" for a built-in)
    defaults: dict[str, Any]  # its declared extra config keys
    code: bytes = b""  # the source file's bytes, as hashed (and, for a file, as executed)

    @property
    def name(self) -> str:
        return self.spec.label


def parse_spec(text: str, builtins: dict[str, Any] | tuple[str, ...], flag: str = "--model",
               noun: str = "ClassName") -> Spec:
    """A --model (or `flag`) value as a Spec; a malformed one is a UserError naming the accepted
    forms."""
    text = str(text).strip()
    forms = (f"give {flag} {'|'.join(builtins)}, {flag} path/to/file.py:{noun} "
             f"or {flag} package.module:{noun}")
    if text.lower() in builtins:
        return Spec(text, "builtin", text.lower(), "")
    target, colon, name = text.rpartition(":")
    if not colon:
        if text.endswith(".py"):
            raise UserError(f"{flag} {text}: name the {noun} too, as {text}:{noun} ({forms})")
        close = difflib.get_close_matches(text.lower(), list(builtins), n=1)
        hint = f"did you mean {flag} {close[0]}? " if close else ""
        raise UserError(f"{flag} {text!r} is neither built in ({', '.join(builtins)}) nor a file or "
                        f"module: {hint}{forms}")
    if not _IDENTIFIER.fullmatch(name):
        raise UserError(f"{flag} {text}: {name!r} after the last ':' is not a Python name: {forms}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        return Spec(text, "file", target, name)
    if not all(_IDENTIFIER.fullmatch(part) for part in target.split(".")):
        raise UserError(f"{flag} {text}: {target!r} is neither a .py file nor a module name like "
                        f"package.module: {forms}")
    return Spec(text, "module", target, name)


@dataclass(frozen=True)
class Loaded:
    """What a spec names (a class, a function), with the source that defines it as hashed."""

    spec: Spec
    obj: Any
    source: Path | None  # None for a built-in
    sha256: str  # "" for a built-in
    code: bytes


def load_object(text: str, builtins: dict[str, Any], flag: str = "--model",
                noun: str = "ClassName") -> Loaded:
    """What a spec names: a built-in, or a name defined by a file (executed from the bytes hashed, as a
    module of its own) or an importable module; every failure is one line naming the file and line.
    gptlab's --model and --optimizer both load their ideas this way."""
    spec = parse_spec(text, builtins, flag, noun)
    if spec.kind == "builtin":
        return Loaded(spec, builtins[spec.target], None, "", b"")
    module, source = _load_file(Path(spec.target), flag) if spec.kind == "file" else \
        _load_module(spec.target, flag)
    found = _find(module, spec, flag)
    code = getattr(module, "__gptlab_code__", None) or (source.read_bytes() if source else b"")
    return Loaded(spec, found, source, hashlib.sha256(code).hexdigest() if source else "", code)


def load_idea(text: str, builtins: dict[str, type]) -> Idea:
    """The model class a spec names, checked against the contract, with its source's sha256 and
    options."""
    loaded = load_object(text, builtins)
    cls, spec = loaded.obj, loaded.spec
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"--model {spec.text}: {spec.class_name} is {type(cls).__name__}, not a "
                        "torch.nn.Module subclass: name the model's class")
    if spec.kind != "builtin":
        _check_contract(cls, spec.text)
    return Idea(spec, cls, loaded.source, loaded.sha256, declared_options(cls, spec.text), loaded.code)


def _load_file(path: Path, flag: str) -> tuple[types.ModuleType, Path]:
    """Execute one .py file as its own module; every failure is one line with file:line."""
    if not path.is_file():
        where = f"{path} is a folder" if path.is_dir() else f"{path} not found"
        near = (
            difflib.get_close_matches(path.name, [p.name for p in path.parent.glob("*.py")], n=1)
            if path.parent.is_dir()
            else []
        )
        hint = f"did you mean {path.parent / near[0]}? " if near else ""
        raise UserError(f"{flag}: {where}: {hint}give the path of a .py file")
    try:
        data = path.read_bytes()
        source = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(
            f"{flag}: cannot read {path} as UTF-8 Python ({e.__class__.__name__}): fix the file"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    name = f"gptlab_idea_{digest[:16]}_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
    if name in sys.modules:  # these very bytes ran already: the same classes
        return sys.modules[name], path
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: {e.__class__.__name__}: {e.msg}: fix that line") from None
    module = types.ModuleType(name)
    module.__file__, module.__gptlab_code__ = str(path), data
    sys.modules[name] = module  # dataclasses, pickling and torch.compile look the module up by name
    try:
        exec(code, module.__dict__)
    except Exception as e:
        del sys.modules[name]
        raise UserError(failure_line(e, path, f"loading {path}")) from None
    return module, path


def _load_module(name: str, flag: str) -> tuple[types.ModuleType, Path | None]:
    """Import an installed (or PYTHONPATH) module; a missing one or a failing import is one line."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise UserError(
                f"{flag}: no module named {name!r} here: install it, add its folder to "
                f"PYTHONPATH, or pass the file as path/to/{name.rsplit('.', 1)[-1]}.py:Class"
            ) from None
        raise UserError(failure_line(e, None, f"loading {name}")) from None
    except Exception as e:
        raise UserError(
            failure_line(e, getattr(importlib.util.find_spec(name), "origin", None), f"loading {name}")
        ) from None
    source = getattr(module, "__file__", None)
    return module, Path(source) if source and source.endswith(".py") else None


def failure_line(e: BaseException, filename: str | Path | None, what: str) -> str:
    """One line for an exception raised while an idea's code ran: the idea's own line where known."""
    filename = None if filename is None else str(filename)
    frames = [
        f for f in traceback.extract_tb(e.__traceback__) if filename is None or f.filename == filename
    ]
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else what
    if isinstance(e, ModuleNotFoundError) and e.name:
        return (
            f"{where}: the idea imports {e.name!r}, which is not installed here: "
            f"pip install {e.name.split('.')[0]} (or remove the import)"
        )
    first = (str(e).splitlines() or [""])[0][:200]
    return f"{where}: {e.__class__.__name__}: {first} (raised while {what}): fix the idea's code"


def _find(module: types.ModuleType, spec: Spec, flag: str) -> Any:
    """The named attribute of the module; a missing one names the closest of what the file defines."""
    found = getattr(module, spec.class_name, None)
    if found is not None:
        return found
    defined = sorted(k for k, v in vars(module).items()
                     if callable(v) and getattr(v, "__module__", None) == module.__name__)
    close = difflib.get_close_matches(spec.class_name, defined, n=1)
    hint = (f"did you mean {spec.target}:{close[0]}?" if close else
            f"it defines {', '.join(defined)}" if defined else "it defines no class or function")
    raise UserError(f"{flag} {spec.text}: {spec.target} has no {spec.class_name!r}: {hint}")


def _check_contract(cls: type, text: str) -> None:
    """What gptlab calls must exist: cls(config) and forward(idx, return_hidden=False)."""
    try:
        inspect.signature(cls).bind(object())
    except (TypeError, ValueError):
        raise UserError(
            f"--model {text}: {cls.__name__}(config) must take the model config as its one argument "
            "(README, 'Your own idea')"
        ) from None
    params = inspect.signature(cls.forward).parameters
    if "return_hidden" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise UserError(
            f"--model {text}: {cls.__name__}.forward must accept return_hidden=False (logits, or the "
            "final hidden states for the chunked loss; README, 'Your own idea')"
        )


def changed_message(idea: Idea, recorded: str) -> str:
    """An idea's source differs from the one a run recorded."""
    return (f"{idea.source} has changed since the run recorded it (sha256 {recorded[:12]}..., now "
            f"{idea.sha256[:12]}...): restore the file the run was trained with, or start a new run "
            "(without --resume)")


def resume_changed_message(path: str, recorded: str, now: str) -> str:
    """--resume of a run whose idea file no longer has the sha256 its config.json records."""
    return (f"--resume: {path} has changed since the run started (sha256 {recorded[:12]}... in its "
            f"config.json, {now[:12]}... now): restore the idea's file, or train the new version as a "
            "new run (drop --resume)")


def file_sha256(spec_text: str) -> str | None:
    """The sha256 of the file a file spec names, read without running it (None for other specs or no
    file)."""
    target, colon, _ = str(spec_text).strip().rpartition(":")
    path = Path(target)
    if not colon or not (target.endswith(".py") or "/" in target
                         or "\\" in target) or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reserved_keys() -> set[str]:
    """Keys an idea's options may not reuse: every gptlab config key and alias, and IdeaConfig's own."""
    return set(config_schema.ALL_KEYS) | set(DERIVED_KEYS)


def declared_options(cls: type, text: str) -> dict[str, Any]:
    """The class's `config_defaults`, checked: identifiers, no gptlab key, values bool/int/float/str."""
    declared = getattr(cls, OPTIONS_ATTRIBUTE, None) or {}
    where = f"--model {text}: {cls.__name__}.{OPTIONS_ATTRIBUTE}"
    if not isinstance(declared, dict):
        raise UserError(
            f"{where} must be a dict of option name -> default, got {type(declared).__name__}"
        )
    taken = reserved_keys()
    for key, value in declared.items():
        if not (isinstance(key, str) and _IDENTIFIER.fullmatch(key)):
            raise UserError(
                f"{where}: option name {key!r} is not an identifier: use letters, digits and '_'"
            )
        if key in taken:
            raise UserError(
                f"{where}: {key!r} is already a gptlab config key: rename the option "
                f"(it reaches the idea as config.{key} anyway)"
                if key not in DERIVED_KEYS
                else f"{where}: {key!r} is set by gptlab: rename the option"
            )
        if not isinstance(value, OPTION_TYPES):
            raise UserError(
                f"{where}[{key!r}] = {value!r}: a default must be a bool, int, float or str "
                "(its type is how --key value is read)"
            )
    return dict(declared)


def coerce_option(key: str, value: Any, default: Any) -> Any:
    """A CLI string (or a config.json value) as the type of the option's default."""
    typ = type(default).__name__
    try:
        return config_schema.CONVERT_BY_TYPE[typ](value)
    except (TypeError, ValueError, KeyError, OverflowError):
        raise UserError(
            f"--{key}: expected {typ} (the idea's default is {default!r}), got {value!r}"
        ) from None


def resolve_options(idea: Idea, given: dict[str, Any]) -> dict[str, Any]:
    """Every declared option: its default, or the given value read as the default's type. A key the
    idea does not declare is a UserError naming the closest known key."""
    out = dict(idea.defaults)
    for key, value in given.items():
        bare = key.replace("-", "_")
        if bare not in idea.defaults:
            raise UserError(unknown_option_message(bare, idea))
        out[bare] = coerce_option(bare, value, idea.defaults[bare])
    return out


def unknown_option_message(key: str, idea: Idea) -> str:
    """An unknown key under an idea: the closest of gptlab's keys and the idea's options."""
    candidates = list(idea.defaults) + list(config_schema.ALL_KEYS)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    own = f"; {idea.name} declares {', '.join('--' + k for k in idea.defaults)}" if idea.defaults else ""
    hint = f"did you mean --{close[0]}?" if close else "see `gptlab train --help` for the list"
    return f"unknown config key {key!r}: {hint}{own}"


class IdeaConfig(types.SimpleNamespace):
    """What an idea's constructor receives: every model config key (head_dim and mlp_dim derived
    when 0), padded_vocab (rows of embedding and logits), the options as attributes and as .options."""


def idea_config(model_config, options: dict[str, Any]) -> IdeaConfig:
    """The IdeaConfig of a ModelConfig and the idea's resolved options."""
    m = model_config
    if not m.vocab_size:
        raise ValueError("vocab_size unknown: set it in the config or read it from the dataset")
    values = {f.name: getattr(m, f.name) for f in config_schema.leaves(type(m))}
    values.update(
        head_dim=m.head_dim or m.n_embd // m.n_head,
        mlp_dim=m.mlp_dim or 4 * m.n_embd,
        padded_vocab=padded_vocab(m.vocab_size, m.pad_vocab_multiple),
    )
    return IdeaConfig(**values, **options, options=dict(options))


# ------------------------------------------------------------------------------ FLOPs

COUNTED_NOTE = "counted with torch.utils.flop_counter on one sequence"


def count_flops_per_token(build: Callable[[], nn.Module], seq_len: int) -> float:
    """Training FLOPs per token of a model without a formula: torch's FLOP counter over the forward and
    backward of one sequence of seq_len tokens, on the meta device (no memory, no random draws); a model
    the meta device cannot run is counted on the CPU, with the random state restored afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(device: str) -> float:
        with torch.device(device):
            model = build()
        model.train()
        idx = torch.zeros((1, seq_len), dtype=torch.long, device=device)
        with FlopCounterMode(display=False) as counter:
            out = model(idx)
            out.float().sum().backward()
        return counter.get_total_flops() / seq_len

    try:
        return count("meta")
    except Exception:  # data-dependent code (e.g. .item()) cannot run on meta tensors
        pass
    with torch.random.fork_rng(devices=[]):
        try:
            return count("cpu")
        except Exception as e:
            raise UserError(
                f"cannot count the FLOPs of this model on one sequence ({e.__class__.__name__}: "
                f"{(str(e).splitlines() or [''])[0][:150]}): define flops_per_token(seq_len) on it"
            ) from None
