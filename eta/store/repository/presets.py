"""Presets: a tenant's named, versioned parameter sets. A PUT adds the next version; none is ever changed."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.store.models import Preset, Tenant

logger = logging.getLogger(__name__)

# A preset name: what may follow `/v1/presets/` in a URL and precede `@version` in a reference.
PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# `name` or `name@version`, as a JSON Schema pattern (the OpenAPI document states it).
PRESET_REFERENCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[1-9][0-9]{0,9})?$"
MAX_PRESET_VERSION = 2**31 - 1


class PresetReferenceError(ValueError):
    """A `name` or `name@version` reference that is malformed or names no stored preset."""


def parse_preset_reference(reference: object) -> tuple[str, int | None]:
    """`nightly` -> ("nightly", None: the latest); `nightly@3` -> ("nightly", 3). Raises PresetReferenceError."""
    if not isinstance(reference, str):
        raise PresetReferenceError("preset must be a string: NAME or NAME@VERSION")
    name, at, version_text = reference.partition("@")
    if not PRESET_NAME.fullmatch(name):
        raise PresetReferenceError(f"preset {reference[:80]!r}: a name is 1 to 64 letters, digits, '_', '.', '-'"
                                   " (starting with a letter or digit)")
    if not at:
        return name, None
    if not version_text.isascii() or not version_text.isdigit() or not 1 <= int(version_text) <= MAX_PRESET_VERSION:
        raise PresetReferenceError(f"preset {reference[:80]!r}: the version after '@' must be a positive integer")
    return name, int(version_text)


def put_preset(*, session: Session, tenant_id: uuid.UUID, name: str, params: Mapping[str, Any],
               description: str | None, created_by_key_id: uuid.UUID | None) -> Preset:
    """Store the next version of the preset `name` (version 1 if new).

    The tenant's row is locked first, so two PUTs at once get consecutive versions rather than a conflict.
    """
    session.execute(sa.select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    latest = session.scalar(sa.select(sa.func.max(Preset.version))
                            .where(Preset.tenant_id == tenant_id, Preset.name == name))
    preset = Preset(tenant_id=tenant_id, name=name, version=(latest or 0) + 1, params=dict(params),
                    description=description, created_by_key_id=created_by_key_id)
    session.add(preset)
    session.flush()
    logger.info("tenant %s: preset %s@%d stored", tenant_id, name, preset.version)
    return preset


def get_preset(*, session: Session, tenant_id: uuid.UUID, name: str, version: int | None = None) -> Preset | None:
    """The given version of the tenant's preset, or its latest when `version` is None."""
    query = sa.select(Preset).where(Preset.tenant_id == tenant_id, Preset.name == name)
    if version is not None:
        return session.scalar(query.where(Preset.version == version))
    return session.scalar(query.order_by(Preset.version.desc()).limit(1))


def list_preset_versions(*, session: Session, tenant_id: uuid.UUID, name: str) -> Sequence[Preset]:
    """Every version of one preset, newest first."""
    return session.scalars(sa.select(Preset).where(Preset.tenant_id == tenant_id, Preset.name == name)
                           .order_by(Preset.version.desc())).all()


def list_latest_presets(*, session: Session, tenant_id: uuid.UUID, limit: int = 1000) -> Sequence[Preset]:
    """The latest version of each of the tenant's presets, by name."""
    latest = (sa.select(Preset.name, sa.func.max(Preset.version).label("version"))
              .where(Preset.tenant_id == tenant_id).group_by(Preset.name).subquery())
    return session.scalars(
        sa.select(Preset).join(latest, sa.and_(Preset.name == latest.c.name, Preset.version == latest.c.version))
        .where(Preset.tenant_id == tenant_id).order_by(Preset.name).limit(limit)).all()


def resolve_presets(*, session: Session, tenant_id: uuid.UUID, references: Sequence[str]
                    ) -> dict[str, Preset | str]:
    """Each distinct reference (`name` or `name@version`) resolved to its stored version, or to why it cannot
    be (a message naming the reference)."""
    out: dict[str, Preset | str] = {}
    for reference in dict.fromkeys(references):
        try:
            name, version = parse_preset_reference(reference)
        except PresetReferenceError as exc:
            out[reference] = str(exc)
            continue
        preset = get_preset(session=session, tenant_id=tenant_id, name=name, version=version)
        out[reference] = preset if preset is not None else (
            f"no preset {name!r}" if version is None else f"preset {name!r} has no version {version}")
    return out
