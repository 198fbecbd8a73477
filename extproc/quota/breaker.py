"""A circuit breaker: a dead Redis costs microseconds per request, not a timeout each."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``open_seconds`` one probe may pass."""

    def __init__(self, threshold: int = 3, open_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self.open_seconds else "open"

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._clock() - self._opened_at < self.open_seconds or self._probing:
            return False
        self._probing = True  # exactly one probe at a time
        return True

    def release(self) -> None:
        """The call ended with neither verdict (cancelled): let the next probe through."""
        self._probing = False

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self._opened_at is not None or self._failures >= self.threshold:
            self._opened_at = self._clock()
