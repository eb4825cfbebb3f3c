"""The Flask intake API: a thin adapter over `eta` (validation, storage, enqueue after commit)."""

from __future__ import annotations

from api.app import create_app

__all__ = ["create_app"]
