"""``/healthz`` and ``/readyz`` for load balancers and orchestrators.

Liveness asks only whether the process answers; readiness also asks whether
the database answers and carries the schema this code expects, because a
replica started before ``flask db upgrade`` ran must not receive the cron
call. Neither needs credentials, so neither says anything about the data.
"""

from alembic.script import ScriptDirectory
from flask import Blueprint, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from .extensions import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    migrations = ScriptDirectory(current_app.extensions["migrate"].directory)
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            try:
                current = conn.scalar(text("SELECT version_num FROM credits_service_alembic_version"))
            except DBAPIError:
                current = None
    except DBAPIError:
        return _unavailable("the database cannot be reached")
    if _behind(migrations, current):
        return _unavailable(f"the schema is at {current or 'nothing'}, this code needs "
                            f"{migrations.get_current_head()}: run flask db upgrade")
    return jsonify(status="ok", schema=current)


def _behind(migrations, current):
    """True if the schema lacks a migration this code needs.

    A revision this code does not know was written by newer code (a rolling
    upgrade): additive migrations keep the older code working, so still ready.
    """
    if current is None:
        return True
    head = migrations.get_current_head()
    known = {script.revision for script in migrations.walk_revisions()}
    return current != head and current in known


def _unavailable(reason):
    return jsonify(status="unavailable", reason=reason), 503
