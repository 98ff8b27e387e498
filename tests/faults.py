"""Fault injection shared by the tiers: a writer whose disk fills up."""

import errno


class _FullDisk:
    """A writer over a real file that fails with ENOSPC once `budget` bytes were written."""

    def __init__(self, path, budget):
        self.f, self.budget = open(path, "wb"), budget

    def write(self, b):
        if len(b) > self.budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()

    def fileno(self):
        return self.f.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
