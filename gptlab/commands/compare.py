"""`gptlab compare`: ideas against the baseline at equal reference accelerator-hours, over seeds
(gptlab.compare: the plan; gptlab.compare_run: the work; gptlab.compare_report: the table and plot)."""

from __future__ import annotations

from typing import Callable


def command_table(argv: list[str]) -> int:
    """`gptlab COMMAND ...` in this process, its errors raised (the command table of gptlab.cli)."""
    from gptlab.cli import COMMANDS

    return COMMANDS[argv[0]](argv[1:])


def main(argv: list[str], command: Callable[[list[str]], int] | None = None) -> int:
    from gptlab import compare
    from gptlab.compare_report import format_table
    from gptlab.compare_run import run_plan, tabulate_into
    from gptlab.errors import UserError

    if not argv or argv[0] in ("-h", "--help"):
        print(compare.USAGE + "\n\n" + compare.__doc__)
        return 0
    command = command or command_table
    positionals, own, shared, scoped = compare.split_argv(argv)
    if positionals and not any("=" in p for p in positionals):  # RUN ...: tabulate what exists
        if shared or scoped:
            raise UserError(
                "tabulating runs takes only --out, --trust_code, --eval_last_n and --test_split, "
                f"not --{next(iter(shared or scoped))}"
            )
        compare.count(own["eval_last_n"], "--eval_last_n")
        result, written = tabulate_into(positionals, own, command)
    else:
        result, written = run_plan(compare.make_plan(argv), command)
    print(format_table(result))
    if written:
        print("wrote " + ", ".join(map(str, written)))
    return 0
