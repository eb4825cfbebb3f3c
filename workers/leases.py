"""Job leases: a stage message holds its jobs while it runs and until their next message is published.

The claim takes a lease on every job it holds or hands on (`workers.runner`); while the stage runs, a thread
of the worker process pushes the deadline back every `lease_s / 3` seconds; once the task has returned and
Celery has published the chain's next message, `task_success` lets the handed-on jobs go (their message is in
the broker now). A worker that dies at any point before that stops renewing: its jobs' leases run out within
`lease_s` and the sweeper sends them again, however long their stage may take. A slow stage on a live worker
keeps renewing and is never swept.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from eta.store import repository as repo
from eta.store.models import utcnow

logger = logging.getLogger(__name__)


def lease_owner(task_id: str | None) -> str:
    """Who holds a message's jobs: this host and process, and the message (unique per delivery)."""
    return f"{socket.gethostname()}:{os.getpid()}:{task_id or uuid.uuid4()}"[:200]


def lease_deadline(lease_s: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) + timedelta(seconds=lease_s)


class LeaseKeeper:
    """Renews the leases of the jobs `held()` names, every `lease_s / 3` seconds, in a daemon thread."""

    def __init__(self, sessions: sessionmaker[Session], *, owner: str, lease_s: float,
                 held: Callable[[], Iterable[uuid.UUID]]) -> None:
        self.sessions = sessions
        self.owner = owner
        self.lease_s = lease_s
        self.held = held
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eta-lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                ids = list(self.held())
            except RuntimeError:  # the set changed size while copied: next round
                continue
            try:
                with self.sessions() as session, session.begin():
                    renewed = repo.renew_leases(session=session, job_ids=ids, owner=self.owner,
                                                until=lease_deadline(self.lease_s))
                logger.debug("renewed %d of %d leases of %s", renewed, len(ids), self.owner)
            except Exception:
                # The database may be briefly away; the next round tries again (the lease has room for two misses).
                logger.warning("could not renew the leases of %s", self.owner, exc_info=True)


def release(sessions: sessionmaker[Session], *, owner: str, job_ids: list[uuid.UUID]) -> None:
    """Let go of handed-on jobs once their next message is published. A failure here only costs a needless
    re-send when the lease runs out (the stages are idempotent)."""
    if not job_ids:
        return
    try:
        with sessions() as session, session.begin():
            repo.release_leases(session=session, job_ids=job_ids, owner=owner)
    except Exception:
        logger.warning("could not release the leases of %s", owner, exc_info=True)
