"""Presets: a tenant's named, versioned parameter sets. Admin keys store them (every PUT makes the next
version, earlier versions stay readable and usable as `name@version`); any key reads them; jobs and batch
items name them with `"preset"`."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field
from spectree import Response as Responses

from api.auth import MANAGE, READ, current_principal, requires
from api.intake import _integral, param_problems, parse_params
from api.problems import Problem
from api.schemas import ProblemOut
from api.spec import spec, validated
from api.state import state
from api.text import SafeText
from eta.config import ConfigError, ETAConfig
from eta.store.models import Preset
from eta.store.repository.admin_events import record_admin_event
from eta.store.repository.presets import (
    MAX_PRESET_VERSION,
    PRESET_NAME,
    get_preset,
    list_latest_presets,
    put_preset,
)
from eta.vocabulary import AdminAction

logger = logging.getLogger(__name__)

bp = Blueprint("presets", __name__, url_prefix="/v1/presets")

_ERRORS = {"HTTP_401": ProblemOut, "HTTP_403": ProblemOut}
MAX_DESCRIPTION_CHARS = 2000


class PresetPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(description="ETA parameters (the same names and bounds as a job's params).")
    description: SafeText(MAX_DESCRIPTION_CHARS) | None = Field(  # type: ignore[valid-type]
        default=None, description="What the preset is for.")


class PresetVersionQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1, le=MAX_PRESET_VERSION,
                                description="A stored version; the latest when left out.")


class PresetOut(BaseModel):
    object: Literal["preset"] = "preset"
    name: str
    version: int
    params: dict[str, Any]
    description: str | None
    created_at: datetime
    created_by_key_id: str | None


class PresetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PresetOut]


def preset_doc(preset: Preset) -> dict[str, Any]:
    return {"object": "preset", "name": preset.name, "version": preset.version, "params": preset.params,
            "description": preset.description, "created_at": preset.created_at.isoformat(),
            "created_by_key_id": str(preset.created_by_key_id) if preset.created_by_key_id else None}


def _checked_name(name: str) -> str:
    if not PRESET_NAME.fullmatch(name):
        raise Problem(422, "preset_name_invalid", "Invalid preset name",
                      "a preset name is 1 to 64 letters, digits, '_', '.', '-' (starting with a letter or digit)")
    return name


def _checked_params(value: dict[str, Any]) -> dict[str, Any]:
    """The params as given, once the merged set is known to be valid under this server's limits."""
    try:
        params = _integral(parse_params(value, where="params"))
        config = ETAConfig.from_dict(params)
    except (ConfigError, TypeError, ValueError, OverflowError) as exc:
        raise Problem(422, "params_invalid", "Invalid parameters", str(exc)) from exc
    problems = param_problems(config.to_dict(), state().settings)
    if problems:
        raise Problem(422, "param_out_of_range", "Invalid parameters", problems[0][1],
                      errors=[{"field": f, "code": "param_out_of_range", "message": m} for f, m in problems])
    return params


@bp.get("")
@requires(READ)
@spec.validate(resp=Responses(HTTP_200=PresetList, **_ERRORS), tags=["presets"], operation_id="list_presets")
def list_presets() -> Any:
    """The latest version of each of the tenant's presets, by name."""
    with state().read() as session:
        presets = list_latest_presets(session=session, tenant_id=current_principal().tenant_id)
        return {"object": "list", "data": [preset_doc(p) for p in presets]}


@bp.get("/<name>")
@requires(READ)
@spec.validate(query=PresetVersionQuery, resp=Responses(HTTP_200=PresetOut, HTTP_404=ProblemOut,
                                                          HTTP_422=ProblemOut, **_ERRORS),
               tags=["presets"], operation_id="get_preset")
def get_preset_version(name: str) -> Any:
    """One preset: its latest version, or `?version=N`."""
    query: PresetVersionQuery = validated("query")
    name = _checked_name(name)
    with state().read() as session:
        preset = get_preset(session=session, tenant_id=current_principal().tenant_id, name=name,
                            version=query.version if query is not None else None)
        if preset is None:
            raise Problem(404, "preset_not_found", "Not Found", f"no preset {name!r}" + (
                f" version {query.version}" if query is not None and query.version is not None else ""))
        return preset_doc(preset)


@bp.put("/<name>")
@requires(MANAGE)
@spec.validate(json=PresetPut, resp=Responses(HTTP_200=PresetOut, HTTP_422=ProblemOut, **_ERRORS),
               tags=["presets"], operation_id="put_preset")
def store_preset(name: str) -> Any:
    """Store the next version of a preset (admin keys only). Earlier versions stay, and jobs that named
    them keep recording the version they ran with. The change is an administrative event."""
    principal = current_principal()
    body: PresetPut = validated("json")
    name = _checked_name(name)
    params = _checked_params(body.params)
    with state().transaction() as session:
        preset = put_preset(session=session, tenant_id=principal.tenant_id, name=name, params=params,
                            description=body.description, created_by_key_id=principal.key_id)
        record_admin_event(session=session, tenant_id=principal.tenant_id, action=AdminAction.PRESET_PUT,
                           actor_key_id=principal.key_id, actor=principal.prefix,
                           subject=f"{preset.name}@{preset.version}",
                           details={"name": preset.name, "version": preset.version, "params": params,
                                    "description": body.description})
        return preset_doc(preset)
