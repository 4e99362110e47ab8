"""Progress bars for long work (tqdm), on stderr so stdout stays machine-readable."""
from __future__ import annotations

import sys
from typing import Callable

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "img") -> tuple[tqdm, Callable[[int], None]]:
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1, dynamic_ncols=True)
    return bar, bar.update
