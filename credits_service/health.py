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
    expected = ScriptDirectory(current_app.extensions["migrate"].directory).get_current_head()
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            try:
                current = conn.scalar(text("SELECT version_num FROM credits_service_alembic_version"))
            except DBAPIError:
                current = None
    except DBAPIError:
        return _unavailable("the database cannot be reached")
    if current != expected:
        return _unavailable(f"the schema is at {current or 'nothing'}, this code needs {expected}: "
                            "run flask db upgrade")
    return jsonify(status="ok", schema=current)


def _unavailable(reason):
    return jsonify(status="unavailable", reason=reason), 503
