"""The review page through Flask's test client: sign-in, cookie flags, CSRF, revocation, tenants, verdicts."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.orm import Session, sessionmaker

from eta.store import repository as repo
from eta.store.models import ApiKey
from tests.integration.audit.seed import Scores, seed_job, store_sample

pytestmark = pytest.mark.postgres

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: str) -> str:
    match = CSRF.search(page)
    assert match, "no CSRF field on the page"
    return match.group(1)


def sign_in(client, key: str, next_url: str = ""):
    token = csrf_of(client.get("/review/login").get_data(as_text=True))
    return client.post("/review/login", data={"csrf_token": token, "api_key": key, "next": next_url})


@pytest.fixture
def job(sessions: sessionmaker[Session], tenant, settings, sample_bytes) -> str:
    with sessions() as session, session.begin():
        digest = store_sample(session, settings, sample_bytes("waterview.jpg"))
        return str(seed_job(session, tenant.id, image_sha256=digest, custom_id="case-1",
                            prompt="How do I <script>alert(1)</script> this?",
                            scores=Scores(s_pre=0.21, s_post=0.01, s_post_final=0.4)))


def test_sign_in_sets_a_safe_cookie_holding_no_key(client, tenant) -> None:
    assert client.get("/review/").status_code == 302  # to the sign-in form
    response = sign_in(client, tenant.keys["review"])
    assert response.status_code == 302 and response.headers["Location"] == "/review/"
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("eta_review="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/review" in cookie
    assert tenant.keys["review"] not in cookie and tenant.keys["review"].split("_", 2)[2] not in cookie
    page = client.get("/review/")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none': no script at all
    assert page.headers["X-Frame-Options"] == "DENY"


def test_submit_keys_and_bad_keys_are_refused(client, tenant) -> None:
    submit = sign_in(client, tenant.keys["submit"])
    assert submit.status_code == 403 and "cannot review" in submit.get_data(as_text=True)
    bad = sign_in(client, "eta_00000000_nope")
    assert bad.status_code == 401
    assert client.get("/review/").status_code == 302
    assert sign_in(client, tenant.keys["admin"]).status_code == 302


def test_posts_without_the_sessions_csrf_token_are_refused(client, tenant, job) -> None:
    refused = client.post("/review/login", data={"api_key": tenant.keys["review"]})
    assert refused.status_code == 400
    sign_in(client, tenant.keys["review"])
    forged = client.post(f"/review/jobs/{job}/verdict", data={"verdict": "false_positive", "csrf_token": "x" * 43})
    assert forged.status_code == 400
    assert client.get(f"/v1/jobs/{job}/reviews", headers=tenant.auth("review")).get_json()["data"] == []


def test_revoking_the_key_ends_the_session(client, tenant, sessions: sessionmaker[Session]) -> None:
    sign_in(client, tenant.keys["review"])
    assert client.get("/review/").status_code == 200
    with sessions() as session, session.begin():
        key = session.query(ApiKey).filter_by(key_hash=repo.hash_api_key(tenant.keys["review"])).one()
        assert repo.revoke_api_key_by_id(session=session, key_id=key.id) is not None
    assert client.get("/review/").status_code == 302


def test_list_detail_and_verdict(client, tenant, job) -> None:
    sign_in(client, tenant.keys["review"])
    listing = client.get("/review/", query_string={"custom_id": "case-1", "reviewed": "false"})
    html = listing.get_data(as_text=True)
    assert f'data-job-id="{job}"' in html
    assert "&lt;script&gt;" in html and "<script>" not in html  # prompts are escaped
    assert f"/review/jobs/{job}/image?size=thumb" in html
    assert client.get("/review/", query_string={"custom_id": "other"}).get_data(as_text=True).count("data-job-id") == 0
    bad_filter = client.get("/review/", query_string={"s_pre_min": "abc"})
    assert bad_filter.status_code == 200 and "s_pre_min" in bad_filter.get_data(as_text=True)

    detail = client.get(f"/review/jobs/{job}").get_data(as_text=True)
    assert "Here is exactly how to do that" in detail  # the vanilla answer, for reviewers
    assert "As an AI assistant" in detail and "Alignment trace" in detail
    token = csrf_of(detail)
    done = client.post(f"/review/jobs/{job}/verdict",
                       data={"csrf_token": token, "verdict": "confirmed_unsafe", "note": "weapon instructions"})
    assert done.status_code == 302
    after = client.get(done.headers["Location"]).get_data(as_text=True)
    assert "Recorded: Confirmed unsafe." in after and "weapon instructions" in after
    history = client.get(f"/v1/jobs/{job}/reviews", headers=tenant.auth("review")).get_json()["data"]
    assert [(h["verdict"], h["note"]) for h in history] == [("confirmed_unsafe", "weapon instructions")]

    thumb = client.get(f"/review/jobs/{job}/image?size=thumb")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert thumb.headers["X-Content-Type-Options"] == "nosniff"


def test_another_tenants_job_and_image_are_not_found(client, make_tenant, job) -> None:
    other = make_tenant()
    sign_in(client, other.keys["review"])
    assert client.get(f"/review/jobs/{job}").status_code == 404
    assert client.get(f"/review/jobs/{job}/image").status_code == 404
    token = csrf_of(client.get("/review/").get_data(as_text=True))
    assert client.post(f"/review/jobs/{job}/verdict",
                       data={"csrf_token": token, "verdict": "false_positive"}).status_code == 404


def test_images_need_a_session_and_redirects_stay_on_the_page(client, tenant, job) -> None:
    assert client.get(f"/review/jobs/{job}/image").status_code == 401
    assert sign_in(client, tenant.keys["review"], next_url="https://evil.example/").headers["Location"] == "/review/"
    client.post("/review/logout", data={"csrf_token": csrf_of(client.get("/review/").get_data(as_text=True))})
    assert sign_in(client, tenant.keys["review"], next_url="//evil.example/x").headers["Location"] == "/review/"
    client.post("/review/logout", data={"csrf_token": csrf_of(client.get("/review/").get_data(as_text=True))})
    assert sign_in(client, tenant.keys["review"],
                   next_url=f"/review/jobs/{job}").headers["Location"] == f"/review/jobs/{job}"
