"""Rules for free text that ficha stores (names, labels, values in rules).

PostgreSQL's text cannot hold the NUL character (U+0000): a value with one would be
accepted here and then fail every time a read model tries to write it, stopping that read
model for every tenant. It is refused where it comes in instead.
"""

from __future__ import annotations

NUL_PROBLEM = "holds a NUL character (U+0000), which no text in ficha may contain"


def has_nul(text: str) -> bool:
    return "\x00" in text
