"""`eta keys`: create, list and revoke API keys (operator tooling, talks to the database directly)."""

from __future__ import annotations

import logging

import click

from eta.vocabulary import ApiKeyRole

logger = logging.getLogger(__name__)

ROLES = tuple(role.value for role in ApiKeyRole)


def _sessions():  # -> sessionmaker
    from eta.settings import get_settings
    from eta.store import SchemaNotCurrentError, check_schema_current, make_engine, session_factory

    engine = make_engine(settings=get_settings())
    try:
        check_schema_current(engine)
    except SchemaNotCurrentError as exc:
        raise click.ClickException(str(exc)) from exc
    return session_factory(engine)


@click.group("keys")
def keys() -> None:
    """API keys: one tenant and one role (submit, review, admin) per key; only a hash is stored."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name (created if new).")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--name", help="A label for the key.")
def create(tenant: str, role: str, name: str | None) -> None:
    """Create a key and print it once on stdout (it cannot be shown again)."""
    from eta.store import repository as repo
    from eta.store.models import ApiKeyRole
    from eta.store.repository.admin_events import CLI_ACTOR, record_admin_event
    from eta.vocabulary import AdminAction

    if not tenant.strip():
        raise click.BadParameter("must not be empty", param_hint="--tenant")
    with _sessions()() as session, session.begin():
        owner = repo.get_or_create_tenant(session=session, name=tenant)
        key, token = repo.create_api_key(session=session, tenant_id=owner.id, role=ApiKeyRole(role), name=name)
        prefix, key_id = key.prefix, key.id
        record_admin_event(session=session, tenant_id=owner.id, action=AdminAction.KEY_CREATED, actor_key_id=None,
                           actor=CLI_ACTOR, subject=str(key_id), details={"role": role, "prefix": prefix, "name": name})
    click.echo(f"created {role} key {prefix} (id {key_id}) for tenant {tenant!r}; it is shown only this once:",
               err=True)
    click.echo(token)


@keys.command("list")
@click.option("--tenant", required=True, help="Tenant name.")
def list_keys(tenant: str) -> None:
    """The tenant's keys: id, visible prefix, role, created, revoked (never the key itself)."""
    from eta.store import repository as repo

    with _sessions()() as session:
        owner = repo.get_tenant_by_name(session=session, name=tenant)
        if owner is None:
            raise click.ClickException(f"no tenant {tenant!r}")
        for key in repo.list_api_keys(session=session, tenant_id=owner.id):
            revoked = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "live"
            click.echo(f"{key.id}  {key.prefix}  {key.role.value:<6}  {key.created_at:%Y-%m-%d %H:%M}  {revoked}")


@keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke the key with id KEY_ID (shown by `eta keys create` and `eta keys list`).

    By id, not by the visible prefix: a prefix is 32 random bits and two tenants' keys may share it.
    """
    import uuid

    from eta.store import repository as repo
    from eta.store.repository.admin_events import CLI_ACTOR, record_admin_event
    from eta.vocabulary import AdminAction

    try:
        ident = uuid.UUID(key_id)
    except ValueError:
        raise click.BadParameter("give the key's id (a UUID, see `eta keys list --tenant NAME`), not its prefix",
                                 param_hint="KEY_ID") from None
    with _sessions()() as session, session.begin():
        key = repo.revoke_api_key_by_id(session=session, key_id=ident)
        prefix = key.prefix if key is not None else None
        if key is not None:
            record_admin_event(session=session, tenant_id=key.tenant_id, action=AdminAction.KEY_REVOKED,
                               actor_key_id=None, actor=CLI_ACTOR, subject=str(ident),
                               details={"role": key.role.value, "prefix": key.prefix})
    if prefix is None:
        raise click.ClickException(f"no live key with id {ident}")
    click.echo(f"revoked {ident} ({prefix})")
