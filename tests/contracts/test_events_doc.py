"""docs/events.md: generated from the Structs, complete, and refused when stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import events_doc
from contracts.decode import DECODER_ONLY_RULES, REJECTION_CODES
from contracts.events import EVENT_TYPES, OLDER_VERSIONS
from contracts.outbound import OUT_TYPES
from contracts.schema_gen import SCHEMA_DIR
from services.domain.tenant import DEFINITION_CODES
from services.ingest.deadletter import PROCESSING_CODES

ROOT = Path(__file__).resolve().parents[2]


def test_check_fails_on_a_stale_file_and_passes_once_it_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "events.md"
    assert events_doc.main(["--check"], doc) == 1  # missing
    doc.write_text(events_doc.render().replace("form_submitted", "form_sent", 1))
    assert events_doc.main(["--check"], doc) == 1
    assert "stale; run python -m contracts.events_doc" in capsys.readouterr().out
    assert events_doc.main([], doc) == 0
    assert events_doc.main(["--check"], doc) == 0


def test_the_check_is_one_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "contracts.events_doc", "--check"], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_every_type_version_rule_and_code_is_in_the_reference() -> None:
    text = events_doc.render()
    for name in [*EVENT_TYPES, *OUT_TYPES]:
        assert f"\n### {name}\n" in text, name
    for name, version in OLDER_VERSIONS:
        assert f"\n#### {name} version {version}\n" in text
    for rule in DECODER_ONLY_RULES:
        assert events_doc.markdown(rule) in text
    for code in [*REJECTION_CODES, *DEFINITION_CODES, *PROCESSING_CODES]:
        assert f"| `{code}` |" in text, code
    for heading in ("Envelope", "Versions", "Dead letters", "Outbound events"):
        assert f"- [{heading}](#{events_doc.slug(heading)})" in text  # the contents


def test_every_event_says_what_it_means() -> None:
    structs = [*EVENT_TYPES.values(), *(cls for cls, _ in OLDER_VERSIONS.values()),
               *OUT_TYPES.values()]
    for cls in structs:
        assert cls.__doc__ and cls.__doc__.strip(), f"{cls.__name__} needs a docstring"


def test_a_field_keeps_both_its_meaning_and_its_format() -> None:
    row = next(line for line in events_doc.render().splitlines()
               if line.startswith("| `occurred_at` | RFC 3339 timestamp with offset"))
    assert "when it happened at the source" in row and "| required |" in row
    envelope = json.loads((SCHEMA_DIR / "envelope.json").read_text())
    described = envelope["$defs"]["InboundEvent"]["properties"]["occurred_at"]["description"]
    assert "when it happened at the source" in described and "RFC 3339" in described


@pytest.mark.parametrize(("node", "words"), [
    ({"type": "integer", "minimum": 2, "maximum": 2}, "integer, always 2"),
    ({"type": "integer", "minimum": 0}, "integer ≥ 0"),
    ({"type": "string", "maxLength": 200}, "string of at most 200 characters"),
    ({"enum": ["hard", "soft"]}, 'one of `"hard"`, `"soft"`'),
    ({"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 64}},
     "list of (string of 1-64 characters)"),
    ({"type": "string", "pattern": "^[A-Z]{3}$"}, "ISO 4217 currency code"),
])
def test_types_in_words(node: dict[str, object], words: str) -> None:
    assert events_doc.type_words(node) == words


def test_markdown_does_not_take_placeholders_for_html() -> None:
    assert events_doc.markdown("ficha.in.<tenant> `ficha.in.<tenant>`") == (
        "ficha.in.&lt;tenant&gt; `ficha.in.<tenant>`")
