"""docs/events.md, the in-repository reference of the events ficha reads and publishes.

    python -m contracts.events_doc          # rewrite docs/events.md
    python -m contracts.events_doc --check  # exit 1 if the committed file is stale

Everything in it comes from the code: the Structs' docstrings and field descriptions
(``contracts/events.py``, ``contracts/outbound.py``), their JSON Schemas as
``contracts.schema_gen`` builds them, the decoder's rules and codes, the tenant's and the
ingest worker's dead-letter codes, and the versions of each type.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from contracts.decode import DECODER_ONLY_RULES, MAX_BODY_BYTES, REJECTION_CODES
from contracts.events import (
    EVENT_TYPES,
    LATEST_VERSIONS,
    OLDER_VERSIONS,
    TENANT_REGEX,
    InboundEvent,
)
from contracts.outbound import OUT_TYPES, out_subject
from contracts.publisher import subject_for
from contracts.schema_gen import format_words, struct_schema
from services.domain.tenant import DEFINITION_CODES
from services.ingest.deadletter import PROCESSING_CODES, dlq_subject

DOC_PATH = Path(__file__).parent.parent / "docs" / "events.md"
COMMAND = "python -m contracts.events_doc"
SCHEMAS = "../contracts/schemas"


def slug(title: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def paragraphs(text: str) -> list[str]:
    """A docstring's paragraphs, each on one line, ``code`` as Markdown's `code`."""
    return [" ".join(block.split()).replace("``", "`")
            for block in text.split("\n\n") if block.strip()]


def markdown(text: str) -> str:
    """Text as Markdown shows it: ``<tenant>`` outside `code` is escaped, not taken for an
    HTML tag."""
    parts = text.split("`")
    parts[::2] = [part.replace("<", "&lt;").replace(">", "&gt;") for part in parts[::2]]
    return "`".join(parts)


def cell(text: str) -> str:
    return markdown(text).replace("|", "\\|")


class Document:
    """Markdown lines with headings recorded for the table of contents."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.headings: list[tuple[int, str]] = []

    def heading(self, level: int, title: str) -> None:
        if slug(title) in {slug(t) for _, t in self.headings}:
            raise ValueError(f"two headings would share the anchor #{slug(title)}")
        self.headings.append((level, title))
        self.add(f"{'#' * level} {title}", "")

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def text(self, *blocks: str) -> None:
        for block in blocks:
            self.add(markdown(block), "")

    def bullets(self, items: Iterable[str]) -> None:
        self.add(*(f"- {markdown(item)}" for item in items), "")

    def table(self, header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> None:
        self.add(f"| {' | '.join(header)} |", f"|{'---|' * len(header)}")
        self.add(*(f"| {' | '.join(cell(c) for c in row)} |" for row in rows), "")

    def toc(self) -> list[str]:
        return [f"{'  ' * (level - 2)}- [{title.replace('`', '')}](#{slug(title)})"
                for level, title in self.headings if level <= 3]


# --------------------------------------------------------------------- a field's type


def type_words(node: dict[str, Any]) -> str:
    """A schema node's type, in words: what a producer must send."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return f"object: [{name}](#{slug(name)})"
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        values = [f"`{json.dumps(v)}`" for v in node["enum"]]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if "anyOf" in node:
        return " or ".join(type_words(branch) for branch in node["anyOf"])
    words = format_words(node)
    if words is not None:
        return words
    kind = node.get("type")
    if kind == "string":
        return _string_words(node)
    if kind in ("integer", "number"):
        return _number_words(kind, node)
    if kind == "array":
        return f"list of ({type_words(node['items'])})"
    if kind == "object":
        keys = _string_words({"type": "string", **node.get("propertyNames", {})})
        return f"object: keys {keys}; values {type_words(node['additionalProperties'])}"
    return str(kind)


def _string_words(node: dict[str, Any]) -> str:
    low, high = node.get("minLength"), node.get("maxLength")
    if low is not None and high is not None:
        words = f"string of {low}-{high} characters"
    elif high is not None:
        words = f"string of at most {high} characters"
    elif low is not None:
        words = f"string of at least {low} characters"
    else:
        words = "string"
    if "pattern" in node:
        words += f" matching `{node['pattern']}`"
    if node.get("format") == "date-time":
        words = "RFC 3339 timestamp"
    return words


def _number_words(kind: str, node: dict[str, Any]) -> str:
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and low == high:
        return f"integer, always {low}" if kind == "integer" else f"{kind}, always {low}"
    bounds = [f"≥ {low}" if low is not None else "", f"≤ {high}" if high is not None else ""]
    return " ".join([kind, *filter(None, bounds)])


def presence(name: str, node: dict[str, Any], required: list[str]) -> str:
    if name in required:
        return "required"
    if "default" in node:
        return f"optional, default `{json.dumps(node['default'])}`"
    return "optional"


def meaning(node: dict[str, Any]) -> str:
    """What a field means: its description, unless that only names its format."""
    description = node.get("description", "")
    return "" if description == format_words(node) else " ".join(description.split())


def _refs(node: Any) -> list[str]:
    """The Structs a schema node refers to, in the order they appear."""
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    if not isinstance(node, dict):
        return []
    own = [node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else []
    return own + [ref for value in node.values() for ref in _refs(value)]


# --------------------------------------------------------------------- Struct tables


class Reference:
    """The document, and which Structs it has described so far (each is described once,
    where it first appears, and linked to from then on)."""

    def __init__(self) -> None:
        self.doc = Document()
        self.described: set[str] = set()

    def struct(self, schema: dict[str, Any], level: int, *,
               leave_out: dict[str, Any] | None = None, lead: str = "") -> None:
        """A Struct's docstring and table of fields, then the Structs its fields use.
        ``leave_out``: fields shown elsewhere (the envelope), unless this Struct's differ."""
        name = schema["$ref"].rsplit("/", 1)[-1]
        defs = schema.get("$defs", {})
        body = defs[name]
        self.described.add(name)
        self.doc.text(*paragraphs(body.get("description", "")))
        required = body.get("required", [])
        shown = {field: node for field, node in body.get("properties", {}).items()
                 if leave_out is None or leave_out.get(field) != (node, field in required)}
        if not shown:
            self.doc.text(f"{lead}no fields." if lead else "No fields.")
            return
        if lead:
            self.doc.text(lead + "fields:")
        self.doc.table(("field", "type", "presence", "meaning"), (
            (f"`{field}`", type_words(node), presence(field, node, required), meaning(node))
            for field, node in shown.items()))
        for ref in dict.fromkeys(_refs(list(shown.values()))):
            if ref not in self.described:
                self.doc.heading(level + 1, ref)
                self.struct({"$ref": f"#/$defs/{ref}", "$defs": defs}, level + 1)


def envelope_fields() -> dict[str, Any]:
    """Each envelope field's schema node and whether it is required, as the envelope has
    them: a type's table leaves these out unless it changes them."""
    schema = struct_schema(InboundEvent)
    body = schema["$defs"]["InboundEvent"]
    return {field: (node, field in body.get("required", []))
            for field, node in body["properties"].items()}


def schema_files(name: str) -> list[tuple[int, str]]:
    """(version, schema file) of every version of an inbound type, newest first."""
    latest = LATEST_VERSIONS.get(name, 1)
    return [(version, f"{name}.json" if version == 1 else f"{name}.v{version}.json")
            for version in range(latest, 0, -1)]


def summary(cls: type) -> str:
    return paragraphs(cls.__doc__ or "")[0] if cls.__doc__ else ""


# --------------------------------------------------------------------- sections


def intro(doc: Document) -> None:
    doc.text(
        "# Events: what ficha reads and what it publishes",
        f"*Generated by `{COMMAND}` from the code; do not edit by hand (a test fails when "
        "this file is stale).*",
        "This is the reference, kept in this repository, of contract v1: the wire contract "
        "agreed between ficha and the platform's services in `../shared/contract-v1.md`, a "
        "document that lives beside the repository, not in it. Everything below is "
        "generated from the msgspec Structs that ficha decodes events with "
        "([`contracts/events.py`](../contracts/events.py), "
        "[`contracts/outbound.py`](../contracts/outbound.py)) and from the decoder "
        "([`contracts/decode.py`](../contracts/decode.py)), so it says what ficha "
        f"actually accepts. The same Structs give the JSON Schemas in [`contracts/schemas/`]"
        f"({SCHEMAS}/).",
    )


def publishing(ref: Reference) -> None:
    doc = ref.doc
    doc.heading(2, "Publishing an event")
    doc.bullets([
        f"Subject: `{subject_for('<tenant>', '<type>')}`, e.g. "
        f"`{subject_for('acme', 'form_submitted')}`. `<tenant>` matches `{TENANT_REGEX}`; "
        "`<type>` is one of the [inbound event types](#inbound-event-types).",
        "Header: `Nats-Msg-Id` set to the event's `event_id`, so that JetStream stores a "
        "retried publish once. A retry reuses the same `event_id`; ficha applies each "
        "`(tenant, event_id)` once, for ever.",
        f"Body: one UTF-8 JSON object of at most {MAX_BODY_BYTES} bytes "
        f"({MAX_BODY_BYTES // 1024} KiB): the [envelope](#envelope) fields and the type's "
        "own fields.",
        "An optional field is left out when there is nothing to say: `null` is refused, and "
        "an absent field leaves the contact's value as it is. Fields ficha does not know "
        "are ignored, so a producer may send more than is listed here.",
        "Wait for JetStream's acknowledgement (PubAck) and publish again with the same "
        "`event_id` when it does not come; the [README](../README.md#publishing-from-"
        "another-language) walks through it, with examples in several languages.",
        "An event ficha cannot accept is not lost: it goes to the "
        "[dead letters](#dead-letters) with a code saying why.",
    ])
    doc.heading(3, "Rules only the decoder checks")
    doc.text("Besides what the tables and the JSON Schemas say, ficha's decoder checks "
             "these (an event that breaks one is dead-lettered as `invalid_field`, or as "
             "`too_large`, `type_mismatch` or `tenant_mismatch`):")
    doc.bullets(f"{rule}." for rule in DECODER_ONLY_RULES)


def envelope(ref: Reference) -> None:
    ref.doc.heading(2, "Envelope")
    ref.struct(struct_schema(InboundEvent), 2, lead="Every event has these ")


def inbound(ref: Reference, fields_of_envelope: dict[str, Any]) -> None:
    doc = ref.doc
    doc.heading(2, "Inbound event types")
    doc.text("In the order below; each is published to its own subject.")
    doc.table(("type", "what it means"), (
        (f"[`{name}`](#{slug(name)})", summary(cls)) for name, cls in EVENT_TYPES.items()))
    for name, cls in EVENT_TYPES.items():
        doc.heading(3, name)
        files = ", ".join(f"[`{file}`]({SCHEMAS}/{file})" + (f" (version {version})"
                                                             if len(schema_files(name)) > 1
                                                             else "")
                          for version, file in schema_files(name))
        doc.text(f"Subject `{subject_for('<tenant>', name)}`. JSON Schema: {files}.")
        ref.struct(struct_schema(cls), 3, leave_out=fields_of_envelope,
                   lead="Besides the [envelope](#envelope), ")
        for (older_name, version), (older, _) in sorted(OLDER_VERSIONS.items()):
            if older_name == name:
                doc.heading(4, f"{name} version {version}")
                ref.struct(struct_schema(older), 4, leave_out=fields_of_envelope,
                           lead="Besides the [envelope](#envelope), ")


def versions(doc: Document) -> None:
    doc.heading(2, "Versions")
    doc.text(
        "Each event type has its own version, in `schema_version`; an event without it is "
        "version 1. Every version listed here is accepted, and an older one is read as the "
        "newest, so it has the same effects. A version newer than this ficha knows is "
        "dead-lettered as `unsupported_schema_version`, to be re-driven after an upgrade. "
        "The policy, and how the first new version was made: "
        "[contract-evolution.md](contract-evolution.md).",
    )
    doc.table(("type", "versions accepted", "newest", "JSON Schemas"), (
        (f"[`{name}`](#{slug(name)})", ", ".join(str(v) for v, _ in reversed(files)),
         str(files[0][0]), ", ".join(f"[`{file}`]({SCHEMAS}/{file})" for _, file in files))
        for name in sorted(LATEST_VERSIONS) for files in [schema_files(name)]))
    doc.text("Every other type has version 1 only.")


def dead_letters(doc: Document) -> None:
    doc.heading(2, "Dead letters")
    doc.text(
        "An event ficha cannot accept is stored, unchanged, on "
        f"`{dlq_subject('<tenant>', '<type>')}` (the tokens of the subject it was published "
        "to, `_` where it had none), with the headers `Ficha-Error` (one of the codes below), "
        "`Ficha-Error-Detail` (a sentence saying what to fix), `Ficha-Original-Subject` and "
        "`Ficha-Original-Sequence`. A tenant's dead letters are also listed by "
        "`GET /v1/tenants/<tenant>/dead-letters` ([api.md](api.md)) and `ficha dlq list`, "
        "and can be re-driven once fixed. The codes are stable: match on them.",
    )
    for title, codes in (
        ("Refused by the decoder", REJECTION_CODES),
        ("Refused by the tenant's own definitions ([audience.md](audience.md))",
         DEFINITION_CODES),
        ("Set aside while being applied", PROCESSING_CODES),
    ):
        doc.text(f"{title}:")
        doc.table(("code", "meaning"), ((f"`{code}`", text) for code, text in codes.items()))


def outbound(ref: Reference) -> None:
    doc = ref.doc
    doc.heading(2, "Outbound events")
    doc.text(
        "What ficha publishes for automation services, on "
        f"`{out_subject('<tenant>', '<type>')}` (stream `FICHA_OUT`), with the header "
        "`Nats-Msg-Id` equal to the body's `event_id`. Consumers de-duplicate on that id; "
        "ordering, rebuilds and the other guarantees are in [outbound.md](outbound.md).",
    )
    for name, cls in OUT_TYPES.items():
        doc.heading(3, name)
        doc.text(f"Subject `{out_subject('<tenant>', name)}`. JSON Schema: "
                 f"[`out.{name}.json`]({SCHEMAS}/out.{name}.json).")
        ref.struct(struct_schema(cls), 3)


def render() -> str:
    ref = Reference()
    publishing(ref)
    envelope(ref)
    inbound(ref, envelope_fields())
    versions(ref.doc)
    dead_letters(ref.doc)
    outbound(ref)
    head = Document()
    intro(head)
    head.add("Contents:", "", *ref.doc.toc(), "")
    text = "\n".join(head.lines + ref.doc.lines)
    return text.rstrip("\n") + "\n"


def is_stale(path: Path = DOC_PATH) -> bool:
    return not path.exists() or path.read_text() != render()


def main(argv: list[str], path: Path = DOC_PATH) -> int:
    if "--check" in argv:
        if is_stale(path):
            print(f"{path} is stale; run {COMMAND}")
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
