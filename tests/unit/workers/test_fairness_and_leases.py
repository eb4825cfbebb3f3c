"""Fair queue order across tenants, and the lease keeper (no services)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from eta.settings import Settings
from workers.app import create_celery_app
from workers.broker import transport_options
from workers.enqueue import fair_priority, stage_chain
from workers.leases import LeaseKeeper, lease_owner


def test_a_tenant_with_nothing_in_flight_goes_first_and_order_within_a_tenant_is_kept() -> None:
    assert fair_priority(0) == 0
    priorities = [fair_priority(n) for n in range(400)]
    assert priorities == sorted(priorities)  # a tenant's own chunks stay in order
    assert priorities[1] == 1 and priorities[2] == priorities[3] == 2 and priorities[4] == 3
    assert priorities[-1] == 9 and max(priorities) == 9 and fair_priority(-5) == 0


def test_every_stage_message_of_a_chunk_carries_its_priority() -> None:
    app = create_celery_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    chained = stage_chain(app, [uuid.uuid4()], priority=4)
    assert [task.options.get("priority") for task in chained.tasks] == [4, 4, 4]
    assert all("priority" not in task.options for task in stage_chain(app, [uuid.uuid4()]).tasks)


def test_redis_has_a_list_per_priority() -> None:
    options = transport_options(Settings(redis_url="redis://127.0.0.1:1/0"))
    assert options["priority_steps"] == list(range(10))


class _Sessions:
    """Records what the keeper renews (a stand-in for the session factory)."""

    def __init__(self) -> None:
        self.renewed: list[list[uuid.UUID]] = []
        self.event = threading.Event()

    def __call__(self) -> _Sessions:
        return self

    def __enter__(self) -> _Sessions:
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    def begin(self) -> _Sessions:
        return self

    def execute(self, statement: Any) -> Any:
        ids = statement.compile().params
        self.renewed.append([v for k, v in ids.items() if k.startswith("id")][0])
        self.event.set()

        class Result:
            rowcount = 1

        return Result()


def test_the_keeper_renews_the_jobs_held_until_it_stops() -> None:
    sessions = _Sessions()
    held = {uuid.uuid4(), uuid.uuid4()}
    with LeaseKeeper(sessions, owner="w:1:t", lease_s=0.15, held=lambda: held):  # type: ignore[arg-type]
        assert sessions.event.wait(5)
    count = len(sessions.renewed)
    assert count >= 1 and set(sessions.renewed[0]) == held
    sessions.event.clear()
    assert not sessions.event.wait(0.2)  # stopped: no renewal after the block


def test_owner_names_host_process_and_message() -> None:
    owner = lease_owner("task-1")
    assert owner.endswith(":task-1") and owner.count(":") >= 2
