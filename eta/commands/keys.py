"""`eta keys`: create, list and revoke API keys (operator tooling, talks to the database directly)."""

from __future__ import annotations

import logging

import click

from eta.vocabulary import ApiKeyRole

logger = logging.getLogger(__name__)

ROLES = tuple(role.value for role in ApiKeyRole)


def _sessions():  # -> sessionmaker
    from eta.store import SchemaNotCurrentError, check_schema_current, make_engine, session_factory

    engine = make_engine()
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

    if not tenant.strip():
        raise click.BadParameter("must not be empty", param_hint="--tenant")
    with _sessions()() as session, session.begin():
        owner = repo.get_or_create_tenant(session=session, name=tenant)
        key, token = repo.create_api_key(session=session, tenant_id=owner.id, role=ApiKeyRole(role), name=name)
        prefix = key.prefix
    click.echo(f"created {role} key {prefix} for tenant {tenant!r}; it is shown only this once:", err=True)
    click.echo(token)


@keys.command("revoke")
@click.argument("prefix")
def revoke(prefix: str) -> None:
    """Revoke the key whose visible prefix is PREFIX (e.g. eta_1a2b3c4d)."""
    from eta.store import repository as repo

    with _sessions()() as session, session.begin():
        key = repo.revoke_api_key_by_prefix(session=session, prefix=prefix)
    if key is None:
        raise click.ClickException(f"no live key with prefix {prefix!r}")
    click.echo(f"revoked {prefix}")
