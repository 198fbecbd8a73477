"""Process-wide tuning of a long-running worker: the garbage collector.

After startup a worker holds about 130k objects (protobuf descriptors, libraries, config). A
full collection walks all of them with the event loop stopped: 66 to 85 ms measured under load,
a few times a minute, long enough for the requests in flight to wait and for Redis calls to
pass their 50 ms timeout into the failure modes. Freezing the startup heap leaves a full
collection only what was allocated since (2 to 4 ms measured). The price: what startup left
reachable is never collected, even once unreachable (the first config snapshot after a
reload, say), a bounded one-off.

A request allocates many short-lived objects and frees nearly all of them by reference
counting; what gRPC leaves in reference cycles (about 10 objects per request) waits for the
young generation's collection. Measured in a worker under 380 requests/s for 10 s (gc.callbacks,
startup included), young thresholds 700 / 2000 / 7000 gave 121 / 42 / 13 collections, 101 / 63
/ 99 ms in all, 0.8 / 1.5 / 7.6 ms per pause: 2000 collects least in all with short pauses.
Without gRPC (``perf/bench_hotpath.py``) the default threshold cost 25 to 30 µs per request.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 2000


def settle_heap() -> None:
    """Call once startup is done, before serving: collect, freeze what is left, and collect
    the young generation less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
