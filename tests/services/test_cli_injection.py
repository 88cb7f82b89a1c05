"""SQL injection through the CLI's filters, search, segment ids and rules: every attempt
answers within its own tenant (or refuses in a sentence) and leaves the data intact."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from projections.queries import ContactFilter, count_contacts
from services.cli import app
from services.config import Settings
from services.demo import generate_history
from tests.factories import decode_dict
from tests.projections.test_export import ReadModels, read_models

ATTEMPTS = ["'; DROP TABLE contacts; --", "' OR '1'='1", "acme' OR tenant <> 'acme",
            "%' OR 1=1 --", "\") OR 1=1 --", "globex", "%", "_"]


@pytest.fixture
def two_tenants(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReadModels]:
    with read_models(settings) as models:
        start = datetime.now(UTC) - timedelta(days=100)
        for n, tenant in enumerate(("acme", "globex")):
            models.ingest([decode_dict(d) for d in generate_history(
                tenant, 300, seed=20 + n, start=start, days=100)])
        for name, value in settings.to_env().items():
            monkeypatch.setenv(name, value)
        yield models


def ficha(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def globex_emails(models: ReadModels) -> set[str]:
    with models.db.reading() as cur:
        cur.execute("SELECT email FROM contacts WHERE tenant = 'globex'")
        return {r["email"] for r in cur.fetchall()}


def test_injection_through_the_cli_stays_in_its_tenant(two_tenants: ReadModels,
                                                       tmp_path: Path) -> None:
    models = two_tenants
    before = {t: count_contacts(models.db, ContactFilter(tenant=t)) for t in ("acme", "globex")}
    strangers = globex_emails(models)
    assert before["acme"] > 0 and strangers
    ran = 0
    for text in ATTEMPTS:
        for option in ("--tag", "--language", "--country", "--email-prefix"):
            result = ficha("contacts", "list", "--tenant", "acme", option, text, "--json")
            # 0: answered within acme; 2: refused as asked wrong (1 would be a failure,
            # such as a database error the text provoked).
            assert result.exit_code in (0, 2), (option, text, result.output)
            assert "Traceback" not in result.output and "Usage:" not in result.output
            assert not strangers & set(result.output.split('"')), (option, text)
            ran += 1
        for command in (["segments", "members", "--tenant", "acme", text],
                        ["segments", "why", "--tenant", "acme", "--email", text],
                        ["contacts", "get", "--tenant", "acme", "--email", text]):
            result = ficha(*command)
            assert result.exit_code in (0, 2), (command, result.output)
            assert "Traceback" not in result.output and "Usage:" not in result.output
            ran += 1
        rule = tmp_path / "rule.json"
        rule.write_text(json.dumps({"any": [
            {"field": "first_name", "op": "equals", "value": text},
            {"field": "tags", "op": "has", "value": text},
            {"field": "property.x", "op": "starts_with", "value": text}]}))
        result = ficha("segments", "preview", "--tenant", "acme", "probe", str(rule), "--json")
        assert result.exit_code == 0, result.output
        assert not strangers & set(result.output.split('"'))
        ran += 1
    after = {t: count_contacts(models.db, ContactFilter(tenant=t)) for t in ("acme", "globex")}
    assert after == before
    print(f"\n{ran} injection attempts through the CLI")
    assert ran == len(ATTEMPTS) * 8
