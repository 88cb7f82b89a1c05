"""Several projections replayed or rebuilt side by side, each in a process of its own:
every one applies the whole log once, and a failure is told in a line, not lost."""

from __future__ import annotations

from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from projections.db import ViewDatabase
from projections.registry import all_projections
from projections.runner import ProjectionRunner
from services.projection_jobs import run_side_by_side
from services.store.contact_store import ContactStore
from tests.backends import make_settings
from tests.projections.test_contacts_projection import demo_events, ingest
from tests.projections.test_tenant_replay import dump


def test_projections_rebuilt_side_by_side_are_as_built_one_by_one(
        tmp_path: Path, postgres_dsn: str, pg_schema: str) -> None:
    settings = make_settings(tmp_path, postgres_dsn=postgres_dsn, schema=pg_schema)
    store = ContactStore(settings)
    db = ViewDatabase(settings)
    ingest(store, settings, demo_events(1500))
    for projection in all_projections():
        runner = ProjectionRunner(store, db, projection)
        runner.setup()
        runner.catch_up()
    before = {p.name: dump(db, p) for p in all_projections()}
    head = store.max_notification_id()
    names = [p.name for p in all_projections()]
    heard: dict[str, list[int]] = {name: [] for name in names}
    ends = run_side_by_side("rebuild", settings.to_env(), names, None,
                            lambda name, position: heard[name].append(position))
    assert [(end.name, end.ok) for end in ends] == [(name, True) for name in names], ends
    assert all(f"to position {head}" in end.said for end in ends)
    assert {p.name: dump(db, p) for p in all_projections()} == before
    assert all(positions == sorted(positions) for positions in heard.values())
    db.close()
    store.close()


def test_a_job_that_cannot_start_says_why_and_the_others_end_too(
        tmp_path: Path, postgres_dsn: str) -> None:
    parts = conninfo_to_dict(postgres_dsn)
    nowhere = (f"postgresql://{parts.get('user') or 'postgres'}@{parts.get('host')}:"
               f"{parts.get('port') or 5432}/ficha_no_such_database")
    settings = make_settings(tmp_path, postgres_dsn=nowhere, schema="ficha")
    names = [p.name for p in all_projections()]
    ends = run_side_by_side("replay", settings.to_env(), names, None, lambda *_: None)
    assert [end.name for end in ends] == names
    for end in ends:
        assert not end.ok
        assert end.said.startswith(f"{end.name}: cannot start: ")
        assert "ficha_no_such_database" in end.said and "Traceback" not in end.said
