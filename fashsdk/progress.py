"""Progress for long work on stderr (stdout stays machine-readable): tqdm when installed,
else a plain line every few seconds, so tqdm is not a runtime dependency."""
from __future__ import annotations

import sys
import time
from typing import Any, Callable


class _PlainBar:
    def __init__(self, total: int | None, desc: str, unit: str, every_s: float = 5.0) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n, self._start, self._last = 0, time.perf_counter(), 0.0

    def update(self, count: int = 1) -> None:
        self.n += count
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(now)

    def _print(self, now: float) -> None:
        rate = self.n / max(now - self._start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        print(f"{self.desc}: {self.n}{of} {self.unit} ({rate:.0f} {self.unit}/s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._print(time.perf_counter())


def progress_bar(total: int | None, desc: str, unit: str = "img") -> tuple[Any, Callable[[int], None]]:
    """A bar and its update(count) function; call bar.close() at the end."""
    try:
        from tqdm import tqdm
    except ImportError:
        plain = _PlainBar(total, desc, unit)
        return plain, plain.update
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1, dynamic_ncols=True)
    return bar, bar.update
