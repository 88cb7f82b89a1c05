"""JSON Schemas for every contract-v1 event type, generated from the Structs.

    python -m contracts.schema_gen          # rewrite contracts/schemas/*.json
    python -m contracts.schema_gen --check  # exit 1 if the committed files are stale

The schemas carry what JSON Schema can express (types, patterns, lengths, ranges, required
fields, the subject-derived `type`); the rules checked only by the decoder
(``contracts.decode.DECODER_ONLY_RULES``) are named in each schema's description. A field's
description says what it means and, when its value has a named format (an alias listed in
``contracts.events.FORMATS`` or ``contracts.outbound.OUT_FORMATS``), how it is written.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from contracts.decode import DECODER_ONLY_RULES
from contracts.events import EVENT_TYPES, FORMATS, LATEST_VERSIONS, OLDER_VERSIONS, InboundEvent
from contracts.outbound import OUT_FORMATS, OUT_TYPES

SCHEMA_DIR = Path(__file__).parent / "schemas"
BASE_ID = "https://ficha.dev/contracts/v1/"
DECODER_RULES = "Also enforced by ficha's decoder: " + "; ".join(DECODER_ONLY_RULES) + "."


def without_null(node: Any) -> Any:
    """Optional fields are "absent", never null, in contract v1: drop the null branch."""
    if isinstance(node, list):
        return [without_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: without_null(v) for k, v in node.items()}
    branches = out.get("anyOf")
    if isinstance(branches, list) and {"type": "null"} in branches:
        kept = [b for b in branches if b != {"type": "null"}]
        del out["anyOf"]
        if len(kept) == 1:
            out.update(kept[0])
        else:
            out["anyOf"] = kept
        if out.get("default", 0) is None:
            del out["default"]
    return out


def struct_schema(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """msgspec's schema of a Struct, without null branches, docstrings as plain text."""
    return _clean_descriptions(without_null(msgspec.json.schema(cls)))


def _clean_descriptions(node: Any) -> Any:
    if isinstance(node, list):
        return [_clean_descriptions(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _clean_descriptions(v) for k, v in node.items()}
    if isinstance(out.get("description"), str):
        out["description"] = inspect.cleandoc(out["description"])
    return out


_NOT_SHAPE = ("description", "title", "default", "examples")


def _shape(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in _NOT_SHAPE}


_FORMAT_WORDS = [(_shape(schema), schema["description"])
                 for schema in map(msgspec.json.schema, FORMATS + OUT_FORMATS)]


def format_words(node: dict[str, Any]) -> str | None:
    """How a value of this schema node is written, when it is one of the named formats."""
    shape = _shape(node)
    return next((words for known, words in _FORMAT_WORDS if known == shape), None)


def with_format_words(node: Any) -> Any:
    """A field described by its meaning also names its value's format, in parentheses."""
    if isinstance(node, list):
        return [with_format_words(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: with_format_words(v) for k, v in node.items()}
    meaning, words = out.get("description"), format_words(out)
    if isinstance(meaning, str) and words is not None and meaning != words:
        out["description"] = f"{meaning} ({words})"
    return out


def schema_for(name: str, cls: type[InboundEvent], version: int = 1) -> dict[str, Any]:
    schema = with_format_words(struct_schema(cls))
    ref = schema.get("$ref", "")
    defs = schema.get("$defs", {})
    body = defs.get(ref.rsplit("/", 1)[-1], {})
    body.setdefault("properties", {})["type"] = {"const": name, "type": "string"}
    file = f"{name}.json"
    if version > 1:
        body["properties"]["schema_version"] = {"const": version, "type": "integer"}
        body.setdefault("required", []).append("schema_version")
        body["required"].sort()
        file = f"{name}.v{version}.json"
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{BASE_ID}{file}",
        "title": f"ficha contract v1: {name}" + (f", schema_version {version}"
                                                 if version > 1 else ""),
        "description": f"Publish to ficha.in.<tenant>.{name} with header Nats-Msg-Id = "
        f"event_id. {DECODER_RULES}",
        **{k: v for k, v in schema.items() if k not in ("$ref",)},
        "$ref": ref,
    }


def render_all() -> dict[str, str]:
    files = {}
    for name, cls in sorted(EVENT_TYPES.items()):
        latest = LATEST_VERSIONS.get(name, 1)
        # Version 1 of every type keeps its file; newer versions get name.vN.json.
        v1 = cls if latest == 1 else OLDER_VERSIONS[(name, 1)][0]
        files[f"{name}.json"] = json.dumps(schema_for(name, v1), indent=2, sort_keys=True) + "\n"
        if latest > 1:
            files[f"{name}.v{latest}.json"] = json.dumps(
                schema_for(name, cls, latest), indent=2, sort_keys=True) + "\n"
    envelope = with_format_words(struct_schema(InboundEvent))
    envelope.update(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{BASE_ID}envelope.json",
            "title": "ficha contract v1: envelope common to every event",
            "description": DECODER_RULES,
        }
    )
    files["envelope.json"] = json.dumps(envelope, indent=2, sort_keys=True) + "\n"
    for name, out_cls in sorted(OUT_TYPES.items()):
        schema = with_format_words(struct_schema(out_cls))
        schema.update({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{BASE_ID}out/{name}.json",
            "title": f"ficha outbound v1: {name}",
            "description": f"Published by ficha on ficha.out.<tenant>.{name}, with header "
            "Nats-Msg-Id = event_id. See docs/outbound.md.",
        })
        files[f"out.{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    # The segment rule language lives in the domain; its schema is published here too.
    from services.domain.rules import rule_json_schema

    files["segment-rule.json"] = json.dumps(rule_json_schema(), indent=2, sort_keys=True) + "\n"
    return files


def stale_files() -> list[str]:
    expected = render_all()
    stale = []
    for name, text in expected.items():
        path = SCHEMA_DIR / name
        if not path.exists() or path.read_text() != text:
            stale.append(name)
    extra = {p.name for p in SCHEMA_DIR.glob("*.json")} - set(expected)
    return stale + sorted(extra)


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_files()
        if stale:
            print(f"stale schemas: {', '.join(stale)}; run python -m contracts.schema_gen")
            return 1
        print("schemas are up to date")
        return 0
    SCHEMA_DIR.mkdir(exist_ok=True)
    for old in SCHEMA_DIR.glob("*.json"):
        old.unlink()
    for name, text in render_all().items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(render_all())} schemas to {SCHEMA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
