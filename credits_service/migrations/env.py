"""Alembic environment: run the migrations on the app's own engine."""

from alembic import context
from flask import current_app

migrate = current_app.extensions["migrate"]


def run_migrations_online():
    with migrate.db.engine.connect() as connection:
        context.configure(connection=connection, target_metadata=migrate.db.metadata, **migrate.configure_args)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: they check the data before changing it")
run_migrations_online()
