"""Per-key token buckets, so a violation storm exports a bounded number of spans.

A bug in a hot loop can fail thousands of times a second, every time at the
same two sites.  Spans, events and logs are limited per key; the counter
metric is not (it stays exact), and the next span let through for a key says
how many were held back.
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
        # key -> [tokens, last refill time, suppressed since last allowed]
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()

    def allow(self, key: Hashable) -> int | None:
        """None to suppress; else how many were suppressed for the key since
        the last report let through."""
        if self.rate <= 0:
            return 0  # 0 means unlimited
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = [self.burst, now, 0]
                self._buckets[key] = bucket
                if len(self._buckets) > self.max_keys:
                    # The least recently seen key goes; at worst it gets a
                    # fresh burst if it comes back.
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
                bucket[1] = now
            if bucket[0] < 1.0:
                bucket[2] += 1
                return None
            bucket[0] -= 1.0
            suppressed = int(bucket[2])
            bucket[2] = 0
            return suppressed
