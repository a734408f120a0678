"""What an operator watches: health, readiness, JSON logs and metrics."""

import io
import json
import logging
from base64 import b64encode
from datetime import UTC, datetime

import flask_migrate
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from credits_service.extensions import db

from credits_service.logs import JsonFormatter, formatter_for

from .conftest import PASSWORD, USERNAME

AUTH = {"Authorization": "Basic " + b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()}
URL = "/api/distribute-credits"


def test_healthz_needs_nothing(make_app):
    app = make_app({"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://nobody@127.0.0.1:1/none"}, migrate=False)
    response = app.test_client().get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_when_the_schema_is_current(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_readyz_before_the_migration(make_app):
    response = make_app(migrate=False).test_client().get("/readyz")
    assert response.status_code == 503
    assert "flask db upgrade" in response.get_json()["reason"]


def test_readyz_with_the_database_down(make_app):
    app = make_app({"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://nobody@127.0.0.1:1/none"}, migrate=False)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "reason": "the database cannot be reached"}


@pytest.fixture
def json_log():
    """Everything the service logs during the test, as parsed JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("credits_service")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_a_run_logs_its_start_end_and_failed_users_as_json(client, world, json_log):
    good, bad = world.user(), world.user()
    plant_failure(world, bad)

    response = client.get(URL, headers=AUTH)
    assert response.status_code == 200
    run_id = response.get_json()["runId"]

    lines = json_log()
    started = [line for line in lines if line["message"].startswith(f"run {run_id} started")]
    finished = [line for line in lines if line["message"].startswith(f"run {run_id} finished")]
    failed = [line for line in lines if line.get("user_id") == bad]
    assert started and started[0]["trigger"] == "http" and started[0]["run_id"] == run_id
    assert finished and finished[0]["errorCount"] == 1 and finished[0]["usersCount"] == 2
    assert finished[0]["durationMs"] >= 0 and finished[0]["period"]
    assert failed and failed[0]["run_id"] == run_id and "planted" in failed[0]["reason"]
    text = json.dumps(lines)
    assert PASSWORD not in text and AUTH["Authorization"].split()[1] not in text
    assert good not in {line.get("user_id") for line in lines}


def plant_failure(world, user_id):
    """Make every ledger insert for ``user_id`` fail inside the database."""
    with world.engine.begin() as conn:
        if world.engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER planted BEFORE INSERT ON credit_transaction WHEN NEW.user_id = '{user_id}' "
                "BEGIN SELECT RAISE(ABORT, 'planted failure'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION planted() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'planted failure'; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER planted BEFORE INSERT ON credit_transaction FOR EACH ROW "
                f"WHEN (NEW.user_id = '{user_id}') EXECUTE FUNCTION planted()"
            )


def test_log_format_is_checked():
    assert isinstance(formatter_for("json"), JsonFormatter)
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        formatter_for("yaml")


def scrape(client, **kwargs):
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.data
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def test_metrics_follow_the_run_history(client, world):
    assert client.get("/metrics").status_code == 401
    empty = scrape(client, headers=AUTH)
    assert empty[("credits_service_runs_total", (("status", "succeeded"),))] == 0

    free = world.user()
    world.give(free, 30, expires=datetime(2026, 11, 30, tzinfo=UTC))
    world.user()
    assert client.get(URL + "?dryRun=true", headers=AUTH).status_code == 200  # not counted
    assert client.get(URL, headers=AUTH).status_code == 200
    assert client.get(URL, headers=AUTH).status_code == 200

    figures = scrape(client, headers=AUTH)
    assert figures[("credits_service_runs_total", (("status", "succeeded"),))] == 2
    assert figures[("credits_service_grants_total", (("type", "MONTHLY_REFRESH"),))] == 2
    assert figures[("credits_service_expired_credits_total", ())] == 30
    assert figures[("credits_service_last_run_users", ())] == 2
    assert figures[("credits_service_last_run_errors", ())] == 0
    assert figures[("credits_service_last_success_timestamp_seconds", ())] > datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def test_metrics_allow_list_replaces_credentials(make_app):
    client = make_app({"METRICS_ALLOWED_IPS": "127.0.0.0/8"}).test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.9"}).status_code == 200
    assert client.get("/metrics", headers=AUTH, environ_base={"REMOTE_ADDR": "192.0.2.1"}).status_code == 403


def test_readyz_follows_the_migration_history(app, client):
    with app.app_context():
        engine = db.engine
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE credits_service_alembic_version SET version_num = '0002'"))
        behind = client.get("/readyz")
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE credits_service_alembic_version SET version_num = 'f00dcafe'"))
        newer = client.get("/readyz")
    assert behind.status_code == 503 and "run flask db upgrade" in behind.get_json()["reason"]
    # A revision this code does not know is newer code's: still ready.
    assert newer.status_code == 200


def test_a_schema_one_migration_behind_is_named(app, client):
    with app.app_context():
        flask_migrate.downgrade(revision="0002")
    response = client.get(URL, headers=AUTH)
    assert response.status_code == 503
    assert "out of date: run flask db upgrade" in response.get_json()["message"]


def test_metrics_guessing_is_limited_too(make_app):
    client = make_app({"AUTH_FAILURE_LIMIT_ENABLED": True, "AUTH_FAILURE_LIMIT": "2 per minute"}).test_client()
    wrong = {"Authorization": "Basic " + b64encode(f"{USERNAME}:guess".encode()).decode()}
    assert [client.get("/metrics", headers=wrong).status_code for _ in range(3)] == [401, 401, 429]


def test_a_malformed_failure_limit_stops_start_up(make_app):
    with pytest.raises(ValueError, match="CRON_JOBS_AUTH_FAILURE_LIMIT"):
        make_app({"AUTH_FAILURE_LIMIT": "ten a minute"}, migrate=False)
