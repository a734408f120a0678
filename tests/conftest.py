"""Fixtures: a fresh app and a fresh, migrated database for every test.

Every test that takes ``app`` runs on SQLite and, when ``TEST_DATABASE_URL``
points at a PostgreSQL database, on PostgreSQL too. The PostgreSQL database
is wiped (schema ``public`` dropped) before each test, so use a database that
holds nothing else.
"""

import os
import uuid

import flask_migrate
import pytest
import sqlalchemy as sa

import credits_service
from credits_service import create_app
from credits_service.extensions import db

from .world import World

USERNAME = "cron"
PASSWORD = "s3cret:with:colons"
PRICES = {
    "NEXT_PUBLIC_STRIPE_PRICE_PRO_MONTHLY": "price_pro_monthly",
    "NEXT_PUBLIC_STRIPE_PRICE_PRO_YEARLY": "price_pro_yearly",
    "NEXT_PUBLIC_STRIPE_PRICE_LIFETIME": "price_lifetime",
}
SERVICE_VARIABLES = (
    "DATABASE_URL",
    "CRON_JOBS_USERNAME",
    "CRON_JOBS_PASSWORD",
    "CREDITS_PLANS_FILE",
    "CREDITS_TIMEZONE",
    "CREDITS_BATCH_SIZE",
    "CRON_JOBS_PASSWORD_HASH",
    "CRON_JOBS_PASSWORD_PREVIOUS",
    "CRON_JOBS_ALLOWED_IPS",
    "TRUSTED_PROXY_HOPS",
    "CRON_JOBS_AUTH_FAILURE_LIMIT",
)


def postgres_url():
    return os.environ.get("TEST_DATABASE_URL")


def reset_postgres(url):
    engine = sa.create_engine(credits_service.config.database_uri(url))
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    """The tests never read a developer's .env; they set what they need."""
    monkeypatch.setattr(credits_service, "load_dotenv", lambda: None)
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in PRICES.items():
        monkeypatch.setenv(name, value)


def wiped_postgres_url():
    """The PostgreSQL test database, wiped; skips the test when there is none."""
    url = postgres_url()
    if not url:
        pytest.skip("TEST_DATABASE_URL is not set")
    reset_postgres(url)
    return credits_service.config.database_uri(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'credits.sqlite'}"
    return wiped_postgres_url()


@pytest.fixture
def pg_url():
    """For the tests that only PostgreSQL can prove (locks, processes, adoption)."""
    return wiped_postgres_url()


@pytest.fixture
def make_app(database_url, tmp_path):
    """Build an app on the test database; ``config`` overrides settings."""
    built = []

    def make(config=None, migrate=True):
        settings = {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_url,
            "CRON_JOBS_USERNAME": USERNAME,
            "CRON_JOBS_PASSWORD": PASSWORD,
            "CREDITS_BATCH_SIZE": 3,  # small, so that every test crosses batches
            "AUTH_FAILURE_LIMIT_ENABLED": False,  # tests of the limit turn it back on
        }
        settings.update(config or {})
        app = create_app(settings)
        if migrate:
            with app.app_context():
                flask_migrate.upgrade()
        built.append(app)
        return app

    yield make
    for app in built:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def world(app):
    with app.app_context():
        yield World(db.engine, app)


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def new_id():
    return str(uuid.uuid4())
