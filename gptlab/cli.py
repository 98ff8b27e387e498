"""The `gptlab` command table: find the sub-command's module and hand over. No logic of its own."""

from __future__ import annotations

import difflib
import importlib
import os
import signal
import sys

from gptlab.errors import UserError

USAGE = """usage: gptlab COMMAND [ARGS]

commands:
  prepare NAME [--input PATH] [--tokenizer char|gpt2|sentencepiece] [--out DIR]   text -> token files
  train [PRESET | CONFIG.toml | config.py] [--key=value ...]   train (`gptlab train PRESET \
--help`: every key)
        [--nproc_per_node N [--nnodes M --rdzv_endpoint HOST:PORT]]   ... on N workers per machine
        [--smoke]                                      ... any preset shrunk to a minute on a CPU
  sample --run DIR | --init_from gpt2 [--start TEXT|FILE:f] [...]   print samples
  eval --checkpoint_file F [--config_file C] --eval_data_split test --last_n 128
  model [PRESET] [--key=value ...]                   build the model, run a dummy batch, print its size
  budget --hours H --tokens_per_second T --train_batch_size B --seq_len S
  throughput PRESET                                  reference throughput sweep (GPU)
  bench [PRESET] [...]                               time the training step
  plot RUN [RUN ...] --out F.png                     compare runs
  compare base=PRESET idea=FILE.py:Class ... --dataset D --compute_class 6h --seeds 3
                                                     ideas vs the baseline at equal accelerator-hours
  export RUN --to hf OUT/                            Hugging Face GPT-2 folder
  demo [--max_iters N]                               prepare tiny Shakespeare, train on CPU, sample
"""


def _lazy(module: str, fn: str = "main"):
    return lambda argv: getattr(importlib.import_module(module), fn)(argv)


COMMANDS = {"prepare": _lazy("gptlab.data.prepare"), "train": _lazy("gptlab.commands.train"),
            "sample": _lazy("gptlab.sample"), "eval": _lazy("gptlab.evaluate"),
            "model": _lazy("gptlab.commands.model"), "budget": _lazy("gptlab.budget"),
            "throughput": _lazy("gptlab.bench", "throughput_main"), "bench": _lazy("gptlab.bench"),
            "plot": _lazy("gptlab.plot"), "export": _lazy("gptlab.hf", "main_export"),
            "demo": _lazy("gptlab.commands.demo"), "compare": _lazy("gptlab.commands.compare")}


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
    # `gptlab train --help | head`: the reader left; exit quietly as SIGPIPE would
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 128 + signal.SIGPIPE
    # UserError and deliberate stops (divergence) carry an exit_code: one line, no traceback
    except Exception as e:
        if getattr(e, "exit_code", None) is None:
            raise
        if getattr(e, "rank_zero_only", False) and os.environ.get("RANK", "0") != "0":
            return e.exit_code  # every rank found the same: rank 0 says it once
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
