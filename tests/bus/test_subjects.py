"""The subject helpers of services.streams (no server needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg

from services.streams import (
    consumer_name,
    original_subject,
    partition_of,
    partition_subject,
    stream_sequence,
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


_NUMBER = st.integers(min_value=0, max_value=2**63)


@given(delivered=_NUMBER, stream_seq=_NUMBER, consumer_seq=_NUMBER, pending=_NUMBER,
       newer_form=st.booleans())
def test_the_stream_sequence_is_read_as_nats_py_reads_it(
    delivered: int, stream_seq: int, consumer_seq: int, pending: int, newer_form: bool
) -> None:
    tail = f"FICHA_IN.ficha-agg-p3.{delivered}.{stream_seq}.{consumer_seq}.1733339999000000000"
    reply = (f"$JS.ACK._.ACCHASH.{tail}.{pending}.x7Yz" if newer_form
             else f"$JS.ACK.{tail}.{pending}")
    assert stream_sequence(reply) == Msg.Metadata._from_reply(reply).sequence.stream
    assert stream_sequence(reply) == stream_seq


@pytest.mark.parametrize("reply", ["", "_INBOX.abc", "$JS.ACK.FICHA_IN.c.1.2.3"])
def test_a_reply_that_is_not_an_ack_subject_is_refused(reply: str) -> None:
    with pytest.raises(ValueError, match="not a JetStream ack subject"):
        stream_sequence(reply)
