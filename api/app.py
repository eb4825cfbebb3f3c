"""The Flask application factory of the intake API."""

from __future__ import annotations

import logging
import secrets

from flask import Flask
from sqlalchemy.engine import Engine

from api.guards import install_guards
from api.problems import install_problem_handlers
from api.spec import spec
from api.state import ApiState, Enqueue, close_request_session
from eta.settings import Settings, get_settings
from eta.store import check_schema_current, make_engine

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, engine: Engine | None = None,
               enqueue: Enqueue | None = None) -> Flask:
    """Build the API.

    Args:
        settings: defaults to the environment's (`eta.settings.get_settings()`).
        engine: defaults to one built from `settings.database.url` (embedded SQLite when unset).
        enqueue: sends committed jobs to the workers; defaults to `workers.enqueue.enqueue_jobs`.
    Raises:
        ValueError: production mode without a real SECRET_KEY.
        SchemaNotCurrentError: the database schema is not at the head revision (run `eta db upgrade`).
    """
    from api import admin_events, presets
    from api.review import bp as review_page
    from api.routes import audit, batches, health, jobs, tenant

    settings = settings or get_settings()
    engine = engine or make_engine(settings=settings)
    check_schema_current(engine)

    app = Flask("eta-api")
    install_guards(app, body_timeout_s=settings.api.body_timeout_s)
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_request_bytes
    # Multipart forms: Werkzeug's own per-part caps sit far below our image limit; lift them to the body cap.
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.limits.max_request_bytes
    app.config["MAX_FORM_PARTS"] = 4 * settings.limits.max_batch_items + 100
    app.config["SECRET_KEY"] = settings.secret_key or secrets.token_hex(32)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    # Built whole before the first request, not by it: a gunicorn worker's threads would otherwise race to build
    # its parts (the `limits` library's lazy import of redis, raced, reads its version as 0.0.0 and refuses).
    eta_state = ApiState.build(settings, engine, enqueue=enqueue)
    app.extensions["eta"] = eta_state
    metrics = eta_state.metrics
    metrics.install(app)
    app.teardown_appcontext(close_request_session)
    install_problem_handlers(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(tenant.bp)
    app.register_blueprint(presets.bp)
    app.register_blueprint(admin_events.bp)
    app.register_blueprint(review_page)
    spec.register(app)
    app.view_functions["openapi_docs"] = health.openapi_document  # the completed document there too
    logger.info("API ready (database %s)", engine.url.render_as_string(hide_password=True))
    return app
