"""The progress bar of a run: examples done out of all, examples per second, time left; on stderr."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class RunProgress:
    """A tqdm bar counting examples (shown by one process only; ``enabled=False`` for ``--quiet``).

    The rate and the time left count only the examples of this session, not those resumed from disk.
    """

    def __init__(self, total: int, done: int, enabled: bool, description: str = "attributing") -> None:
        self.enabled = enabled
        self.start_done = done
        self.started = time.perf_counter()
        self.bar = (
            tqdm(
                total=total,
                initial=done,
                unit="ex",
                desc=description,
                file=sys.stderr,
                dynamic_ncols=True,
                smoothing=0.1,
                mininterval=0.5,
            )
            if enabled
            else None
        )

    def advance_to(self, done: int, errors: int | None = None) -> None:
        """Set the count of examples done (attributed or found bad) and, optionally, the bad rows so far."""
        if self.bar is None:
            return
        if errors is not None:
            self.bar.set_postfix_str(f"bad rows: {errors}", refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
