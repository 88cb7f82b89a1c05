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

# New objects between young collections (CPython's default: 700), then how many young
# collections between middle ones (default 10) and middle between full ones (default 10).
THRESHOLDS = (50_000, 20, 100)


def tune_for_throughput() -> None:
    """Collect less often, and never scan again what start-up created (modules, settings)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
