"""Read-model rows selected in the form an answer shows them, ready to encode.

Turning a row into JSON in Python (timestamps to text, stored JSON parsed and encoded
again) cost the API more than its query; having the database write each row as a JSON
object (``json_build_object``) cost PostgreSQL twice the query. The middle way: the
database gives every value as the answer shows it, and stored JSON as text, which the
answer embeds without reading it (``msgspec.Raw``).

Columns are given with their PostgreSQL type (``projections.contacts.CONTACT_TYPES``),
which says how each is selected on either backend:

* ``timestamptz``: the fixed-width UTC text of ``services.domain.stamps.utc_iso``
  (SQLite stores it as that text already);
* ``jsonb``: its JSON text, embedded as is (SQLite stores it as JSON text);
* ``boolean``: true / false (SQLite stores 1 / 0: turned into booleans here);
* anything else: as the database gives it (text, integers).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from projections.db import utc_text


class AnswerColumns:
    """How to select ``columns`` of the table aliased ``alias`` for an answer, and how
    to finish the rows so selected."""

    def __init__(self, is_postgres: bool, alias: str,
                 columns: Iterable[tuple[str, str]]) -> None:
        selected = []
        self.json: list[str] = []
        self.booleans: list[str] = []
        for name, pg_type in columns:
            expression = f"{alias}.{name}"
            if pg_type == "timestamptz":
                expression = utc_text(expression, is_postgres)
            elif pg_type == "jsonb":
                self.json.append(name)
                if is_postgres:
                    expression = f"{expression}::text"
            elif pg_type == "boolean" and not is_postgres:
                self.booleans.append(name)
            selected.append(f"{expression} AS {name}")
        self.sql = ", ".join(selected)

    def finish(self, row: dict[str, Any]) -> dict[str, Any]:
        """A row selected with ``sql``, ready to encode (changed in place)."""
        for name in self.json:
            row[name] = msgspec.Raw(row[name].encode())
        for name in self.booleans:
            if row[name] is not None:
                row[name] = bool(row[name])
        return row


def plain(value: Any) -> Any:
    """An answer with its embedded JSON read: dicts, lists and values only."""
    if isinstance(value, msgspec.Raw):
        return msgspec.json.decode(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
