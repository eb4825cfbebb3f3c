"""Model-level behaviour that needs no migrations: UTC timestamps and JSON round-trips (create_all)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError

from eta.store.db import make_engine, session_factory
from eta.store.lifecycle import JobStatus
from eta.store.models import Base, Job, Tenant


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'models.sqlite3'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_timestamps_come_back_aware_utc(engine: Engine) -> None:
    paris = timezone(timedelta(hours=1))
    created = datetime(2026, 3, 1, 12, 30, 0, 123456, tzinfo=paris)
    with session_factory(engine)() as session, session.begin():
        tenant = Tenant(name="t", created_at=created)
        session.add(tenant)
    with session_factory(engine)() as session:
        loaded = session.get(Tenant, tenant.id)
        assert loaded is not None
        assert loaded.created_at == created
        assert loaded.created_at.tzinfo == UTC
        assert loaded.created_at.hour == 11


def test_naive_timestamps_are_refused(engine: Engine) -> None:
    with session_factory(engine)() as session, pytest.raises(StatementError, match="naive"):
        session.add(Tenant(name="t", created_at=datetime(2026, 1, 1)))
        session.flush()


def test_json_params_and_enums_round_trip(engine: Engine) -> None:
    with session_factory(engine)() as session, session.begin():
        tenant = Tenant(name="t")
        session.add(tenant)
        session.flush()
        job = Job(
            tenant_id=tenant.id,
            prompt="p",
            seed=2**40,
            status=JobStatus.QUEUED,
            params={"tau_pre": 0.16, "policy": "both", "nested": [1, {"a": None}]},
        )
        session.add(job)
    with session_factory(engine)() as session:
        loaded = session.get(Job, job.id)
        assert loaded is not None
        assert loaded.params == {"tau_pre": 0.16, "policy": "both", "nested": [1, {"a": None}]}
        assert loaded.status is JobStatus.QUEUED and loaded.seed == 2**40
        assert loaded.flagged is False and loaded.attempts == 0
