"""credits_service: the daily credits job of a MkSaaS site, as a Flask service."""

import logging
from pathlib import Path

from dotenv import load_dotenv
from flask import Flask, jsonify
from sqlalchemy import event
from werkzeug.exceptions import HTTPException, InternalServerError

from . import logs, shards
from .config import Config
from .extensions import db, migrate
from .period import zone
from .plans import load_plans

MIGRATIONS = Path(__file__).with_name("migrations")

log = logging.getLogger(__name__)


def create_app(config=None):
    """Build the app from the environment (and ``.env``), then ``config``.

    Anything that would make the job do the wrong thing (a broken plans file,
    an unset price-id variable, an unknown time zone) stops start-up here
    with a message that says what to fix, instead of failing at 3 am.
    """
    load_dotenv()
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_object(Config(app.instance_path))
    if config:
        app.config.from_mapping(config)
    app.json.sort_keys = False
    logs.init_app(app)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)

    zone(app.config["CREDITS_TIMEZONE"])
    for setting in ("CREDITS_BATCH_SIZE", "CREDITS_WORKERS"):
        if not isinstance(app.config[setting], int) or app.config[setting] < 1:
            raise ValueError(f"{setting} must be a whole number of at least 1, got {app.config[setting]!r}")
    app.extensions["credits_plans"] = load_plans(app.config["CREDITS_PLANS_FILE"])

    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    if not app.config["CRON_JOBS_USERNAME"] or not (
        app.config["CRON_JOBS_PASSWORD"] or app.config["CRON_JOBS_PASSWORD_HASH"]
    ):
        log.warning("CRON_JOBS_USERNAME / CRON_JOBS_PASSWORD not set: every call will be refused")
    return app


def register_extensions(app):
    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS))
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            _configure_sqlite(db.engine)


def _configure_sqlite(engine):
    """Transactions that SQLite runs the way the job needs them.

    pysqlite's own BEGIN (deferred, and only before a write) would let a
    batch read balances and then find another writer changed them: a
    connection opened with ``execution_options(begin_immediate=True)`` (the
    job's) takes the write lock at BEGIN instead. Other transactions begin
    deferred, and with the write-ahead log they read while a run writes.
    Each connection also learns the shard hash PostgreSQL computes in SQL.
    """

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection, _):
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA busy_timeout = 30000")
        dbapi_connection.execute("PRAGMA journal_mode = WAL")
        shards.register_sqlite_function(dbapi_connection)

    @event.listens_for(engine, "begin")
    def begin(conn):
        immediate = conn.get_execution_options().get("begin_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def register_blueprints(app):
    from . import cli, distribute_credits, guard, health, metrics, openapi

    app.register_blueprint(distribute_credits.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(health.bp)
    metrics.init_app(app)
    guard.init_app(app, distribute_credits.bp, metrics.bp)
    app.register_blueprint(cli.bp)


def register_error_handlers(app):
    """Every answer is JSON, including the ones Flask makes on its own."""

    @app.errorhandler(HTTPException)
    def http_error(error):
        response = jsonify(error=error.name.lower().replace(" ", "_"), message=error.description)
        response.status_code = error.code
        if error.code == 405:
            response.headers["Allow"] = ", ".join(error.valid_methods or ())
        return response

    @app.errorhandler(InternalServerError)
    def unexpected_error(error):
        log.error("unexpected error", exc_info=error.original_exception)
        return jsonify(error="internal_error", message="the request failed; see the service log"), 500
