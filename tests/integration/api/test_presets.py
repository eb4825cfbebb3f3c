"""Presets over the API: versions, resolution on jobs and batch items, precedence, roles, and the
administrative events their changes leave."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import create_engine

from eta.store.models import AdminEvent

pytestmark = pytest.mark.postgres


def _put(client, tenant, name, params, role="admin", **extra):
    return client.put(f"/v1/presets/{name}", headers=tenant.auth(role), json={"params": params, **extra})


def test_every_put_makes_a_new_version_and_old_versions_stay(client, tenant):
    first = _put(client, tenant, "nightly", {"tau_pre": 0.2}, description="calibrated on June data")
    assert first.status_code == 200, first.json
    assert (first.json["name"], first.json["version"], first.json["params"]) == ("nightly", 1, {"tau_pre": 0.2})
    second = _put(client, tenant, "nightly", {"tau_pre": 0.3, "policy": "either"})
    assert second.json["version"] == 2
    latest = client.get("/v1/presets/nightly", headers=tenant.auth("submit"))
    assert latest.status_code == 200 and latest.json["version"] == 2 and latest.json["params"]["tau_pre"] == 0.3
    old = client.get("/v1/presets/nightly?version=1", headers=tenant.auth("review"))
    assert old.json["params"] == {"tau_pre": 0.2} and old.json["description"] == "calibrated on June data"
    _put(client, tenant, "strict", {"policy": "either"})
    listed = client.get("/v1/presets", headers=tenant.auth())
    assert [(p["name"], p["version"]) for p in listed.json["data"]] == [("nightly", 2), ("strict", 1)]


def test_presets_are_per_tenant_and_admin_only(client, tenant, make_tenant):
    assert _put(client, tenant, "mine", {"tau_pre": 0.2}, role="submit").status_code == 403
    assert _put(client, tenant, "mine", {"tau_pre": 0.2}, role="review").status_code == 403
    assert _put(client, tenant, "mine", {"tau_pre": 0.2}).status_code == 200
    other = make_tenant()
    assert client.get("/v1/presets/mine", headers=other.auth()).status_code == 404
    assert client.get("/v1/presets", headers=other.auth()).json["data"] == []
    job = client.post("/v1/jobs", headers=other.auth(), json={"prompt": "hi", "preset": "mine"})
    assert job.status_code == 422 and job.json["errors"][0]["code"] == "preset_not_found"


@pytest.mark.parametrize(("name", "params", "code"), [
    ("nightly", {"tau_pre": "high"}, "params_invalid"),
    ("nightly", {"no_such_param": 1}, "params_invalid"),
    ("nightly", {"num_candidates": 10**6}, "param_out_of_range"),
    ("bad name", {"tau_pre": 0.2}, "preset_name_invalid"),
    ("-dash", {"tau_pre": 0.2}, "preset_name_invalid"),
    ("x" * 65, {"tau_pre": 0.2}, "preset_name_invalid"),
])
def test_bad_presets_are_refused_with_a_422(client, tenant, name, params, code):
    r = _put(client, tenant, name, params)
    assert r.status_code == 422 and r.json["code"] == code, r.json
    assert client.get("/v1/presets", headers=tenant.auth()).json["data"] == []


def test_a_job_built_on_a_preset_records_it_and_its_own_params_win(client, tenant):
    _put(client, tenant, "nightly", {"tau_pre": 0.2, "policy": "either", "num_candidates": 3})
    _put(client, tenant, "nightly", {"tau_pre": 0.25, "policy": "either", "num_candidates": 3})
    latest = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "hi", "preset": "nightly",
                                                                  "params": {"num_candidates": 2}})
    assert latest.status_code == 202, latest.json
    assert latest.json["preset"] == {"name": "nightly", "version": 2}
    params = latest.json["params"]
    assert (params["tau_pre"], params["policy"], params["num_candidates"]) == (0.25, "either", 2)
    assert params["tau_post"] == 0.06  # what no layer set: today's default, frozen
    pinned = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "hi", "preset": "nightly@1"})
    assert pinned.json["preset"] == {"name": "nightly", "version": 1} and pinned.json["params"]["tau_pre"] == 0.2
    read = client.get(f"/v1/jobs/{pinned.json['id']}", headers=tenant.auth())
    assert read.json["preset"] == {"name": "nightly", "version": 1}


def test_batch_items_name_presets_and_the_batch_preset_is_the_default(client, tenant):
    _put(client, tenant, "nightly", {"tau_pre": 0.2})
    _put(client, tenant, "strict", {"tau_pre": 0.1, "policy": "either"})
    r = client.post("/v1/batches", headers=tenant.auth(), json={
        "preset": "nightly", "params": {"tau_post": 0.5},
        "items": [{"custom_id": "a", "prompt": "p"},
                  {"custom_id": "b", "prompt": "p", "preset": "strict"},
                  {"custom_id": "c", "prompt": "p", "preset": "strict", "params": {"policy": "both"}}]})
    assert r.status_code == 202, r.json
    jobs = {j["custom_id"]: j for j in client.get(f"/v1/batches/{r.json['id']}/results",
                                                   headers=tenant.auth()).json["data"]}
    assert jobs["a"]["preset"] == {"name": "nightly", "version": 1} and jobs["a"]["params"]["tau_pre"] == 0.2
    assert jobs["b"]["preset"]["name"] == "strict" and jobs["b"]["params"]["policy"] == "either"
    assert jobs["c"]["params"]["policy"] == "both" and jobs["c"]["params"]["tau_pre"] == 0.1
    # Batch params sit above the preset, item params above both.
    assert {j["params"]["tau_post"] for j in jobs.values()} == {0.5}


def test_unknown_presets_name_the_item(client, tenant):
    _put(client, tenant, "nightly", {"tau_pre": 0.2})
    r = client.post("/v1/batches", headers=tenant.auth(), json={"items": [
        {"prompt": "ok", "preset": "nightly"}, {"prompt": "p", "preset": "nightly@7"},
        {"prompt": "p", "preset": "ghost"}, {"prompt": "p", "preset": "bad@x"}]})
    assert r.status_code == 422
    assert [(e["index"], e["field"], e["code"]) for e in r.json["errors"]] == [
        (1, "preset", "preset_not_found"), (2, "preset", "preset_not_found"), (3, "preset", "preset_not_found")]
    assert "no version 7" in r.json["errors"][0]["message"]


def test_preset_changes_are_administrative_events(client, tenant, postgres_url):
    _put(client, tenant, "nightly", {"tau_pre": 0.2})
    _put(client, tenant, "nightly", {"tau_pre": 0.3})
    events = client.get("/v1/admin/events?action=preset_put", headers=tenant.auth("admin"))
    assert events.status_code == 200, events.json
    assert [e["subject"] for e in events.json["data"]] == ["nightly@2", "nightly@1"]
    newest = events.json["data"][0]
    assert newest["details"]["params"] == {"tau_pre": 0.3} and newest["actor"].startswith("eta_")
    assert newest["actor_key_id"]
    assert client.get("/v1/admin/events", headers=tenant.auth("review")).status_code == 403
    # Append-only, whoever asks the database.
    engine = create_engine(postgres_url)
    try:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as c:
            c.execute(sa.update(AdminEvent).values(actor="someone else"))
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as c:
            c.execute(sa.delete(AdminEvent))
    finally:
        engine.dispose()


def test_admin_events_page_with_a_keyset_cursor_and_filter(client, tenant, make_tenant):
    for version in range(5):
        _put(client, tenant, "p", {"tau_pre": 0.1 + version / 100})
    seen, cursor = [], None
    while True:
        page = client.get("/v1/admin/events", headers=tenant.auth("admin"),
                          query_string={"limit": 2, **({"cursor": cursor} if cursor else {})}).json
        seen += [e["subject"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"p@{v}" for v in range(5, 0, -1)]
    assert client.get("/v1/admin/events?subject=p@3", headers=tenant.auth("admin")).json["data"][0][
        "details"]["version"] == 3
    assert client.get("/v1/admin/events?cursor=garbage", headers=tenant.auth("admin")).status_code == 422
    assert client.get("/v1/admin/events?action=nope", headers=tenant.auth("admin")).status_code == 422
    other = make_tenant()
    assert client.get("/v1/admin/events", headers=other.auth("admin")).json["data"] == []


def test_secret_rotation_and_verdicts_are_events(client, tenant):
    r = client.post("/v1/tenant/callback-secret/rotate", headers=tenant.auth("admin"), json={"overlap_hours": 1})
    assert r.status_code == 200
    events = client.get("/v1/admin/events", headers=tenant.auth("admin")).json["data"]
    assert [(e["action"], e["details"]) for e in events] == [("callback_secret_rotated", {"overlap_hours": 1.0})]
    assert r.json["secret"] not in str(events)
