"""What one worker process holds: its database engine and the models its queues need, loaded once.

The main worker process learns its queues (`worker_init`), checks the schema and forks; each pool process
then drops the database connections it inherited (`worker_process_init`: a connection shared by two
processes corrupts both) and loads the models of its queues. A pool that does not fork (solo, threads)
loads them on first use instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from eta.config import ModelsConfig
from eta.settings import Settings, get_settings
from eta.store.db import make_engine, session_factory

if TYPE_CHECKING:
    from eta.models import Models

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_engine: Engine | None = None
_sessions: sessionmaker[Session] | None = None
_models: Models | None = None
# Model roles this process serves; None until the worker's queues are known (then: all three, lazily).
_roles: tuple[str, ...] | None = None


def models_config(settings: Settings) -> ModelsConfig:
    """The model specs named by the settings (see eta.models.selection); the tiny ones, built on first use, when
    none is named.

    Raises:
        eta.models.selection.ModelSelectionError: only some of ETA_VLM, ETA_CLIP, ETA_REWARD are set.
    """
    from eta.models.selection import ensure_tiny_models_locked, selection_from_settings

    selection = selection_from_settings(settings)
    if selection.tiny_root is not None:
        ensure_tiny_models_locked(selection.tiny_root)
    return selection.config


def ensure_tiny_models_locked(root: Path) -> None:
    """Build the tiny models into `root` once, whichever process gets there first (eta.models.selection)."""
    from eta.models import selection

    selection.ensure_tiny_models_locked(root)


def set_roles(roles: Iterable[str]) -> None:
    global _roles
    _roles = tuple(roles)


def engine() -> Engine:
    global _engine, _sessions
    with _lock:
        if _engine is None:
            _engine = make_engine()
            _sessions = session_factory(_engine)
        return _engine


def sessions() -> sessionmaker[Session]:
    engine()
    if _sessions is None:  # pragma: no cover - engine() sets both
        raise RuntimeError("no session factory")
    return _sessions


def after_fork() -> None:
    """In a freshly forked pool process: forget the parent's connections (without closing them under it)."""
    if _engine is not None:
        _engine.dispose(close=False)


def models_for(roles: Iterable[str]) -> Models:
    """This process's models, with `roles` loaded (on first need; a worker's own roles load at start-up)."""
    global _models
    with _lock:
        if _models is None:
            _models = _empty_models()
        missing = [role for role in roles if getattr(_models, role) is None]
        if missing:
            loaded = load(missing)
            for role in missing:
                setattr(_models, role, getattr(loaded, role))
        return _models


def _empty_models() -> Models:
    from eta.models import Models

    return Models()


def load(roles: Iterable[str]) -> Models:
    """Load `roles` of the models the settings select (eta.models.selection; the tiny ones are built first if
    needed, ETA_MODELS=instant gives the stand-ins).

    Raises:
        eta.models.selection.ModelLoadError, ModelSelectionError: one line naming the model, the cause, the fix.
    """
    from eta.models.selection import load_selection, selection_from_settings

    roles = tuple(roles)
    if not roles:
        return _empty_models()
    settings = get_settings()
    selection = selection_from_settings(settings)
    logger.info("loading models %s: %s (device %s)", ", ".join(roles), selection.describe(), settings.models.device)
    return load_selection(selection, roles)


def preload() -> None:
    """Load this process's models now (pool start-up), so the first message does not pay for it."""
    models_for(_roles if _roles is not None else ())

