"""The subject helpers of services.streams (no server needed)."""

from __future__ import annotations

import pytest

from services.streams import (
    consumer_name,
    original_subject,
    partition_of,
    partition_subject,
    transform_dest,
)


def test_names_and_filters() -> None:
    assert partition_subject(3) == "ficha.part.3.>"
    assert consumer_name(3) == "ficha-agg-p3"
    assert transform_dest(8) == "ficha.part.{{partition(8,1)}}.{{wildcard(1)}}.{{wildcard(2)}}"


@pytest.mark.parametrize(
    ("stored", "original", "partition"),
    [
        ("ficha.part.3.acme.form_submitted", "ficha.in.acme.form_submitted", 3),
        ("ficha.part.12.my-shop_1.email_sent", "ficha.in.my-shop_1.email_sent", 12),
        ("ficha.in.acme", "ficha.in.acme", None),
        ("ficha.in.a.b.c", "ficha.in.a.b.c", None),
        ("ficha.part.x.acme.form_submitted", "ficha.part.x.acme.form_submitted", None),
        ("ficha.part.3", "ficha.part.3", None),
        ("ficha.dlq.acme.form_submitted", "ficha.dlq.acme.form_submitted", None),
    ],
)
def test_stored_subjects_map_back(stored: str, original: str, partition: int | None) -> None:
    assert original_subject(stored) == original
    assert partition_of(stored) == partition
