"""What a long command is doing: phase lines and progress bars, on stderr (stdout keeps the JSON it prints).

The CLI opens `reporting("bench")` (also eval and generate) around a command; inside it, library code says which
phase it is in (`phase("draft 1/2 runs/a/final, gamma 4: timed run 2/3, speculative")`) and counts prompts with
`bar(total, desc)`. Outside a `reporting` block (the library called from Python, the tests) both are silent.

- Phase lines always print while reporting: one line each, with the time since the command started, so a
  30-minute bench in a log file says where it is.
- Bars (tqdm) print only when stderr is a terminal, unless SPECDISTILL_PROGRESS=1 forces them (0 turns them off).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time

PROGRESS_ENV = "SPECDISTILL_PROGRESS"  # 1: bars even when stderr is not a terminal; 0: never

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("specdistill_reporting", default=None)


def bars_enabled() -> bool:
    """Bars on: SPECDISTILL_PROGRESS=1 (or true/yes); off: 0 (or false/no); unset: when stderr is a terminal."""
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value:
        return value not in ("0", "false", "no", "off")
    return sys.stderr.isatty()


class _Reporter:
    def __init__(self, command: str, bars: bool):
        self.command, self.bars, self.start = command, bars, time.monotonic()

    def phase(self, text: str) -> None:
        seconds = int(time.monotonic() - self.start)
        stamp = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        print(f"specdistill {self.command} [{stamp}] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def reporting(command: str, bars: bool | None = None):
    """Phase lines (and bars, see bars_enabled) for the block; `command` names the lines' source."""
    token = _ACTIVE.set(_Reporter(command, bars_enabled() if bars is None else bars))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def phase(text: str) -> None:
    """Say which phase the command is in (silent outside `reporting`)."""
    reporter = _ACTIVE.get()
    if reporter is not None:
        reporter.phase(text)


def bar(total: int, desc: str):
    """A tqdm bar over `total` items on stderr (disabled outside `reporting`, or when bars are off); use
    `.update(n)` and close it (it is a context manager)."""
    from tqdm.auto import tqdm

    reporter = _ACTIVE.get()
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=reporter is None or not reporter.bars)
