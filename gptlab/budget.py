"""Compute classes: reference-accelerator hours turned into a step count,
steps = round(hours * 3600 * tokens_per_second / (train_batch_size * seq_len)), where tokens_per_second
is the config's reference throughput (`gptlab throughput`), not the current machine's: other or more
GPUs, same steps."""

from __future__ import annotations

import argparse
import json
import math
import sys

from gptlab.args import ArgParser
from gptlab.config import parse_hours
from gptlab.errors import UserError

SECONDS_PER_HOUR = 3600
# tokens or steps beyond any run (a 1e18-token budget is ~30 years of a 1,000-GPU cluster)
MAX_AMOUNT = 1e18


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not 0 < v < math.inf:  # also rejects NaN
            raise UserError(f"--{name} must be a positive finite number, got {v}")


def _check_finite(amount: float, what: str) -> float:
    """amount, unless the product of finite inputs overflowed (say --hours 1e308)."""
    if not amount < MAX_AMOUNT:
        raise UserError(f"the {what} of these inputs is beyond {MAX_AMOUNT:.0e}: check --hours and "
                        "--tokens_per_second")
    return amount


def token_budget(hours: float, tokens_per_second: float) -> int:
    """Tokens the reference accelerator processes in `hours` at the config's throughput."""
    _check_positive(hours=hours, tokens_per_second=tokens_per_second)
    return round(_check_finite(hours * SECONDS_PER_HOUR * tokens_per_second, "token budget"))


def steps_for_budget(hours: float, tokens_per_second: float, train_batch_size: int, seq_len: int) -> int:
    """Optimiser steps that spend the budget; train_batch_size is the global batch."""
    _check_positive(hours=hours, tokens_per_second=tokens_per_second,
                    train_batch_size=train_batch_size, seq_len=seq_len)
    # Divide the exact product, not the rounded token budget, so only one rounding happens.
    steps = round(_check_finite(hours * SECONDS_PER_HOUR * tokens_per_second
                                / (train_batch_size * seq_len), "step count"))
    if steps < 1:
        raise UserError(f"a {hours:g}h budget at {tokens_per_second:g} tokens/s is less than one step "
                        f"of {train_batch_size} x {seq_len} tokens: raise --hours or lower the batch")
    return steps


def budget_report(hours: float, tokens_per_second: float, train_batch_size: int, seq_len: int) -> dict:
    steps = steps_for_budget(hours, tokens_per_second, train_batch_size, seq_len)
    per_step = train_batch_size * seq_len
    # tokens_trained is what the steps consume: it differs from the budget by under half a step.
    return dict(hours=hours, accel_seconds=hours * SECONDS_PER_HOUR, tokens_per_second=tokens_per_second,
                train_batch_size=train_batch_size, seq_len=seq_len, tokens_per_step=per_step,
                token_budget=token_budget(hours, tokens_per_second), steps=steps,
                tokens_trained=steps * per_step, accel_seconds_per_step=per_step / tokens_per_second)


def _parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="gptlab budget",
        description="Turn a compute class (accelerator-hours on the reference GPU) into a token budget "
                    "and a step count: steps = round(hours*3600*tokens_per_second / "
                    "(train_batch_size*seq_len)).",
        epilog="example: gptlab budget --hours 6h --tokens_per_second 55416 --train_batch_size 128 "
               "--seq_len 512",
    )
    p.add_argument("--hours", "--compute_class", dest="hours", required=True,
                   help="compute class in accelerator-hours, e.g. 6 or 6h")
    p.add_argument("--tokens_per_second", type=float, required=True,
                   help="the config's reference throughput (from `gptlab throughput`)")
    p.add_argument("--train_batch_size", type=int, required=True,
                   help="global batch in sequences per optimiser step")
    p.add_argument("--seq_len", "--block_size", dest="seq_len", type=int, default=512,
                   help="tokens per sequence (default 512, the Languini setting)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    hours = parse_hours(str(args.hours), "--hours")
    r = budget_report(hours, args.tokens_per_second, args.train_batch_size, args.seq_len)
    if args.json:
        print(json.dumps(r))
        return 0
    s = r["steps"]
    print(f"compute class      {hours:g}h = {r['accel_seconds']:,.0f} accelerator-seconds")
    print(f"throughput         {r['tokens_per_second']:,g} tokens/s (reference)")
    print(f"tokens per step    {r['tokens_per_step']:,} = {r['train_batch_size']} sequences x "
          f"{r['seq_len']} tokens")
    print(f"token budget       {r['token_budget']:,} tokens")
    print(f"steps              {s:,}")
    print(f"tokens trained     {r['tokens_trained']:,} ({s} steps x {r['tokens_per_step']:,})")
    print(f"accel-s per step   {r['accel_seconds_per_step']:.4f}")
    print(f"train with         --max_train_steps {s} --decay_steps {s} --tokens_per_second "
          f"{r['tokens_per_second']:g}")
    return 0
