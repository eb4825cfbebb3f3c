"""The API against the session's real Postgres database, served in-process by Flask's test client."""

from __future__ import annotations

import base64
import ipaddress
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from api import create_app
from eta import outbound
from eta.settings import Settings
from eta.store import repository as repo
from eta.store import session_factory
from eta.store.models import ApiKeyRole

pytestmark = pytest.mark.postgres


@dataclass
class RecordingEnqueue:
    """Stands in for the broker where a test is about the API's side only; records what was sent."""

    calls: list[list[uuid.UUID]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, job_ids):
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.calls.append(list(job_ids))

    @property
    def job_ids(self) -> list[uuid.UUID]:
        return [j for call in self.calls for j in call]


class FakeDns(dict):
    """Host name -> addresses, answered instead of the system's DNS (no test depends on the network); a
    test changes an entry to change the answer."""

    def __call__(self, host: str, port: int) -> list[str]:
        if host in self:
            return list(self[host])
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise OSError(f"{host}: name does not resolve (test DNS)") from None
        return [host]


@pytest.fixture(autouse=True)
def fake_dns() -> Iterator[FakeDns]:
    dns = FakeDns({"example.test": ["93.184.216.34"]})
    previous = outbound.set_resolver(dns)
    yield dns
    outbound.set_resolver(previous)


@pytest.fixture
def enqueue() -> RecordingEnqueue:
    return RecordingEnqueue()


TEST_LIMITS = {"max_request_bytes": 8 * 1024 * 1024, "max_prompt_chars": 2000, "max_batch_items": 1500}


@pytest.fixture
def settings(postgres_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=postgres_url, eta_data_dir=tmp_path, **TEST_LIMITS)


@pytest.fixture
def app(settings: Settings, postgres_engine: Engine, enqueue: RecordingEnqueue):
    return create_app(settings, engine=postgres_engine, enqueue=enqueue)


@pytest.fixture
def client(app):
    return app.test_client()


@dataclass
class Tenant:
    id: uuid.UUID
    keys: dict[str, str]

    def auth(self, role: str = "submit") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@pytest.fixture
def make_tenant(postgres_engine: Engine) -> Callable[[], Tenant]:
    sessions = session_factory(postgres_engine)

    def make() -> Tenant:
        with sessions() as session, session.begin():
            tenant = repo.create_tenant(session=session, name=f"t-{uuid.uuid4().hex[:10]}")
            keys = {role.value: repo.create_api_key(session=session, tenant_id=tenant.id, role=role)[1]
                    for role in ApiKeyRole}
            return Tenant(tenant.id, keys)

    return make


@pytest.fixture
def tenant(make_tenant) -> Tenant:
    return make_tenant()


@pytest.fixture(scope="session")
def sample_b64(samples_dir: Path) -> Callable[[str], str]:
    def encode(name: str) -> str:
        return base64.b64encode((samples_dir / name).read_bytes()).decode()

    return encode
