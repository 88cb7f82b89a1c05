"""How `ficha erasures show` writes the stream messages an erasure deleted: a count and
runs of sequences, not every number (one contact's erasure deleted about 1,400)."""

from __future__ import annotations

from services.cli_privacy import sequence_ranges


def test_sequences_are_written_as_a_count_and_runs() -> None:
    assert sequence_ranges([7]) == "1 message: 7"
    assert sequence_ranges([9, 3, 4, 5, 12, 4]) == "5 messages: 3-5, 9, 12"


def test_past_a_dozen_runs_the_rest_is_counted() -> None:
    every_other = list(range(1, 60, 2))  # 30 runs of one
    written = sequence_ranges(every_other)
    assert written.startswith("30 messages: 1, 3, 5, ")
    assert written.endswith("23, and 18 more runs (--json lists them)")
    assert len(sequence_ranges(list(range(1, 1401)))) < 40  # 1,400 in a row: one run
