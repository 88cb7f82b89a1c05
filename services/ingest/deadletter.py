"""Dead-lettering: a rejected or unprocessable message goes, unchanged, to ficha.dlq.

Headers follow the contract: Ficha-Error (stable code), Ficha-Error-Detail (a sentence),
Ficha-Original-Subject and Ficha-Original-Sequence. Nats-Msg-Id derives from the original
stream sequence, so that a redelivery after a crash is stored once in the DLQ stream.
"""

from __future__ import annotations

from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

PROCESSING_FAILED = "processing_failed"
# The code of an event that passed every check but could not be applied (a bug, or an
# input nobody foresaw): set aside so that later events keep flowing.
PROCESSING_CODES: dict[str, str] = {
    PROCESSING_FAILED: "the event passed every check but ficha could not apply it",
}

DLQ_PREFIX = "ficha.dlq"


def _header_safe(text: str, limit: int = 1000) -> str:
    """One line of ASCII: NATS clients parse header values differently once they hold
    other bytes (nats-py hands back email Header objects), so non-ASCII is escaped."""
    flat = " ".join(text.split()).encode("ascii", "backslashreplace").decode("ascii")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def dlq_subject(tenant_token: str, type_token: str) -> str:
    return f"{DLQ_PREFIX}.{tenant_token or '_'}.{type_token or '_'}"


async def dead_letter(
    js: JetStreamContext,
    msg: Msg,
    *,
    original_subject: str,
    code: str,
    detail: str,
    tenant_token: str,
    type_token: str,
) -> Any:
    sequence = msg.metadata.sequence.stream
    headers = {
        "Ficha-Error": code,
        "Ficha-Error-Detail": _header_safe(detail),
        "Ficha-Original-Subject": original_subject,
        "Ficha-Original-Sequence": str(sequence),
        "Nats-Msg-Id": f"dlq-{sequence}",
    }
    return await js.publish(dlq_subject(tenant_token, type_token), msg.data, headers=headers)
