"""Bounds on what a caller may ask for: the HTTP API and the CLI enforce the same ones.

Kept apart from the queries they bound so that the CLI can name them in its help
without importing the read side.
"""

from __future__ import annotations

PREVIEW_SAMPLE_MAX = 100  # contacts a segment preview lists per group (enter, leave, stay)
SERIES_DAYS_MAX = 366  # days of a statistics' daily series
PAGE_LIMIT_MAX = 1000  # rows of one page: the client list, a timeline, a segment's members
