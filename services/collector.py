"""The garbage collector's settings for ficha's processes.

CPython runs its cycle collector every 700 new container objects by default, and each
older-generation pass walks every live object. ficha's processes keep many objects alive
(the ingest worker's hot contacts, pages of decoded events) and create dicts quickly, so
with the defaults the collector took about a third of their CPU: measured on 30,000 demo
events on PostgreSQL, ingest 98 → 67 µs of Python CPU per event, the contacts projection
80 → 55, the audience projection 116 → 83, reading and decoding the log 44 → 29
(bench/RESULTS.md). ficha's own data holds no reference cycles to collect, so running the
collector less often costs little memory.
"""

from __future__ import annotations

import gc
import sys

# New objects between young collections (CPython's default: 700), then how many young
# collections between middle ones (default 10) and middle between full ones (default 10).
THRESHOLDS = (50_000, 20, 100)


# How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
# The audience projection's write-behind pairs a thread that computes with one that waits
# on the database: each time the database answers, the waiting thread needs the GIL back,
# and with the default it waited up to 5 ms a time (a segment's backfill at 1M contacts:
# 14.4 -> 13.4 s with 1 ms). The API's thread pool and the pipeline measured the same
# either way (bench/RESULTS.md, session 11).
SWITCH_INTERVAL_S = 0.001


def tune_for_throughput() -> None:
    """Collect less often, and never scan again what start-up created (modules, settings);
    hand the GIL over sooner (``SWITCH_INTERVAL_S``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
