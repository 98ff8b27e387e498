"""The `gptlab` command: parse the sub-command and hand over. No logic of its own."""

from __future__ import annotations

import argparse
import difflib
import re
import sys

from gptlab.errors import UserError


class ArgParser(argparse.ArgumentParser):
    """argparse in gptlab's one error style: a bad flag is one line naming the closest
    valid flag (UserError, so the CLI exits 2), never the multi-line usage."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --temp must not silently mean --temperature
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        return super().parse_args(self._known_flags_first(args), namespace)

    def parse_intermixed_args(self, args=None, namespace=None):
        return super().parse_intermixed_args(self._known_flags_first(args), namespace)

    def _known_flags_first(self, args):
        # A mistyped flag is the real problem: name it before "the following arguments are required".
        args = sys.argv[1:] if args is None else list(args)
        flags = {s for a in self._actions for s in a.option_strings}
        for tok in args:
            if tok.startswith("--") and tok != "--" and tok.split("=", 1)[0] not in flags:
                self.error(f"unrecognized arguments: {tok}")
        return args

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}{self._hint(message)}")

    def _hint(self, message: str) -> str:
        # Only an unknown flag has a "closest valid flag"; other messages already name the fix.
        m = re.search(r"unrecognized arguments: (\S+)", message)
        if not m:
            return f" (see `{self.prog} --help`)"
        flags = [s for a in self._actions for s in a.option_strings]
        close = difflib.get_close_matches(m.group(1).split("=")[0], flags, n=1, cutoff=0.5)
        return f": did you mean {close[0]}?" if close else f" (see `{self.prog} --help`)"


def flag_bool(text: str) -> bool:
    """A true/false flag value as nanoGPT (True/False) and shell users (1/0, yes/no) write it."""
    v = str(text).strip().lower()
    if v in ("1", "true", "yes", "on", "y", "t"):
        return True
    if v in ("0", "false", "no", "off", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")

USAGE = """usage: gptlab COMMAND [ARGS]

commands:
  prepare NAME [--input PATH] [--tokenizer char|gpt2|sentencepiece] [--out DIR]   text -> token files
  train [PRESET | CONFIG.toml | config.py] [--key=value ...]   train (`gptlab train PRESET --help`: every key)
  sample --run DIR | --init_from gpt2 [--start TEXT|FILE:f] [...]   print samples
  eval --checkpoint_file F [--config_file C] --eval_data_split test --last_n 128
  model [PRESET] [--key=value ...]                   build the model, run a dummy batch, print its size
  budget --hours H --tokens_per_second T --train_batch_size B --seq_len S
  throughput PRESET                                  reference throughput sweep (GPU)
  bench [PRESET] [...]                               time the training step
  plot RUN [RUN ...] --out F.png                     compare runs
  export RUN --to hf OUT/                            Hugging Face GPT-2 folder
  demo                                               prepare tiny Shakespeare, train on CPU, sample
"""


CONFIG_SUFFIXES = (".toml", ".py", ".json")


def split_source(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(preset, config file, the --key value rest) from `[PRESET | FILE.toml|.py|.json] [--key value ...]`."""
    if not argv or argv[0].startswith("-"):
        return None, None, argv
    first, rest = argv[0], argv[1:]
    if first.endswith(CONFIG_SUFFIXES) or "/" in first or "\\" in first:
        return None, first, rest
    return first, None, rest


def _train(argv: list[str]) -> int:
    from gptlab.config import build_config, help_text, parse_overrides

    preset, config_file, rest = split_source(argv)
    if any(a in ("-h", "--help") for a in argv):
        shown = build_config(preset, config_file, parse_overrides([a for a in rest if a not in ("-h", "--help")]),
                             check=False) if preset or config_file else None
        print("usage: gptlab train [PRESET | CONFIG.toml | nanoGPT_config.py | RUN/config.json] [--key=value ...]\n")
        print(help_text(shown))
        return 0
    cfg = build_config(preset, config_file, parse_overrides(rest))
    from gptlab.train import train

    train(cfg, argv)
    return 0


def model_vocab(cfg) -> tuple[int, str]:
    """(vocab, where it came from): the config's, else the prepared dataset's, else GPT-2's (assumed)."""
    from gptlab.data.tokens import read_meta
    from gptlab.runtime import resolve_data_dir

    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "set in the config"
    try:
        data_dir = resolve_data_dir(cfg.data.dataset, cfg.data.data_root)
    except UserError:
        return 50257, (f"assumed GPT-2 BPE: dataset {cfg.data.dataset!r} is not prepared here; "
                       f"run `gptlab prepare {cfg.data.dataset}` for the exact figure")
    return int(read_meta(data_dir)["vocab_size"]), f"from {data_dir}/meta.json"


def _model(argv: list[str]) -> int:
    """What `gptlab train` would build for the same arguments: shape, size, one dummy batch."""
    import torch

    import dataclasses

    from gptlab.config import build_config, check_memory, parse_overrides
    from gptlab.loss import logits_and_loss
    from gptlab.model import GPT, GPTShape, flops_per_token

    preset, config_file, rest = split_source(argv)
    cfg = build_config(preset, config_file, parse_overrides(rest))
    vocab, source = model_vocab(cfg)
    check_memory(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab)), weights_only=True)
    shape = GPTShape.from_config(cfg.model, vocab)
    model = GPT(shape).init_weights()
    T = min(shape.block_size, 64)
    x = torch.randint(0, vocab, (2, T))
    with torch.no_grad():
        logits, loss = logits_and_loss(model, x, x)
    print(f"preset {cfg.preset}: {shape.n_layer} layers, {shape.n_head} heads x {shape.head_dim}, width {shape.n_embd}, "
          f"mlp {shape.mlp_dim}, block {shape.block_size}, vocab {vocab} (padded {shape.padded_vocab}; {source})")
    print(f"parameters: {model.num_params():,}")
    print(f"FLOPs per token (6N + 12*L*H*Q*T, T={shape.block_size}): {flops_per_token(shape):,.0f}")
    print(f"dummy batch {tuple(x.shape)} -> logits {tuple(logits.shape)}, loss {loss.item():.4f} "
          f"(ln vocab = {torch.log(torch.tensor(float(vocab))).item():.4f})")  # .item(): host values to print
    return 0


def demo_argv(argv: list[str]) -> list[str]:
    """The demo run's own `gptlab train` arguments, so the resume command it prints works."""
    return ["baby", "--out_dir", "out/demo", "--overwrite", "true", *argv]


def _demo(argv: list[str]) -> int:
    """The README's main job: tiny Shakespeare, character model on CPU, a sample."""
    from pathlib import Path

    from gptlab.config import build_config, parse_overrides
    from gptlab.data.prepare import prepare
    from gptlab.train import train
    from gptlab import sample

    train_argv = demo_argv(argv)
    data_dir = Path("data") / "shakespeare_char"
    if not (data_dir / "meta.json").is_file():
        prepare("shakespeare_char", out=data_dir)
    summary = train(build_config("baby", None, parse_overrides(train_argv[1:])), train_argv)
    val = (summary.get("eval") or {}).get("val", {})
    if val:
        print(f"final val loss {val['loss']:.4f}")
    return sample.main(["--run", summary["run_dir"], "--num_samples", "1", "--max_new_tokens", "500"])


def _lazy(module: str, fn: str = "main"):
    def run(argv):
        import importlib

        return getattr(importlib.import_module(module), fn)(argv)
    return run


COMMANDS = {
    "prepare": _lazy("gptlab.data.prepare"),
    "train": _train,
    "sample": _lazy("gptlab.sample"),
    "eval": _lazy("gptlab.evaluate"),
    "model": _model,
    "budget": _lazy("gptlab.budget"),
    "throughput": _lazy("gptlab.bench", "throughput_main"),
    "bench": _lazy("gptlab.bench"),
    "plot": _lazy("gptlab.plot"),
    "export": _lazy("gptlab.hf", "main_export"),
    "demo": _demo,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        hint = f"did you mean `gptlab {close[0]}`?" if close else "run `gptlab --help`"
        print(f"error: unknown command {cmd!r}: {hint}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](rest) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a deliberate stop (divergence) prints its message without a traceback
        code = getattr(e, "exit_code", None)
        if code is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return code
