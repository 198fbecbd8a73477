"""Per-request phase timings (identify, classify, route, quota) for the latency histograms."""

from __future__ import annotations

import time


class PhaseTimer:
    """Laps of one request's decision. ``resume()`` skips time spent waiting (for the body)."""

    __slots__ = ("_last", "laps")

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps.append((phase, now - self._last))
        self._last = now

    def resume(self) -> None:
        self._last = time.perf_counter()

    @property
    def total(self) -> float:
        return sum(seconds for _, seconds in self.laps)
