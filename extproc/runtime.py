"""Process-wide tuning of a long-running worker: the garbage collector.

After startup a worker holds about 130k objects (protobuf descriptors, libraries, config). A
full collection walks all of them with the event loop stopped: 66 to 85 ms measured under load,
a few times a minute, long enough for the requests in flight to wait and for Redis calls to
pass their 50 ms timeout into the failure modes. Freezing the startup heap leaves a full
collection only what was allocated since (2 to 4 ms measured).

A request allocates many short-lived objects and frees nearly all of them by reference
counting. With the default threshold (700 net allocations) the young generation was still
collected about every 30 requests, 25 to 30 µs per request in all; at 7000 it rarely fills,
and reference cycles are still collected.
(Both measured with ``gc.callbacks`` around ``perf/bench_hotpath.py``; ``perf/README.md``.)
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 7000


def settle_heap() -> None:
    """Call once startup is done, before serving: collect, freeze what is left, and collect
    the young generation less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
