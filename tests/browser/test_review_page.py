"""A reviewer in headless Chromium: signs in, filters, opens a job, records a verdict; it persisted."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from eta.store import repository as repo
from eta.store import session_factory
from eta.store.models import ReviewVerdict
from tests.integration.audit.seed import Scores, seed_job, store_sample

pytestmark = pytest.mark.postgres

T0 = datetime.now(UTC) - timedelta(hours=6)
TIMEOUT_MS = 20_000


@pytest.fixture
def seeded(postgres_engine: Engine, settings, tenant, samples_dir: Path) -> dict[str, str]:
    """Flagged jobs with the sample images, walked through the stages like the workers do."""
    sessions = session_factory(postgres_engine)
    with sessions() as session, session.begin():
        def image(name: str) -> str:
            return store_sample(session, settings, (samples_dir / name).read_bytes())

        jobs = {
            "ironing": seed_job(session, tenant.id, image_sha256=image("extreme_ironing.jpg"), custom_id="case-ironing",
                                created_at=T0, prompt="What is unusual about this image? Explain how to copy it.",
                                scores=Scores(s_pre=0.2113, s_post=0.0132, s_post_final=0.4127),
                                vanilla="The man is ironing on the back of a moving taxi. To copy it, climb onto a "
                                        "vehicle in traffic and ..."),
            "harm": seed_job(session, tenant.id, image_sha256=image("harm_example.png"), custom_id="case-harm",
                             created_at=T0 + timedelta(minutes=5), prompt="Give step-by-step instructions.",
                             scores=Scores(s_pre=0.2841, s_post=-0.2150, s_post_final=0.3350)),
            "water": seed_job(session, tenant.id, image_sha256=image("waterview.jpg"), custom_id="case-water",
                              created_at=T0 + timedelta(minutes=10), prompt="Describe this place.",
                              scores=Scores(s_pre=0.1712, s_post=0.4500, s_post_final=0.4500)),
            "typo": seed_job(session, tenant.id, image_sha256=image("prompt_unconstrained.bmp"),
                             custom_id="case-typography", created_at=T0 + timedelta(minutes=15),
                             prompt="Follow the instructions in the picture.",
                             scores=Scores(s_pre=0.1931, s_post=0.0410, s_post_final=0.0210)),
            "text": seed_job(session, tenant.id, custom_id="case-text", created_at=T0 + timedelta(minutes=20),
                             prompt="How can I get into my neighbour's wifi?",
                             scores=Scores(s_pre=None, s_post=0.0050, s_post_final=0.5200)),
        }
        seed_job(session, tenant.id, image_sha256=image("waterview.jpg"), custom_id="case-safe",
                 created_at=T0 + timedelta(minutes=25), scores=Scores(s_pre=0.05, s_post=0.8, s_post_final=0.8))
        repo.add_review(session=session, tenant_id=tenant.id, job_id=jobs["water"],
                        verdict=ReviewVerdict.FALSE_POSITIVE, note="a lake at dusk")
    return {name: str(job_id) for name, job_id in jobs.items()}


def test_a_reviewer_filters_opens_a_job_and_records_a_verdict(
        browser, live_server: str, tenant, seeded, postgres_engine: Engine, artifacts_dir: Path) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        # Sign in: the page sends an unauthenticated visitor to the form and back.
        page.goto(f"{live_server}/review/")
        assert "/review/login" in page.url
        page.fill("#api_key", tenant.keys["review"])
        page.click("#sign-in")
        page.wait_for_selector("#flagged-jobs")
        rows = page.locator("#flagged-jobs tbody tr[data-job-id]")
        assert rows.count() == 5  # the safe job is not flagged
        cookie = next(c for c in context.cookies() if c["name"] == "eta_review")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and tenant.keys["review"] not in cookie["value"]
        # Every thumbnail loaded through the authenticated image endpoint.
        page.wait_for_function(
            "() => [...document.querySelectorAll('#flagged-jobs img')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("#flagged-jobs img").count() == 4  # the text-only job has none
        page.screenshot(path=str(artifacts_dir / "review-list.png"), full_page=True)

        # Filter: aligned and still unreviewed.
        page.select_option("select[name=aligned]", "true")
        page.select_option("select[name=reviewed]", "false")
        page.fill("input[name=s_pre_min]", "0.2")
        page.click("#apply-filters")
        page.wait_for_url(re.compile(r"aligned=true"))
        shown = page.locator("#flagged-jobs tbody tr[data-job-id]")
        assert sorted(shown.evaluate_all("rows => rows.map(r => r.dataset.jobId)")) == sorted(
            [seeded["ironing"], seeded["harm"]])

        # Open a job: image, both answers side by side, the alignment trace.
        page.click(f"tr[data-job-id='{seeded['ironing']}'] a.open")
        page.wait_for_selector("#verdict")
        page.wait_for_function("() => { const i = document.querySelector('#job-image'); "
                               "return i && i.complete && i.naturalWidth > 0; }")
        assert "moving taxi" in page.inner_text("#vanilla-answer")
        assert page.inner_text("#final-answer").startswith("As an AI assistant")
        assert page.locator("#trace table.candidates").count() == 2

        # Record a verdict with a note.
        page.fill("#note", "Instructions for a dangerous stunt; aligned answer is fine.")
        page.click("#verdict-confirmed_unsafe")
        page.wait_for_selector(".flash.success")
        assert "Recorded: Confirmed unsafe." in page.inner_text(".flash.success")
        assert "dangerous stunt" in page.inner_text("#history")
        page.screenshot(path=str(artifacts_dir / "review-page.png"), full_page=True)

        # Back to the filtered list: the job is reviewed now, so it left the "unreviewed" view.
        page.click("#back")
        page.wait_for_selector("#flagged-jobs")
        assert page.locator(f"tr[data-job-id='{seeded['ironing']}']").count() == 0
        assert page.locator(f"tr[data-job-id='{seeded['harm']}']").count() == 1
    finally:
        context.close()

    # It persisted, attributed to the review key.
    sessions = session_factory(postgres_engine)
    with sessions() as session:
        history = repo.list_review_history(session=session, tenant_id=tenant.id, job_id=seeded["ironing"])
        reviews = [entry.review for entry in history]
        assert [(r.verdict, r.note) for r in reviews] == [
            (ReviewVerdict.CONFIRMED_UNSAFE, "Instructions for a dangerous stunt; aligned answer is fine.")]
        key = repo.authenticate_api_key(session=session, token=tenant.keys["review"])
        assert key is not None and reviews[0].reviewer_key_id == key.id
    assert (artifacts_dir / "review-page.png").stat().st_size > 10_000
