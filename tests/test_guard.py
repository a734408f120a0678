"""The endpoint's outer defences: proxies, source networks, guessing, bodies."""

from base64 import b64encode

import pytest
from werkzeug.security import generate_password_hash

from credits_service import create_app

from .conftest import PASSWORD, USERNAME

URL = "/api/distribute-credits"


def basic(user=USERNAME, password=PASSWORD):
    return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}


def test_allow_list_refuses_other_networks(make_app):
    app = make_app({"CRON_JOBS_ALLOWED_IPS": "10.0.0.0/8, 2001:db8::/32"})
    client = app.test_client()

    outside = client.get(URL, headers=basic(), environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert outside.status_code == 403 and outside.get_json()["error"] == "forbidden"
    inside = client.get(URL, headers=basic(), environ_base={"REMOTE_ADDR": "10.20.30.40"})
    assert inside.status_code == 200
    inside_v6 = client.get(URL, headers=basic(), environ_base={"REMOTE_ADDR": "2001:db8::1"})
    assert inside_v6.status_code == 200


def test_a_bad_network_stops_start_up(make_app):
    with pytest.raises(ValueError, match="CRON_JOBS_ALLOWED_IPS: '10.0.0.300'"):
        make_app({"CRON_JOBS_ALLOWED_IPS": "10.0.0.0/8,10.0.0.300"}, migrate=False)


def test_forwarded_address_is_trusted_only_with_hops(make_app):
    forged = {"X-Forwarded-For": "10.9.9.9", **basic()}
    proxy = {"REMOTE_ADDR": "127.0.0.1"}

    direct = make_app({"CRON_JOBS_ALLOWED_IPS": "10.0.0.0/8"}).test_client()
    assert direct.get(URL, headers=forged, environ_base=proxy).status_code == 403

    behind_proxy = make_app({"CRON_JOBS_ALLOWED_IPS": "10.0.0.0/8", "TRUSTED_PROXY_HOPS": 1}).test_client()
    assert behind_proxy.get(URL, headers=forged, environ_base=proxy).status_code == 200


def test_failed_logins_are_limited_per_address(make_app):
    app = make_app({"AUTH_FAILURE_LIMIT_ENABLED": True, "AUTH_FAILURE_LIMIT": "3 per minute"})
    client = app.test_client()
    guesser = {"REMOTE_ADDR": "198.51.100.1"}

    statuses = [client.get(URL, headers=basic(password=f"guess{n}"), environ_base=guesser).status_code
                for n in range(4)]
    assert statuses == [401, 401, 401, 429]
    locked = client.get(URL, headers=basic(), environ_base=guesser)
    assert locked.status_code == 429 and locked.is_json
    assert int(locked.headers["Retry-After"]) > 0
    # Another address is not affected, and successful calls do not count.
    other = {"REMOTE_ADDR": "198.51.100.2"}
    assert [client.get(URL, headers=basic(), environ_base=other).status_code for _ in range(4)] == [200] * 4


def test_password_hash_instead_of_the_password(make_app):
    app = make_app({"CRON_JOBS_PASSWORD": "", "CRON_JOBS_PASSWORD_HASH": generate_password_hash(PASSWORD)})
    client = app.test_client()
    assert client.get(URL, headers=basic()).status_code == 200
    assert client.get(URL, headers=basic(password=PASSWORD + "x")).status_code == 401
    assert client.get(URL, headers=basic(password="")).status_code == 401


def test_request_bodies_are_refused(client):
    response = client.post(URL, headers=basic(), data=b"x" * 5000)
    assert response.status_code == 413 and response.is_json
    small = client.post(URL, headers=basic(), data=b"{}", content_type="application/json")
    assert small.status_code == 200


def test_without_any_password_nobody_gets_in(make_app, caplog):
    app = make_app({"CRON_JOBS_PASSWORD": "", "CRON_JOBS_PASSWORD_HASH": ""})
    response = app.test_client().get(URL, headers=basic(password=""))
    assert response.status_code == 401
    assert "must be set" in caplog.text


def test_create_app_reads_the_guard_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CRON_JOBS_ALLOWED_IPS", "not-a-network")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'x.sqlite'}")
    with pytest.raises(ValueError, match="not-a-network"):
        create_app()


def test_rotation_accepts_the_previous_password_while_it_is_set(make_app):
    rotating = make_app({"CRON_JOBS_PASSWORD": "new-secret", "CRON_JOBS_PASSWORD_PREVIOUS": PASSWORD}).test_client()
    assert rotating.get(URL, headers=basic(password="new-secret")).status_code == 200
    assert rotating.get(URL, headers=basic(password=PASSWORD)).status_code == 200
    assert rotating.get(URL, headers=basic(password="neither")).status_code == 401

    done = make_app({"CRON_JOBS_PASSWORD": "new-secret"}).test_client()
    assert done.get(URL, headers=basic(password=PASSWORD)).status_code == 401


def test_only_a_refusal_for_too_many_failures_says_retry_after(make_app):
    client = make_app({"AUTH_FAILURE_LIMIT_ENABLED": True, "AUTH_FAILURE_LIMIT": "5 per minute"}).test_client()
    assert "Retry-After" not in client.get(URL, headers=basic()).headers
    assert "Retry-After" not in client.get(URL, headers=basic(password="wrong")).headers


def test_head_is_refused_with_the_allowed_methods(client, world):
    user = world.user()
    response = client.head(URL, headers=basic())
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert world.balance(user) is None  # the job did not run
