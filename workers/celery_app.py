"""The Celery app of this process: `celery -A workers.celery_app worker` (or `eta worker`) starts from here.

An entry point: the settings are read from the environment here, once, and handed to the app factory."""

from __future__ import annotations

import logging

from eta.settings import get_settings
from workers.app import create_celery_app

logger = logging.getLogger(__name__)

celery_app = create_celery_app(get_settings())
# `celery -A workers.celery_app` looks for an attribute named `app` or `celery`.
app = celery_app
