"""`python benchmarks/issue24_driver.py [--slow_writer SECONDS] [--pid_dir DIR] train ARGS...`: `gptlab train ARGS`
for benchmarks/issue24_multigpu.sh.

--slow_writer: every background checkpoint write sleeps SECONDS first, patched the way the test does
(tests/integration/ckpt_ranks_worker.py, slow_writer: gptlab.checkpoint.save_checkpoint wrapped in a sleep);
gptlab has no setting or environment variable for it. --pid_dir: each rank writes DIR/rank<RANK>.pid, so that
the script can signal one rank. Works under torchrun (each rank runs this file) and with gptlab's own launcher
(`... --nproc_per_node N`), whose worker is replaced by one that does the same in the fresh worker process."""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path


def prepare(seconds: float, pid_dir: str) -> None:
    if pid_dir:
        Path(pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(pid_dir) / f"rank{os.environ.get('RANK', '0')}.pid").write_text(f"{os.getpid()}\n")
    if seconds > 0:
        from gptlab import checkpoint as ck

        real = ck.save_checkpoint

        def slow(*args, **kwargs):
            time.sleep(seconds)  # the next save (and its dcp_ folder) starts before this write prunes
            return real(*args, **kwargs)

        ck.save_checkpoint = slow


def worker(argv: list[str]) -> dict:
    """The launcher's worker in a spawned process (which inherits the environment set by main): prepare,
    then gptlab's own worker."""
    from gptlab.commands import train as train_cmd

    prepare(float(os.environ.get("ISSUE24_SLOW_WRITER_S", "0")), os.environ.get("ISSUE24_PID_DIR", ""))
    return train_cmd.worker(argv)


def main(argv: list[str]) -> int:
    seconds, pid_dir = 0.0, ""
    while argv and argv[0] in ("--slow_writer", "--pid_dir"):
        if argv[0] == "--slow_writer":
            seconds = float(argv[1])
        else:
            pid_dir = argv[1]
        argv = argv[2:]
    if not argv or argv[0] != "train":
        raise SystemExit("usage: issue24_driver.py [--slow_writer S] [--pid_dir DIR] train ARGS...")
    from gptlab import cli
    from gptlab.commands import train as train_cmd

    if "--nproc_per_node" in " ".join(argv):  # gptlab's launcher: its workers prepare themselves
        os.environ.update(ISSUE24_SLOW_WRITER_S=str(seconds), ISSUE24_PID_DIR=pid_dir)
        # by its module's name (not __main__), so that a spawned worker finds it
        train_cmd.worker = importlib.import_module("issue24_driver").worker
    else:  # one process, or one rank under torchrun
        prepare(seconds, pid_dir)
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
