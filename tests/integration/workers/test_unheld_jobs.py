"""A job whose message a worker took and never started comes back within a minute, not after its status timeout.

A worker that dies, or loses its broker connection, while it holds a message it has not started leaves that message
in Redis's unacknowledged set, which Redis gives back only after the visibility timeout (hours); the message's jobs
carry no lease (nobody started them) and would wait for their status's sweep timeout (10 minutes for `queued`, an
hour for `generating`). Here the message is taken out of the queue by hand, as such a worker would leave it, with
its own database and Redis key prefix and no worker running: the sweeper alone must notice.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
import redis
import sqlalchemy as sa

from eta.settings import Settings
from eta.store import repository as repo
from eta.store import session_factory
from eta.store.models import Job, utcnow
from eta.store.repository import NewJob
from tests.integration.conftest import fresh_postgres_database, migrated_engine
from workers.app import create_celery_app
from workers.enqueue import enqueue_jobs
from workers.sweeper import sweep

from .conftest import REDIS_URL, flush_prefix

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_a_waiting_job_whose_message_is_in_no_queue_is_sent_again_after_a_minute():
    prefix = f"eta-test-{secrets.token_hex(4)}:"
    with fresh_postgres_database("eta_unheld") as url, migrated_engine(url) as engine:
        settings = Settings(database_url=url, redis_url=REDIS_URL, eta_broker_key_prefix=prefix)
        app = create_celery_app(settings)
        sessions = session_factory(engine)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            with sessions() as session, session.begin():
                tenant = repo.create_tenant(session=session, name="unheld")
                batch = repo.create_batch_with_jobs(
                    session=session, tenant_id=tenant.id,
                    jobs=[NewJob(prompt=f"Question {i}.", image_sha256=None, custom_id=f"item-{i}", params={})
                          for i in range(3)])
            enqueue_jobs(batch.job_ids, app=app)
            assert client.llen(f"{prefix}eta.pre") == 1
            # A worker took the message and died before starting it: it is in no queue, its jobs unleased.
            client.delete(f"{prefix}eta.pre")

            def attempts() -> set[int]:
                with sessions() as session:
                    return set(session.scalars(sa.select(Job.attempts).where(Job.id.in_(batch.job_ids))))

            start = utcnow()
            # Half a minute on: could still be a worker about to start it.
            early = sweep(sessions=sessions, app=app, settings=settings, now=start + timedelta(seconds=30))
            assert early.requeued == {} and attempts() == {0}
            # Past ETA_SWEEP_UNHELD_AFTER_S (60 s), far before the `queued` timeout (600 s): sent again.
            report = sweep(sessions=sessions, app=app, settings=settings, now=start + timedelta(seconds=90))
            assert report.requeued == {"pre": 3} and attempts() == {1}
            assert client.llen(f"{prefix}eta.pre") == 1
            # Now the queue holds their message: a backlog, not a loss; nothing is sent twice.
            later = sweep(sessions=sessions, app=app, settings=settings, now=start + timedelta(seconds=200))
            assert later.requeued == {} and "queued" in later.skipped_backlog and attempts() == {1}
        finally:
            client.close()
            flush_prefix(prefix)
