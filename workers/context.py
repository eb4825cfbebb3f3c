"""What one worker process holds: its settings, its database engine and the models its queues need.

`workers.app.create_celery_app` builds one `WorkerContext` with the app (`app.context`); the tasks reach it
through their base class (`workers.tasks.WorkerTask`), the process hooks (`workers.signals`) through the app.
Nothing here is a module global: a process with two apps (a test, a benchmark) has two contexts.

The main worker process learns its queues (`worker_init`), checks the schema and forks; each pool process then
drops the database connections it inherited (`after_fork`: a connection shared by two processes corrupts both)
and loads the models of its queues (`preload`). A pool that does not fork (solo, threads) loads them on first
use instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from eta.settings import Settings
from eta.store.db import make_engine, session_factory

if TYPE_CHECKING:
    from eta.models import Models

logger = logging.getLogger(__name__)


class WorkerContext:
    """The settings, sessions and models of one worker process, each made once, on first need.

    Args:
        settings: the settings the process was started with.
        sessions: a session factory to use instead of one on an engine of `settings` (tests, benchmarks).
        models: models to use instead of loading those the settings select (tests); roles they lack still load.
    """

    def __init__(self, settings: Settings, *, sessions: sessionmaker[Session] | None = None,
                 models: Models | None = None) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._sessions = sessions
        self._models = models
        # Model roles this process serves; None until the worker's queues are known (then: all three, lazily).
        self.roles: tuple[str, ...] | None = None

    def set_roles(self, roles: Iterable[str]) -> None:
        self.roles = tuple(roles)

    def engine(self) -> Engine:
        """This process's engine (the one under the given session factory, when one was given)."""
        with self._lock:
            if self._engine is None:
                bind = self._sessions.kw.get("bind") if self._sessions is not None else None
                self._engine = bind if isinstance(bind, Engine) else make_engine(settings=self.settings)
                if self._sessions is None:
                    self._sessions = session_factory(self._engine)
            return self._engine

    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            self.engine()
        if self._sessions is None:  # pragma: no cover - engine() sets it
            raise RuntimeError("no session factory")
        return self._sessions

    def after_fork(self) -> None:
        """In a freshly forked pool process: forget the parent's connections (without closing them under it)."""
        if self._engine is not None:
            self._engine.dispose(close=False)

    def models_for(self, roles: Iterable[str]) -> Models:
        """This process's models, with `roles` loaded (on first need; a worker's own roles load at start-up)."""
        with self._lock:
            if self._models is None:
                self._models = _empty_models()
            missing = [role for role in roles if getattr(self._models, role) is None]
            if missing:
                loaded = self.load(missing)
                for role in missing:
                    setattr(self._models, role, getattr(loaded, role))
            return self._models

    def load(self, roles: Iterable[str]) -> Models:
        """Load `roles` of the models the settings select (eta.models.selection; the tiny ones are built first if
        needed, ETA_MODELS=instant gives the stand-ins).

        Raises:
            eta.models.selection.ModelLoadError, ModelSelectionError: one line naming the model, the cause, the fix.
        """
        from eta.models.selection import load_selection, selection_from_settings

        roles = tuple(roles)
        if not roles:
            return _empty_models()
        selection = selection_from_settings(self.settings)
        logger.info("loading models %s: %s (device %s)", ", ".join(roles), selection.describe(),
                    self.settings.models.device)
        return load_selection(selection, roles)

    def preload(self) -> None:
        """Load this process's models now (pool start-up), so the first message does not pay for it."""
        self.models_for(self.roles if self.roles is not None else ())


def _empty_models() -> Models:
    from eta.models import Models

    return Models()
