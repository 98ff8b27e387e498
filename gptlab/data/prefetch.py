"""Background batch production: a worker thread draws (and starts copying) the next step's micro-batches
while the GPU works. Each item carries the sampler state from *before* it was drawn, so a checkpoint
records the next unconsumed batch however far ahead the worker is. Threads suffice: numpy gathers release
the GIL. """

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
