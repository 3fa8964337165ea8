"""Per-key token buckets, so a violation storm exports a bounded number of spans.

A bug in a hot loop can fail thousands of times a second, every time at the
same two sites.  Spans, events, logs and exporter lines are limited per key;
the counter is not (it stays exact).  What is held back is never lost: the
next report let through for its key carries the count, and a key that goes
quiet with some still held back hands them to :meth:`RateLimiter.quiet`, so
the reporter can say so once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class RateLimiter:
    """``rate`` reports a second per key, in bursts of up to ``max(rate, 1)``."""

    def __init__(
        self,
        rate: float,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(rate, 1.0)
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [tokens, last refill time, held back since the last one let through]
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()
        #: Held-back counts of keys pushed out of the table, not yet taken.
        self._evicted: list[tuple[Hashable, int]] = []

    def allow(self, key: Hashable) -> int | None:
        """None to hold this one back; else how many were held back for the
        key since the last one let through."""
        if self.rate <= 0:
            return 0  # 0 means unlimited
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = [self.burst, now, 0]
                self._buckets[key] = bucket
                if len(self._buckets) > self.max_keys:
                    # The least recently seen key goes; what it held back is
                    # kept for quiet(), and it gets a fresh burst if it returns.
                    old_key, old = self._buckets.popitem(last=False)
                    if old[2]:
                        self._evicted.append((old_key, int(old[2])))
            else:
                self._buckets.move_to_end(key)
                bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
                bucket[1] = now
            if bucket[0] < 1.0:
                bucket[2] += 1
                return None
            bucket[0] -= 1.0
            held = int(bucket[2])
            bucket[2] = 0
            return held

    def quiet(self, after: float | None = None) -> list[tuple[Hashable, int]]:
        """Keys still holding some back and not seen for ``after`` seconds
        (default: two refill intervals), with their counts, which are then
        reset; ``after=0`` takes every held-back count."""
        if after is None:
            # One interval is when the next report would be let through; were
            # that also when a key counts as quiet, a report arriving just as
            # its token came back would race the delivery thread for the count.
            # The second interval lets it carry the count on its own span.
            after = 2.0 / self.rate if self.rate > 0 else 0.0
        now = self._clock()
        taken: list[tuple[Hashable, int]] = []
        with self._lock:
            taken, self._evicted = self._evicted, []
            for key, bucket in self._buckets.items():
                if bucket[2] and now - bucket[1] >= after:
                    taken.append((key, int(bucket[2])))
                    bucket[2] = 0
        return taken
