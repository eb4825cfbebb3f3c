"""What one worker process holds: its database engine and the models its queues need, loaded once.

The main worker process learns its queues (`worker_init`), checks the schema and forks; each pool process
then drops the database connections it inherited (`worker_process_init`: a connection shared by two
processes corrupts both) and loads the models of its queues. A pool that does not fork (solo, threads)
loads them on first use instead.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from eta.config import ModelsConfig, ModelSpec
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
    """The models named by the settings; the tiny ones (built on first use) when none is named.

    Raises:
        ValueError: only some of ETA_VLM, ETA_CLIP, ETA_REWARD are set (mixing a real model with the
            random-weight ones would produce meaningless scores under real thresholds).
    """
    named = [settings.eta_vlm, settings.eta_clip, settings.eta_reward]
    if not any(named):
        root = settings.tiny_models_dir
        ensure_tiny_models_locked(root)
        return ModelsConfig.tiny(str(root)).with_device(settings.eta_device, settings.eta_dtype)
    if not all(named):
        raise ValueError("set all of ETA_VLM, ETA_CLIP and ETA_REWARD, or none of them (the tiny models)")
    return ModelsConfig(
        vlm=ModelSpec(str(settings.eta_vlm), revision=settings.eta_vlm_revision),
        clip=ModelSpec(str(settings.eta_clip), pretrained=settings.eta_clip_pretrained),
        reward=ModelSpec(str(settings.eta_reward), revision=settings.eta_reward_revision, trust_remote_code=True),
    ).with_device(settings.eta_device, settings.eta_dtype)


def ensure_tiny_models_locked(root: Path) -> None:
    """Build the tiny models into `root` unless they are there, holding a file lock so that several
    processes starting at once build them once (the build replaces the directory wholesale)."""
    from eta.models.tiny import ensure_tiny_models, is_built

    if is_built(root):
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            ensure_tiny_models(root)
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
    """Load `roles` of the configured models (the tiny ones are built first if needed)."""
    from eta.models import load_models

    roles = tuple(roles)
    if not roles:
        return _empty_models()
    settings = get_settings()
    if settings.eta_models == "instant":
        from eta.models.instant import load_instant_models

        logger.warning("loading the instant models %s: benchmark and chaos-test stand-ins, not real models",
                       ", ".join(roles))
        return load_instant_models(roles)  # type: ignore[no-any-return]
    config = models_config(settings)
    logger.info("loading models %s (device %s)", ", ".join(roles), settings.eta_device)
    return load_models(config, roles=roles)


def preload() -> None:
    """Load this process's models now (pool start-up), so the first message does not pay for it."""
    models_for(_roles if _roles is not None else ())

