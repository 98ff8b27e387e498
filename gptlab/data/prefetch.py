"""Background batch production, so the training step never waits for the sampler.

A worker thread draws the next optimiser step's micro-batches, pins them and starts
their host-to-device copies while the GPU works on the current step. Each item
carries the sampler state from *before* it was drawn: a checkpoint records the
state of the next unconsumed batch, so a resumed run draws exactly that batch again,
however far ahead the worker has run.

Threads (not processes) suffice: the work is numpy gathers and copies that release
the GIL, and the sampler state stays in one place.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable


class Prefetcher:
    def __init__(self, produce: Callable[[], tuple[Any, Any]], depth: int = 2, enabled: bool = True):
        """produce() -> (state_before, batches); called in order, from one thread only."""
        self.produce = produce
        self.enabled = enabled
        if not enabled:
            return
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gptlab-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                item = ("ok", self.produce())
            except BaseException as e:  # handed to the consumer, which re-raises it
                item = ("error", e)
            while not self.stop.is_set():
                try:
                    self.q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[0] == "error":
                return

    def get(self) -> tuple[Any, Any]:
        if not self.enabled:
            return self.produce()
        kind, value = self.q.get()
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        if self.enabled:
            self.stop.set()
            self.thread.join(timeout=5)
