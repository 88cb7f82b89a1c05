"""The API's readiness: ready while what every read needs answers, 503 with the reason
while it does not (a load balancer then sends the process no request)."""

from __future__ import annotations

from tests.api.conftest import Api


async def test_ready_only_while_the_read_models_answer(api: Api) -> None:
    ready = await api.http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    views = api.runtime.views
    assert views is not None
    with views.transaction() as cur:  # the positions every read reports are gone
        cur.execute("ALTER TABLE ficha_projection_tracking RENAME TO tracking_aside")
    try:
        gone = await api.http.get("/readyz")
        assert gone.status_code == 503, gone.text
        assert gone.json()["status"] == "not ready"
        assert "ficha_projection_tracking" in gone.json()["reason"]
    finally:
        with views.transaction() as cur:
            cur.execute("ALTER TABLE tracking_aside RENAME TO ficha_projection_tracking")
    assert (await api.http.get("/readyz")).status_code == 200
    assert (await api.http.get("/healthz")).status_code == 200  # alive all along
