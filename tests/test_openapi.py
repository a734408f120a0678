"""The OpenAPI document tells the truth about the HTTP interface.

Two checks: every route of the app is documented (and nothing else), and
schemathesis generates calls from the document and validates each answer
(status codes, content types, bodies against the schemas, auth enforced).
"""

import tempfile
from base64 import b64encode
from datetime import UTC, datetime
from pathlib import Path

import flask_migrate
import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance
from hypothesis import HealthCheck, settings

import credits_service
from credits_service import create_app
from credits_service.extensions import db

from .conftest import PASSWORD, PRICES, USERNAME
from .world import World

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def test_every_route_is_documented_and_nothing_else(app):
    document = app.test_client().get("/api/openapi.json").get_json()
    documented = {
        (path, method.upper()) for path, operations in document["paths"].items() for method in operations
    }
    routed = {
        (rule.rule.replace("<run_id>", "{run_id}"), method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - IGNORED_METHODS
    }
    assert documented == routed


def _seeded_app():
    """An app on a throw-away SQLite database with a few users.

    Built at import time because schemathesis generates one test per
    operation from it while the tests are being collected.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(credits_service, "load_dotenv", lambda: None)
        for name, value in PRICES.items():
            patch.setenv(name, value)
        database = Path(tempfile.mkdtemp()) / "credits.sqlite"
        app = create_app({
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}",
            "CRON_JOBS_USERNAME": USERNAME,
            "CRON_JOBS_PASSWORD": PASSWORD,
            "AUTH_FAILURE_LIMIT_ENABLED": False,
        })
    with app.app_context():
        flask_migrate.upgrade()
        world = World(db.engine, app)
        for _ in range(3):
            world.user()
        world.give(world.user(), 40, expires=datetime(2026, 1, 1, tzinfo=UTC))
    return app


schema = schemathesis.openapi.from_wsgi("/api/openapi.json", _seeded_app())
AUTH = {"Authorization": "Basic " + b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_answers_match_the_document(case):
    # A schema cannot say "K <= N" of shard=K/N, so a schema-valid 7/3 is
    # rightly refused with 400; every other check runs.
    case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])
