"""The `gptlab` command: parse the sub-command and hand over. No logic of its own."""

from __future__ import annotations

import argparse
import difflib
import importlib
import math
import os
import re
import signal
import sys
from pathlib import Path

from gptlab.errors import UserError


class ArgParser(argparse.ArgumentParser):
    """argparse whose bad flag is one UserError line naming the closest valid flag, never the usage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})  # --temp must not silently mean --temperature

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
        # Only an unknown flag has a "closest valid flag"; other messages already name the fix.
        m = re.search(r"unrecognized arguments: (\S+)", message)
        flags = [s for a in self._actions for s in a.option_strings]
        close = difflib.get_close_matches(m.group(1).split("=")[0], flags, n=1, cutoff=0.5) if m else []
        hint = f": did you mean {close[0]}?" if close else f" (see `{self.prog} --help`)"
        raise UserError(f"{self.prog}: {message}{hint}")


def flag_bool(text: str) -> bool:
    """A true/false flag value as nanoGPT (True/False) and shell users (1/0, yes/no) write it."""
    from gptlab.config import BOOL_WORDS

    if str(text).strip().lower() not in BOOL_WORDS:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return BOOL_WORDS[str(text).strip().lower()]


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


def _config(argv: list[str], check: bool = True):
    """The Config of `gptlab train [PRESET | FILE.toml|.py|.json] [--key value ...]`; check=False: unvalidated."""
    from gptlab.config import build_config, parse_overrides

    first = argv[0] if argv and not argv[0].startswith("-") else ""
    is_file = first.endswith((".toml", ".py", ".json")) or "/" in first or "\\" in first
    preset, config_file = (None, first) if is_file else (first or None, None)
    return build_config(preset, config_file, parse_overrides(argv[1:] if first else argv), check=check)


def _train(argv: list[str]) -> int:
    from gptlab.config import help_text

    if any(a in ("-h", "--help") for a in argv):
        argv = [a for a in argv if a not in ("-h", "--help")]
        shown = _config(argv, check=False) if argv and not argv[0].startswith("-") else None
        print("usage: gptlab train [PRESET | CONFIG.toml | nanoGPT_config.py | RUN/config.json] [--key=value ...]\n")
        print(help_text(shown))
        return 0
    from gptlab.train import train

    train(_config(argv), argv)
    return 0


def _model(argv: list[str]) -> int:
    """What `gptlab train` would build for the same arguments: shape, size, one dummy batch. The vocab
    is the config's, else the prepared dataset's, else GPT-2's (assumed)."""
    import torch

    from gptlab.config import check_memory
    from gptlab.data.tokens import read_meta
    from gptlab.loss import logits_and_loss
    from gptlab.model import GPT, GPTShape, flops_per_token
    from gptlab.runtime import resolve_data_dir

    cfg, source = _config(argv), "set in the config"
    if not cfg.model.vocab_size:
        try:
            data_dir = resolve_data_dir(cfg.data.dataset, cfg.data.data_root)
        except UserError:
            cfg.model.vocab_size, source = 50257, (f"assumed GPT-2 BPE: dataset {cfg.data.dataset!r} is not prepared "
                                                   f"here; run `gptlab prepare {cfg.data.dataset}` for the exact figure")
        else:
            cfg.model.vocab_size, source = int(read_meta(data_dir)["vocab_size"]), f"from {data_dir}/meta.json"
    check_memory(cfg, weights_only=True)
    shape = GPTShape.from_config(cfg.model)
    model = GPT(shape).init_weights()
    x = torch.randint(0, shape.vocab_size, (2, min(shape.block_size, 64)))
    with torch.no_grad():
        logits, loss = logits_and_loss(model, x, x)
    print(f"preset {cfg.preset}: {shape.n_layer} layers, {shape.n_head} heads x {shape.head_dim}, width {shape.n_embd}, "
          f"mlp {shape.mlp_dim}, block {shape.block_size}, vocab {shape.vocab_size} (padded {shape.padded_vocab}; {source})")
    print(f"parameters: {model.num_params():,}")
    print(f"FLOPs per token (6N + 12*L*H*Q*T, T={shape.block_size}): {flops_per_token(shape):,.0f}")
    print(f"dummy batch {tuple(x.shape)} -> logits {tuple(logits.shape)}, loss {loss.item():.4f} "  # .item(): a sync
          f"(ln vocab = {math.log(shape.vocab_size):.4f})")
    return 0


def demo_argv(argv: list[str]) -> list[str]:
    """The demo run's own `gptlab train` arguments, so the resume command it prints works."""
    return ["baby", "--out_dir", "out/demo", "--overwrite", "true", *argv]


def _demo(argv: list[str]) -> int:
    """The README's main job: tiny Shakespeare, character model on CPU, a sample."""
    from gptlab.data.prepare import prepare
    from gptlab.train import train

    train_argv = demo_argv(argv)
    data_dir = Path("data/shakespeare_char")
    if not (data_dir / "meta.json").is_file():
        prepare("shakespeare_char", out=data_dir)
    summary = train(_config(train_argv), train_argv)
    if val := (summary.get("eval") or {}).get("val"):
        print(f"final val loss {val['loss']:.4f}")
    return _lazy("gptlab.sample")(["--run", summary["run_dir"], "--num_samples", "1", "--max_new_tokens", "500"])


def _lazy(module: str, fn: str = "main"):
    return lambda argv: getattr(importlib.import_module(module), fn)(argv)


COMMANDS = {"prepare": _lazy("gptlab.data.prepare"), "train": _train, "sample": _lazy("gptlab.sample"),
            "eval": _lazy("gptlab.evaluate"), "model": _model, "budget": _lazy("gptlab.budget"),
            "throughput": _lazy("gptlab.bench", "throughput_main"), "bench": _lazy("gptlab.bench"),
            "plot": _lazy("gptlab.plot"), "export": _lazy("gptlab.hf", "main_export"), "demo": _demo}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(USAGE, flush=True)
            return 0
        if argv[0] not in COMMANDS:
            close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
            hint = f"did you mean `gptlab {close[0]}`?" if close else "run `gptlab --help`"
            raise UserError(f"unknown command {argv[0]!r}: {hint}")
        rc = COMMANDS[argv[0]](argv[1:]) or 0
        sys.stdout.flush()  # a reader that left (`| head`) is noticed here, not at interpreter exit
        return rc
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gptlab train --help | head`: the reader left; exit quietly as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 128 + signal.SIGPIPE
    except Exception as e:  # UserError and deliberate stops (divergence) carry an exit_code: one line, no traceback
        if getattr(e, "exit_code", None) is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
