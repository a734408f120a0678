"""Adopting an existing MkSaaS database (SPEC section 6), on real PostgreSQL.

The database is built the way MkSaaS builds it (tests/mksaas_schema.sql),
filled the way its app fills it, and then handed to ``flask db upgrade``.
"""

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from credits_service import create_app

from .conftest import postgres_url

SCHEMA = Path(__file__).with_name("mksaas_schema.sql").read_text()
NOW = "2026-12-01T00:05:00Z"

HOST_ROWS = """
INSERT INTO "user" (id, name, email, email_verified, created_at, updated_at, banned)
VALUES ('free-1', 'Free', 'free@example.com', true, '2025-01-01', '2025-01-01', null),
       ('yearly-1', 'Yearly', 'yearly@example.com', true, '2025-01-01', '2025-01-01', false),
       ('lifetime-1', 'Lifetime', 'lifetime@example.com', true, '2025-01-01', '2025-01-01', null),
       ('legacy-1', 'Legacy', 'legacy@example.com', true, '2025-01-01', '2025-01-01', null);
INSERT INTO payment (id, price_id, type, scene, interval, user_id, customer_id, subscription_id,
                     invoice_id, status, paid, created_at, updated_at)
VALUES ('pay-1', 'price_pro_yearly', 'subscription', 'subscription', 'year', 'yearly-1', 'cus_1',
        'sub_1', 'in_1', 'active', true, '2026-03-01', '2026-03-01'),
       ('pay-2', 'price_lifetime', 'one_time', 'lifetime', null, 'lifetime-1', 'cus_2',
        null, 'in_2', 'completed', true, '2026-02-01', '2026-02-01');
INSERT INTO user_credit (id, user_id, current_credits)
VALUES ('uc-1', 'free-1', 50), ('uc-2', 'legacy-1', 50);
INSERT INTO credit_transaction (id, user_id, type, description, amount, remaining_amount,
                                expiration_date, created_at, updated_at)
VALUES ('ct-1', 'free-1', 'MONTHLY_REFRESH', 'Free monthly credits', 50, 50,
        '2026-12-01 00:00:00', '2026-11-01 00:05:00', '2026-11-01 00:05:00'),
       -- written by MkSaaS's own job earlier this month: no period key
       ('ct-2', 'legacy-1', 'MONTHLY_REFRESH', 'Free monthly credits', 50, 50,
        '2026-12-31 00:00:00', '2026-12-01 00:01:00', '2026-12-01 00:01:00');
"""


@pytest.fixture
def mksaas_url(pg_url):
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(SCHEMA)
        conn.exec_driver_sql(HOST_ROWS)
    engine.dispose()
    return pg_url


@pytest.fixture
def adopt(mksaas_url):
    app = create_app({"SQLALCHEMY_DATABASE_URI": mksaas_url, "TESTING": True})
    engine = sa.create_engine(mksaas_url)
    yield app, app.test_cli_runner(), engine
    engine.dispose()


def snapshot(engine):
    with engine.connect() as conn:
        return {
            table: sorted(map(tuple, conn.execute(sa.text(f'SELECT * FROM "{table}"'))))
            for table in ("user", "payment", "user_credit", "credit_transaction")
        }


def schema_of(engine):
    inspector = sa.inspect(engine)
    return {
        "tables": sorted(inspector.get_table_names()),
        "columns": {t: [c["name"] for c in inspector.get_columns(t)] for t in ("user_credit", "credit_transaction")},
        "indexes": {t: sorted(i["name"] for i in inspector.get_indexes(t)) for t in ("user_credit", "credit_transaction")},
    }


def test_upgrade_adds_only_and_the_job_runs(adopt):
    app, runner, engine = adopt
    before = snapshot(engine)

    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output

    after = snapshot(engine)
    # Every row is still there, unchanged but for the new period_key column (0).
    for table in ("user", "payment", "user_credit"):
        assert after[table] == before[table]
    assert [row[:-1] for row in after["credit_transaction"]] == before["credit_transaction"]
    assert {row[-1] for row in after["credit_transaction"]} == {0}
    schema = schema_of(engine)
    assert "credits_service_run" in schema["tables"]
    assert "uq_user_credit_user_id" in schema["indexes"]["user_credit"]
    assert "uq_credit_transaction_period" in schema["indexes"]["credit_transaction"]

    result = runner.invoke(args=["credits", "distribute", "--now", NOW])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["usersCount"] == 4
    assert summary["granted"] == {"MONTHLY_REFRESH": 1, "SUBSCRIPTION_RENEWAL": 1, "LIFETIME_MONTHLY": 1}
    # legacy-1 already got December's credits from MkSaaS's own job.
    assert summary["skipped"]["alreadyGranted"] == 1
    assert summary["expired"] == {"usersCount": 1, "credits": 50, "clampedUsers": 0}
    assert runner.invoke(args=["credits", "verify"]).exit_code == 0

    with engine.connect() as conn:
        balances = dict(map(tuple, conn.execute(sa.text("SELECT user_id, current_credits FROM user_credit"))))
    assert balances == {"free-1": 50, "legacy-1": 50, "yearly-1": 1000, "lifetime-1": 1000}


def test_host_app_inserts_still_work_after_upgrade(adopt):
    app, runner, engine = adopt
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    with engine.begin() as conn:
        # Shaped like MkSaaS's own inserts: no period_key, no run tables.
        conn.exec_driver_sql(
            """INSERT INTO "user" (id, name, email, email_verified, created_at, updated_at)
               VALUES ('new-1', 'New', 'new@example.com', false, now(), now())"""
        )
        conn.exec_driver_sql("INSERT INTO user_credit (id, user_id, current_credits) VALUES ('uc-new', 'new-1', 0)")
        for number in (1, 2):  # the host app may write one type twice in a month
            conn.exec_driver_sql(
                f"""INSERT INTO credit_transaction (id, user_id, type, description, amount, remaining_amount)
                    VALUES ('host-{number}', 'new-1', 'PURCHASE_PACKAGE', 'Package', 100, 100)"""
            )
        conn.exec_driver_sql(
            """INSERT INTO credit_transaction (id, user_id, type, amount)
               VALUES ('host-usage', 'new-1', 'USAGE', -10)"""
        )
        period_keys = conn.exec_driver_sql(
            "SELECT DISTINCT period_key FROM credit_transaction WHERE user_id = 'new-1'"
        ).scalars().all()
    assert period_keys == [0]


def test_upgrade_is_idempotent(adopt):
    app, runner, engine = adopt
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    schema = schema_of(engine)
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    assert schema_of(engine) == schema


def test_duplicate_balances_stop_the_upgrade_before_any_change(adopt):
    app, runner, engine = adopt
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO user_credit (id, user_id, current_credits) VALUES ('uc-dup', 'free-1', 5)")
    before_rows, before_schema = snapshot(engine), schema_of(engine)

    result = runner.invoke(args=["db", "upgrade"])

    assert result.exit_code != 0
    assert "free-1 (2 rows)" in result.output
    assert "nothing was changed" in result.output
    assert "DELETE FROM user_credit" in result.output  # says how to merge them
    assert snapshot(engine) == before_rows
    after_schema = schema_of(engine)
    assert after_schema == before_schema
    assert "credits_service_alembic_version" not in after_schema["tables"]


def test_plain_postgres_urls_from_a_mksaas_env_work(mksaas_url, monkeypatch):
    plain = postgres_url().replace("postgresql+psycopg://", "postgresql://")
    monkeypatch.setenv("DATABASE_URL", plain.replace("postgresql://", "postgres://", 1))
    app = create_app({"TESTING": True})
    assert app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql+psycopg://")
    assert app.test_cli_runner().invoke(args=["db", "upgrade"]).exit_code == 0

