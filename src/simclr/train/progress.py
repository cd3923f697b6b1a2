"""Progress of a training epoch: a live bar on a terminal, plain lines in a log file.

On a terminal (stderr is a TTY) tqdm redraws one line with carriage returns. Written to a file (cluster jobs,
``> log 2>&1``) those frames would pile up as one endless line, so there the progress is a plain line every
``every`` steps instead; the trainer adds one line per epoch either way.
"""

from __future__ import annotations

import sys
import time

__all__ = ["EpochProgress", "epoch_progress"]


class EpochProgress:
    """Plain-line progress: ``update(1)`` per step, ``set_postfix(...)`` for the latest figures; a line every ``every``
    steps (and none when ``every`` is 0)."""

    def __init__(self, total: int, done: int, desc: str, every: int, stream=None):
        self.total, self.n, self.desc, self.every = total, done, desc, every
        self.stream = stream if stream is not None else sys.stderr
        self.postfix: dict[str, str] = {}
        self.start, self.start_n = time.perf_counter(), done

    @property
    def prints_next(self) -> bool:
        """Whether the next ``update`` prints a line (so its figures should be fresh)."""
        return bool(self.every) and (self.n + 1) % self.every == 0 and self.n + 1 < self.total

    def set_postfix(self, **kw) -> None:
        """The figures the next line shows (``loss="5.123"``), as tqdm's method of the same name."""
        self.postfix = {k: str(v) for k, v in kw.items()}

    def update(self, k: int = 1) -> None:
        """``k`` more steps done; prints a line when the count reaches a multiple of ``every`` (not the epoch's last
        step: the trainer's epoch line follows it)."""
        self.n += k
        if self.every and self.n % self.every == 0 and self.n < self.total:
            rate = (self.n - self.start_n) / max(time.perf_counter() - self.start, 1e-9)
            extra = "".join(f"  {k} {v}" for k, v in self.postfix.items())
            print(f"{self.desc}  step {self.n}/{self.total}{extra}  {rate:.2f} steps/s", file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to clear: plain lines stay (tqdm's bar is removed on close)."""


def epoch_progress(total: int, done: int, desc: str, enabled: bool, every: int):
    """A tqdm bar when stderr is a terminal, else an ``EpochProgress`` printing every ``every`` steps; None when
    progress is off."""
    if not enabled:
        return None
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=done, desc=desc, leave=False, dynamic_ncols=True)
    return EpochProgress(total, done, desc, every)
