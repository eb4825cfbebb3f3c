"""The tenant's own settings, for its admin keys: the callback signing secret (read and rotate)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Blueprint
from spectree import Response as Responses

from api.auth import MANAGE, current_principal, requires
from api.schemas import CallbackSecretOut, RotateSecret
from api.spec import spec, validated
from api.state import state
from eta.store.models import Tenant
from eta.store.repository.admin_events import record_admin_event
from eta.store.repository.tenants import callback_secrets, ensure_callback_secret, rotate_callback_secret
from eta.vocabulary import AdminAction

logger = logging.getLogger(__name__)

bp = Blueprint("tenant", __name__, url_prefix="/v1/tenant")


def _secret_doc(tenant: Tenant) -> dict[str, Any]:
    live = callback_secrets(tenant)
    return {
        "object": "callback_secret",
        "secret": tenant.callback_secret,
        "previous_secret": live[1] if len(live) > 1 else None,
        "previous_valid_until": tenant.previous_callback_secret_until.isoformat() if len(live) > 1
        and tenant.previous_callback_secret_until else None,
    }


@bp.get("/callback-secret")
@requires(MANAGE)
@spec.validate(resp=Responses(HTTP_200=CallbackSecretOut), tags=["tenant"])
def get_callback_secret() -> Any:
    """The secret that signs this tenant's batch callbacks (admin keys only); receivers verify
    `ETA-Signature` with it. During a rotation's overlap window the previous secret is listed too."""
    principal = current_principal()
    with state().transaction() as session:
        return _secret_doc(ensure_callback_secret(session=session, tenant_id=principal.tenant_id))


@bp.post("/callback-secret/rotate")
@requires(MANAGE)
@spec.validate(json=RotateSecret, resp=Responses(HTTP_200=CallbackSecretOut), tags=["tenant"])
def rotate_secret() -> Any:
    """Make a new callback secret. The old one keeps signing alongside it (two signatures in
    `ETA-Signature`) for `overlap_hours`, so receivers can switch without missing a callback."""
    principal = current_principal()
    body: RotateSecret | None = validated("json")
    hours = body.overlap_hours if body is not None else 24.0
    with state().transaction() as session:
        tenant = rotate_callback_secret(session=session, tenant_id=principal.tenant_id,
                                        overlap=timedelta(hours=hours))
        doc = _secret_doc(tenant)
        # The secrets themselves never go into the log: only that, when and by whom.
        record_admin_event(session=session, tenant_id=principal.tenant_id,
                           action=AdminAction.CALLBACK_SECRET_ROTATED, actor_key_id=principal.key_id,
                           actor=principal.prefix, subject="callback_secret", details={"overlap_hours": hours})
    logger.info("key %s rotated the callback secret of tenant %s", principal.prefix, principal.tenant_id)
    return doc
