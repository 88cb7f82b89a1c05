"""Operating the dead-letter stream: list, show, re-drive, purge.

Dead letters live in FICHA_DLQ (``ficha.dlq.<tenant>.<type>``), each the original body
with the headers ``Ficha-Error``, ``Ficha-Error-Detail``, ``Ficha-Original-Subject`` and
``Ficha-Original-Sequence``. A re-drive publishes the body again to its original subject,
so it goes through the normal path (decoding, the tenant's checks, the fold; an event that
was applied meanwhile is found among the received ids and not applied twice), and then
deletes it from FICHA_DLQ; if it is still wrong it comes back with a fresh reason.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from contracts.decode import REJECTION_CODES, read_json
from services.domain.tenant import DEFINITION_CODES
from services.ingest.deadletter import PROCESSING_CODES
from services.streams import DLQ_STREAM

# Every code a dead letter may carry (docs/events.md lists them with their meanings).
DEAD_LETTER_CODES = frozenset({*REJECTION_CODES, *DEFINITION_CODES, *PROCESSING_CODES})


@dataclass
class DeadLetter:
    seq: int
    subject: str
    tenant: str
    type: str
    code: str
    detail: str
    original_subject: str
    original_sequence: str
    size: int
    event_id: str | None
    body: bytes

    def to_dict(self, with_body: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data.pop("body")
        if with_body:
            try:
                data["body"] = read_json(self.body)
            except ValueError:
                data["body"] = self.body.decode("utf-8", errors="replace")
        return data


@dataclass(frozen=True)
class Selection:
    """Which dead letters: all of them, a tenant's, a code's, or given sequences."""

    tenant: str | None = None
    code: str | None = None
    seqs: frozenset[int] = frozenset()

    def matches(self, letter: DeadLetter) -> bool:
        return ((self.tenant is None or letter.tenant == self.tenant)
                and (self.code is None or letter.code == self.code)
                and (not self.seqs or letter.seq in self.seqs))


async def read(js: JetStreamContext, selection: Selection = Selection(),
               on_progress: Callable[[int, int], None] | None = None) -> list[DeadLetter]:
    """The dead letters selected, oldest first."""
    info = await js.stream_info(DLQ_STREAM)
    first, last = info.state.first_seq, info.state.last_seq
    if info.state.messages == 0:
        return []
    # A sequence outside the stream's range is not there (0, negative or too large ones
    # would be refused by NATS as a bad request, not answered as missing).
    sequences = (sorted(s for s in selection.seqs if first <= s <= last)
                 if selection.seqs else range(first, last + 1))
    out = []
    for done, seq in enumerate(sequences, 1):
        try:
            msg = await js.get_msg(DLQ_STREAM, seq=seq)
        except NotFoundError:
            continue
        letter = letter_from(seq, msg.subject or "", msg.headers or {}, msg.data or b"")
        if selection.matches(letter):
            out.append(letter)
        if on_progress is not None:
            on_progress(done, len(sequences))
    return out


async def tenant_letters(js: JetStreamContext, tenant: str, start: int,
                         limit: int) -> AsyncIterator[DeadLetter]:
    """The tenant's dead letters from sequence ``start`` on, oldest first, at most
    ``limit`` of them: read by subject (NATS skips everyone else's), one at a time."""
    seq = start
    for _ in range(limit):
        try:
            msg = await js.get_msg(DLQ_STREAM, seq=seq, subject=f"ficha.dlq.{tenant}.>",
                                   next=True)
        except NotFoundError:
            return
        letter = letter_from(msg.seq or seq, msg.subject or "", msg.headers or {}, msg.data or b"")
        yield letter
        seq = letter.seq + 1


async def read_tenant(js: JetStreamContext, tenant: str, *, recent: int = 20,
                      scan_limit: int = 10_000) -> tuple[list[DeadLetter], Counter[str], bool]:
    """One tenant's dead letters (see ``tenant_letters``): the ``recent`` newest, the
    count per error code, and whether the scan stopped early."""
    try:
        info = await js.stream_info(DLQ_STREAM)
    except NotFoundError:
        return [], Counter(), False
    newest: deque[DeadLetter] = deque(maxlen=recent)
    codes: Counter[str] = Counter()
    scanned = 0
    async for letter in tenant_letters(js, tenant, info.state.first_seq, scan_limit):
        newest.append(letter)
        codes[letter.code] += 1
        scanned += 1
    return list(reversed(newest)), codes, scanned == scan_limit


async def recent_start(js: JetStreamContext, window: int) -> int | None:
    """The first sequence of the ``window`` newest in FICHA_DLQ (any tenant's), where a
    look for a recent dead letter starts; None if there is no FICHA_DLQ yet."""
    try:
        info = await js.stream_info(DLQ_STREAM)
    except NotFoundError:
        return None
    return max(info.state.first_seq, info.state.last_seq - window + 1, 1)


async def find_event(js: JetStreamContext, tenant: str, event_id: str, start: int, *,
                     limit: int = 1000) -> tuple[DeadLetter | None, int]:
    """The newest of the tenant's dead letters from sequence ``start`` on whose body holds
    ``event_id`` (among at most ``limit`` of them, see ``tenant_letters``), and the
    sequence to go on from. Dead letters carry no event id of their own (their subject
    names the tenant and type, their Nats-Msg-Id the original sequence), so each body is
    read."""
    found, seq = None, start
    async for letter in tenant_letters(js, tenant, start, limit):
        if letter.event_id == event_id:
            found = letter
        seq = letter.seq + 1
    return found, seq


def groups(letters: list[DeadLetter]) -> list[dict[str, Any]]:
    """Counts by tenant and error code, largest first, with the latest example of each."""
    counts = Counter((d.tenant, d.code) for d in letters)
    latest = {(d.tenant, d.code): d for d in letters}
    return [
        {"tenant": tenant, "code": code, "count": n, "latest_seq": latest[(tenant, code)].seq,
         "latest_detail": latest[(tenant, code)].detail}
        for (tenant, code), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


async def redrive(js: JetStreamContext, letters: list[DeadLetter],
                  on_progress: Callable[[int], None] | None = None) -> int:
    """Publish each to its original subject, then delete it from FICHA_DLQ."""
    done = 0
    for letter in letters:
        if not letter.original_subject.startswith("ficha.in."):
            raise ValueError(f"dead letter {letter.seq} came from {letter.original_subject!r}, "
                             "which is not an ingest subject; it cannot be re-driven")
        # The id makes a re-drive repeated at once a duplicate for JetStream; ficha's own
        # received ids make any later repetition harmless too.
        await js.publish(letter.original_subject, letter.body,
                         headers={"Nats-Msg-Id": f"redrive-{letter.seq}"})
        await js.delete_msg(DLQ_STREAM, letter.seq)
        done += 1
        if on_progress is not None:
            on_progress(done)
    return done


async def purge(js: JetStreamContext, letters: list[DeadLetter]) -> int:
    for letter in letters:
        await js.delete_msg(DLQ_STREAM, letter.seq)
    return len(letters)


def letter_from(seq: int, subject: str, raw_headers: dict[str, Any], body: bytes) -> DeadLetter:
    # str(): a client may hand back a parsed header object for a value it found unusual.
    headers = {key: str(value) for key, value in raw_headers.items()}
    parts = subject.split(".")
    event_id = None
    try:
        decoded = read_json(body)
        if isinstance(decoded, dict) and isinstance(decoded.get("event_id"), str):
            event_id = decoded["event_id"]
    except ValueError:
        pass
    return DeadLetter(
        seq=seq, subject=subject,
        tenant=parts[2] if len(parts) > 2 else "_", type=parts[3] if len(parts) > 3 else "_",
        code=headers.get("Ficha-Error", "?"), detail=headers.get("Ficha-Error-Detail", ""),
        original_subject=headers.get("Ficha-Original-Subject", ""),
        original_sequence=headers.get("Ficha-Original-Sequence", ""),
        size=len(body), event_id=event_id, body=body,
    )
