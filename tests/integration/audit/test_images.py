"""GET /v1/jobs/{id}/image: the bytes for the job's tenant only, typed, not sniffed, thumbnails, 304s."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from tests.integration.audit.seed import seed_job, store_sample

pytestmark = pytest.mark.postgres


@pytest.fixture
def jobs(sessions: sessionmaker[Session], tenant, settings, sample_bytes) -> dict[str, str]:
    with sessions() as session, session.begin():
        jpeg = store_sample(session, settings, sample_bytes("waterview.jpg"))
        png = store_sample(session, settings, sample_bytes("harm_example.png"))
        return {
            "jpeg": str(seed_job(session, tenant.id, image_sha256=jpeg)),
            "png": str(seed_job(session, tenant.id, image_sha256=png)),
            "text": str(seed_job(session, tenant.id)),
        }


def test_the_tenant_gets_its_image_with_its_type(client, tenant, jobs, sample_bytes) -> None:
    for role in ("submit", "review", "admin"):
        response = client.get(f"/v1/jobs/{jobs['jpeg']}/image", headers=tenant.auth(role))
        assert response.status_code == 200, role
        assert response.mimetype == "image/jpeg"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in response.headers["Content-Security-Policy"]
        assert response.data == sample_bytes("waterview.jpg")
    png = client.get(f"/v1/jobs/{jobs['png']}/image", headers=tenant.auth("review"))
    assert png.mimetype == "image/png" and png.data == sample_bytes("harm_example.png")
    listed = client.get("/v1/audit/flagged", headers=tenant.auth("review")).get_json()["data"]
    assert {r["image_url"] for r in listed} == {f"/v1/jobs/{jobs['jpeg']}/image", f"/v1/jobs/{jobs['png']}/image",
                                                None}


def test_thumbnails_and_revalidation(client, tenant, jobs) -> None:
    thumb = client.get(f"/v1/jobs/{jobs['jpeg']}/image?size=thumb", headers=tenant.auth("review"))
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    with Image.open(io.BytesIO(thumb.data)) as image:
        assert max(image.size) <= 320
    full = client.get(f"/v1/jobs/{jobs['jpeg']}/image", headers=tenant.auth("review"))
    again = client.get(f"/v1/jobs/{jobs['jpeg']}/image",
                       headers={**tenant.auth("review"), "If-None-Match": full.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    assert full.headers["Cache-Control"] == "private, no-cache"


def test_other_tenants_unknown_jobs_and_text_only_jobs(client, tenant, make_tenant, jobs) -> None:
    other = make_tenant()
    foreign = client.get(f"/v1/jobs/{jobs['jpeg']}/image", headers=other.auth("admin"))
    unknown = client.get("/v1/jobs/00000000-0000-4000-8000-000000000000/image", headers=other.auth("admin"))
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.get_json()["code"] == unknown.get_json()["code"] == "job_not_found"
    assert foreign.mimetype == "application/problem+json"
    text = client.get(f"/v1/jobs/{jobs['text']}/image", headers=tenant.auth("review"))
    assert text.status_code == 404 and text.get_json()["code"] == "job_has_no_image"
    assert client.get(f"/v1/jobs/{jobs['jpeg']}/image").status_code == 401
    assert client.get(f"/v1/jobs/{jobs['jpeg']}/image?size=huge", headers=tenant.auth("review")).status_code == 422
