"""The NATS client of ficha's long-running processes: nats-py's, with plain headers read
without the standard library's email parser.

nats-py 2.14 (pinned) parses every message's header block with ``email.parser``: about
11 µs a message, 14 % of the ingest process in a py-spy sample, for blocks that are
nearly always one line (``Nats-Msg-Id: …``). A block whose lines are all plain
``Token: printable value`` pairs is read here directly, with the same result nats-py
gives (keys and values stripped, the last of a repeated key kept); anything else (a
status line, folded lines, non-ASCII, a line that is not such a pair) goes to nats-py's
own parser. A property test compares both on generated blocks
(tests/bus/test_nats_client.py).
"""

from __future__ import annotations

import re
from typing import Any

from nats.aio.client import Client

_PREFIX = b"NATS/1.0\r\n"
# A header field as RFC 7230 writes it: a token, a colon, printable ASCII.
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([ -~]*?)[ \t]*")


def plain_headers(block: bytes) -> dict[str, str] | None:
    """The headers of a plain block, or None when nats-py's parser must read it."""
    if not block.startswith(_PREFIX):
        return None
    headers: dict[str, str] = {}
    for line in block[len(_PREFIX):].split(b"\r\n"):
        if not line:
            break  # the blank line that ends the block (what follows is not headers)
        field = _FIELD.fullmatch(line)
        if field is None:
            return None
        headers[field[1].decode()] = field[2].decode()
    return headers


class FichaNatsClient(Client):
    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        if headers:
            plain = plain_headers(bytes(headers))
            if plain is not None:
                return plain or None
        return await super()._process_headers(headers)
