"""The plain-header reader gives what nats-py's own parser gives, on any block it accepts
(hypothesis), and a real nats-server's messages and statuses still read right through
ficha's client."""

from __future__ import annotations

import asyncio
import string

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from services.nats_client import FichaNatsClient, plain_headers
from services.runtime import connect_nats

TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~",
                min_size=1, max_size=20)
VALUE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
SPACE = st.sampled_from(["", " ", "  ", "\t", " \t"])


def nats_py(block: bytes) -> dict[str, str] | None:
    return asyncio.run(Client()._process_headers(block))


@given(st.lists(st.tuples(TOKEN, SPACE, VALUE, SPACE), max_size=6))
@settings(max_examples=300, deadline=None)
def test_plain_blocks_read_as_nats_py_reads_them(fields: list[tuple[str, str, str, str]]
                                                 ) -> None:
    block = b"NATS/1.0\r\n" + b"".join(
        f"{key}:{before}{value}{after}\r\n".encode() for key, before, value, after in fields
    ) + b"\r\n"
    plain = plain_headers(block)
    assert plain is not None
    assert (plain or None) == nats_py(block)


@given(st.binary(max_size=80))
@settings(max_examples=300, deadline=None)
def test_any_other_block_is_left_to_nats_py_or_read_the_same(tail: bytes) -> None:
    block = b"NATS/1.0\r\n" + tail
    plain = plain_headers(block)
    if plain is not None:
        assert (plain or None) == nats_py(block)


def test_statuses_and_folded_lines_go_to_nats_py() -> None:
    for block in (b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 5\r\n\r\n",
                  b"NATS/1.0\r\nA: one\r\n two\r\n\r\n",
                  b"NATS/1.0\r\nBad Key: v\r\n\r\n",
                  "NATS/1.0\r\nK: caf\u00e9\r\n\r\n".encode()):
        assert plain_headers(block) is None


async def test_a_real_server_s_headers_read_through_ficha_s_client(nats_url: str) -> None:
    nc = await connect_nats(nats_url)
    assert isinstance(nc, FichaNatsClient)
    sub = await nc.subscribe("hdr.test")
    await nc.publish("hdr.test", b"x", headers={"Nats-Msg-Id": "e-1", "Ficha-Error": "bad"})
    msg = await sub.next_msg(timeout=2)
    assert msg.headers == {"Nats-Msg-Id": "e-1", "Ficha-Error": "bad"}
    await nc.close()
