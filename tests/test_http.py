"""The HTTP interface (SPEC section 5), through Flask's test client."""

import base64
import binascii
import json
import logging
import re
import string
from datetime import datetime

import flask_migrate
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import credits_service
import credits_service.runs
from credits_service import create_app
from credits_service.extensions import db
from credits_service.models import Run
from credits_service.run_lock import run_lock

from .conftest import PASSWORD, PRICES, USERNAME
from .world import World

URL = "/api/distribute-credits"
MKSAAS_KEYS = ["message", "usersCount", "processedCount", "errorCount"]
MESSAGE = re.compile(r"^distribute credits success, users: (\d+), processed: (\d+), errors: (\d+)$")


def basic(username, password):
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def basic_bytes(raw):
    return "Basic " + base64.b64encode(raw).decode("ascii")


GOOD = basic(USERNAME, PASSWORD)
AUTH = {"Authorization": GOOD}


def ordered(response):
    """The top-level keys of a JSON answer, in the order they were sent."""
    return [key for key, _ in json.loads(response.data, object_pairs_hook=lambda pairs: pairs)]


def assert_json_error(response, status):
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body, dict)
    assert body.get("error") and body.get("message")
    return body


def free_users(world, n=3):
    return [world.user() for _ in range(n)]


# --- success ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_success_answers_the_mksaas_summary(client, world, method):
    users = free_users(world, 4)
    world.user(banned=True)
    response = client.open(URL, method=method, headers=AUTH)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert ordered(response)[:4] == MKSAAS_KEYS
    body = response.get_json()
    assert MESSAGE.match(body["message"]).groups() == ("4", "4", "0")
    assert (body["usersCount"], body["processedCount"], body["errorCount"]) == (4, 4, 0)
    assert body["dryRun"] is False
    assert body["granted"]["MONTHLY_REFRESH"] == 4
    assert re.fullmatch(r"\d{4}-\d{2}", body["period"])
    assert body["runId"]
    assert all(world.balance(user) == 50 for user in users)
    assert world.drift() == []


def test_second_call_the_same_day_grants_nothing(client, world):
    users = free_users(world, 4)
    first = client.get(URL, headers=AUTH)
    assert first.status_code == 200
    before = world.counts()

    second = client.post(URL, headers=AUTH)
    assert second.status_code == 200
    body = second.get_json()
    assert all(count == 0 for count in body["granted"].values())
    assert body["skipped"]["alreadyGranted"] == len(users)
    assert body["processedCount"] == len(users) and body["errorCount"] == 0
    assert body["runId"] != first.get_json()["runId"]
    assert world.counts() == before


def test_trailing_slash_answers_directly(client, world):
    free_users(world, 1)
    for method in ("GET", "POST"):
        response = client.open(URL + "/", method=method, headers=AUTH, follow_redirects=False)
        assert response.status_code == 200, (method, response.status_code)
        assert "Location" not in response.headers
        assert ordered(response)[:4] == MKSAAS_KEYS


def test_password_with_colons_works(make_app):
    assert ":" in PASSWORD
    app = make_app({"CRON_JOBS_PASSWORD": "::a:b:" + PASSWORD + ":"})
    client = app.test_client()
    assert client.get(URL, headers={"Authorization": basic(USERNAME, "::a:b:" + PASSWORD + ":")}).status_code == 200
    # Split at the first colon only: the part before the first colon of the password is not enough.
    assert client.get(URL, headers={"Authorization": basic(USERNAME, "::a:b:")}).status_code == 401


def test_scheme_is_case_insensitive(client):
    token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    assert client.get(URL, headers={"Authorization": f"basic {token}"}).status_code == 200
    assert client.get(URL, headers={"Authorization": f"BASIC  {token}"}).status_code == 200


# --- 401 -------------------------------------------------------------------

BAD_AUTHORIZATION = {
    "missing header": None,
    "empty header": "",
    "wrong user": basic("root", PASSWORD),
    "wrong password": basic(USERNAME, PASSWORD + "x"),
    "password prefix": basic(USERNAME, PASSWORD[:-1]),
    "user and password swapped": basic(PASSWORD, USERNAME),
    "empty password": basic(USERNAME, ""),
    "empty user and password": basic("", ""),
    "no colon": basic_bytes(f"{USERNAME}{PASSWORD}".encode()),
    "only the user": basic_bytes(USERNAME.encode()),
    "malformed base64": "Basic !!!not*base64!!!",
    "base64 with junk inside": "Basic " + GOOD.split()[1][:4] + "!!" + GOOD.split()[1][4:],
    "base64 without padding": "Basic " + GOOD.split()[1].rstrip("="),
    "truncated base64": GOOD[:-3],
    "non-utf8 credentials": basic_bytes(USERNAME.encode() + b":" + PASSWORD.encode() + b"\xff\xfe"),
    "non-ascii header": "Basic \xe9\xff",
    "scheme only": "Basic",
    "scheme and space": "Basic ",
    "no scheme": GOOD.split()[1],
    "bearer": "Bearer " + PASSWORD,
    "bearer carrying the right credentials": "Bearer " + GOOD.split()[1],
    "digest carrying the right credentials": "Digest " + GOOD.split()[1],
    "tab instead of space": "Basic\t" + GOOD.split()[1],
    "credentials twice": GOOD + " " + GOOD.split()[1],
}


@pytest.mark.parametrize("header", list(BAD_AUTHORIZATION.values()), ids=list(BAD_AUTHORIZATION))
def test_bad_credentials_get_401_and_change_nothing(client, world, header):
    free_users(world, 2)
    before = world.counts()
    headers = {} if header is None else {"Authorization": header}
    for method, path in [("GET", URL), ("POST", URL + "/"), ("GET", URL + "/runs/latest")]:
        response = client.open(path, method=method, headers=headers)
        body = assert_json_error(response, 401)
        assert body["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert world.counts() == before


@pytest.mark.parametrize("missing", ["CRON_JOBS_USERNAME", "CRON_JOBS_PASSWORD", "both"])
def test_unconfigured_credentials_refuse_everyone(make_app, caplog, missing):
    config = {"CRON_JOBS_USERNAME": "", "CRON_JOBS_PASSWORD": ""} if missing == "both" else {missing: ""}
    app = make_app(config)
    with app.app_context():
        world = World(db.engine, app)
        free_users(world, 2)
        before = world.counts()
    client = app.test_client()
    caplog.set_level(logging.INFO)
    attempts = [
        {},
        {"Authorization": basic("", "")},
        {"Authorization": basic(USERNAME, "")},
        {"Authorization": basic("", PASSWORD)},
        {"Authorization": GOOD},
    ]
    for headers in attempts:
        response = client.post(URL, headers=headers)
        assert_json_error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    refusals = [r for r in caplog.records if r.name == "credits_service.auth" and "refused a call" in r.getMessage()]
    assert len(refusals) == len(attempts)  # each refusal says why
    assert "CRON_JOBS_USERNAME" in refusals[0].getMessage()
    with app.app_context():
        assert world.counts() == before


def test_non_utf8_credentials_are_not_read_as_latin1(make_app):
    """A non-ASCII password works in UTF-8 only; latin-1 bytes are not a second way in."""
    app = make_app({"CRON_JOBS_PASSWORD": "p\u00e4ss:w\u00f6rd"})
    client = app.test_client()
    utf8 = basic_bytes(USERNAME.encode() + b":" + "p\u00e4ss:w\u00f6rd".encode("utf-8"))
    latin1 = basic_bytes(USERNAME.encode() + b":" + "p\u00e4ss:w\u00f6rd".encode("latin-1"))
    assert client.get(URL, headers={"Authorization": utf8}).status_code == 200
    response = client.get(URL, headers={"Authorization": latin1})
    assert_json_error(response, 401)


def test_no_password_or_header_in_the_logs(client, world, caplog):
    free_users(world, 2)
    caplog.set_level(logging.DEBUG)
    wrong = basic(USERNAME, PASSWORD + "-wrong")
    assert client.get(URL, headers={"Authorization": wrong}).status_code == 401
    assert client.get(URL, headers={**AUTH, "X-Request-Id": "log-check"}).status_code == 200
    assert client.get(URL + "/runs/latest", headers=AUTH).status_code == 200
    assert caplog.records, "the run is expected to log something"
    text = caplog.text
    for secret in (PASSWORD, GOOD, GOOD.split()[1], wrong.split()[1], PASSWORD + "-wrong"):
        assert secret not in text


# --- 405, 404: every error is JSON ------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", [URL, URL + "/"])
def test_other_methods_get_405_json_with_allow(client, world, method, path):
    free_users(world, 1)
    before = world.counts()
    response = client.open(path, method=method, headers=AUTH)
    body = assert_json_error(response, 405)
    assert body["error"] == "method_not_allowed"
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert method not in allowed
    assert world.counts() == before


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/"),
        ("GET", "/api"),
        ("GET", "/api/distribute-credit"),
        ("GET", URL + "/extra"),
        ("POST", "/nowhere"),
        ("POST", URL + "/runs/latest"),  # 405: the history is read-only
    ],
)
def test_every_error_answer_is_json(client, method, path):
    response = client.open(path, method=method, headers=AUTH)
    assert response.status_code in (404, 405)
    assert_json_error(response, response.status_code)


# --- 400: query parameters ---------------------------------------------------

BAD_QUERIES = {
    "dryRun=maybe": "dryRun",
    "dryRun=": "dryRun",
    "dryRun=yes": "dryRun",
    "dryrun=true": "dryrun",
    "dry_run=true": "dry_run",
    "DRYRUN=1": "DRYRUN",
    "dryRun=true&dryRun=true": "more than once",
    "dryRun=true&dryRun=false": "more than once",
    "dryRun=true&force=1": "force",
    "=": "unknown query parameter",
}


@pytest.mark.parametrize("query, says", list(BAD_QUERIES.items()), ids=list(BAD_QUERIES))
def test_bad_query_parameters_get_400_and_do_not_run(client, world, query, says):
    free_users(world, 2)
    before = world.counts()
    response = client.get(f"{URL}?{query}", headers=AUTH)
    body = assert_json_error(response, 400)
    assert says in body["message"]
    assert world.counts() == before
    latest = client.get(URL + "/runs/latest", headers=AUTH)
    assert latest.status_code == 404  # no run was even recorded


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_dry_run_changes_nothing(client, world, value):
    users = free_users(world, 3)
    world.give(users[0], 7)
    before = world.counts()
    response = client.get(f"{URL}?dryRun={value}", headers=AUTH)
    assert response.status_code == 200
    body = response.get_json()
    assert body["dryRun"] is True
    assert body["usersCount"] == 3
    assert ordered(response)[:4] == MKSAAS_KEYS
    assert world.counts() == before


@pytest.mark.parametrize("value", ["false", "0"])
def test_dry_run_false_is_a_real_run(client, world, value):
    users = free_users(world, 2)
    response = client.get(f"{URL}?dryRun={value}", headers=AUTH)
    assert response.status_code == 200
    assert response.get_json()["dryRun"] is False
    assert [world.balance(user) for user in users] == [50, 50]


# --- run history -------------------------------------------------------------


def test_request_id_and_summary_are_recorded(client, world):
    free_users(world, 2)
    response = client.post(URL, headers={**AUTH, "X-Request-Id": "cjo-1234-abcd"})
    assert response.status_code == 200
    summary = response.get_json()

    latest = client.get(URL + "/runs/latest", headers=AUTH)
    assert latest.status_code == 200
    run = latest.get_json()
    assert run["status"] == "succeeded"
    assert run["requestId"] == "cjo-1234-abcd"
    assert run["runId"] == summary["runId"]
    assert run["trigger"] == "http"
    assert run["dryRun"] is False
    assert run["period"] == summary["period"]
    assert run["summary"] == summary
    assert run["startedAt"] and run["finishedAt"]

    by_id = client.get(f"{URL}/runs/{summary['runId']}", headers=AUTH)
    assert by_id.status_code == 200
    assert by_id.get_json() == run


def test_latest_run_is_the_newest_and_request_id_is_optional(client, world):
    free_users(world, 1)
    client.get(URL, headers={**AUTH, "X-Request-Id": "first"})
    second = client.get(URL + "?dryRun=true", headers=AUTH).get_json()
    run = client.get(URL + "/runs/latest", headers=AUTH).get_json()
    assert run["runId"] == second["runId"]
    assert run["requestId"] is None
    assert run["dryRun"] is True


def test_request_id_is_capped_and_cleaned(client, world):
    free_users(world, 1)
    response = client.get(URL, headers={**AUTH, "X-Request-Id": "a\x00b\x01" + "x" * 500})
    assert response.status_code == 200
    run = client.get(URL + "/runs/latest", headers=AUTH).get_json()
    assert run["requestId"] == ("ab" + "x" * 500)[:200]


@pytest.mark.parametrize("run_id", ["does-not-exist", "00000000-0000-0000-0000-000000000000", "x" * 300, "%00", "%FF"])
def test_unknown_run_is_404_json(client, world, run_id):
    free_users(world, 1)
    assert client.get(URL, headers=AUTH).status_code == 200
    response = client.get(f"{URL}/runs/{run_id}", headers=AUTH)
    body = assert_json_error(response, 404)
    assert body["error"] == "not_found"


def test_no_run_yet_is_404_json(client):
    body = assert_json_error(client.get(URL + "/runs/latest", headers=AUTH), 404)
    assert body["error"] == "not_found"


def test_runs_endpoints_require_auth(client, world):
    free_users(world, 1)
    run_id = client.get(URL, headers=AUTH).get_json()["runId"]
    for path in (URL + "/runs/latest", f"{URL}/runs/{run_id}", URL + "/runs/unknown"):
        for headers in ({}, {"Authorization": basic(USERNAME, "nope")}):
            response = client.get(path, headers=headers)
            assert_json_error(response, 401)
            assert response.headers["WWW-Authenticate"].startswith("Basic")
            assert run_id not in response.get_data(as_text=True)


# --- 409, 503 ------------------------------------------------------------------


def test_run_in_progress_gets_409_then_succeeds(app, client, world):
    users = free_users(world, 3)
    before = world.counts()
    with app.app_context():
        with run_lock(db.engine):
            response = client.get(URL, headers=AUTH)
            body = assert_json_error(response, 409)
            assert body["error"] == "run_in_progress"
            assert "runId" in body
            # The history is still readable while a run holds the lock.
            assert client.get(URL + "/runs/latest", headers=AUTH).status_code == 404
    assert world.counts() == before

    response = client.get(URL, headers=AUTH)
    assert response.status_code == 200
    assert response.get_json()["granted"]["MONTHLY_REFRESH"] == len(users)


def test_409_names_the_running_run(app, client, world):
    """A run recorded as running (its process holds the lock) is named in the 409."""
    free_users(world, 1)
    with app.app_context():
        with run_lock(db.engine):
            world.insert(
                Run, id="11111111-2222-3333-4444-555555555555", trigger="cli", period="2026-12",
                now=datetime(2026, 12, 1), dry_run=False, status="running", started_at=datetime(2026, 12, 1),
            )
            body = assert_json_error(client.get(URL, headers=AUTH), 409)
            assert body["runId"] == "11111111-2222-3333-4444-555555555555"
            assert body["startedAt"].startswith("2026-12-01T00:00:00")
    # Once the lock is free the next run marks the dead one abandoned and goes on.
    assert client.get(URL, headers=AUTH).status_code == 200
    old = client.get(f"{URL}/runs/11111111-2222-3333-4444-555555555555", headers=AUTH).get_json()
    assert old["status"] == "abandoned"


UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


@pytest.mark.parametrize("method, path", [("GET", URL), ("POST", URL + "/"), ("GET", URL + "/runs/latest"),
                                          ("GET", URL + "/runs/11111111-2222-3333-4444-555555555555")])
def test_unreachable_database_gets_503(make_app, method, path):
    app = make_app({"SQLALCHEMY_DATABASE_URI": UNREACHABLE}, migrate=False)
    response = app.test_client().open(path, method=method, headers=AUTH)
    body = assert_json_error(response, 503)
    assert body["error"] == "database_unavailable"
    assert "127.0.0.1" not in body["message"]  # nothing about the infrastructure leaks


def test_unreachable_database_still_checks_credentials_first(make_app):
    app = make_app({"SQLALCHEMY_DATABASE_URI": UNREACHABLE}, migrate=False)
    response = app.test_client().get(URL, headers={"Authorization": basic(USERNAME, "wrong")})
    assert_json_error(response, 401)


# --- property-based -----------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_client(tmp_path_factory):
    """One SQLite app for every Hypothesis example (an empty, migrated database)."""
    path = tmp_path_factory.mktemp("http_properties") / "credits.sqlite"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(credits_service, "load_dotenv", lambda: None)
        for name, value in PRICES.items():
            patch.setenv(name, value)
        app = create_app({
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}",
            "CRON_JOBS_USERNAME": USERNAME,
            "CRON_JOBS_PASSWORD": PASSWORD,
            # Hundreds of failed logins from one address: the rate limit is not what is tested here.
            "AUTH_FAILURE_LIMIT_ENABLED": False,
        })
    with app.app_context():
        flask_migrate.upgrade()
    yield app.test_client()
    with app.app_context():
        db.engine.dispose()


RIGHT = f"{USERNAME}:{PASSWORD}".encode()


def carries_right_credentials(header):
    """Our own reading of RFC 7617: scheme Basic, strict base64 of user:password."""
    match = re.fullmatch(r"[ \t]*[Bb][Aa][Ss][Ii][Cc] [ \t]*([A-Za-z0-9+/=]*)[ \t]*", header)
    if not match:
        return False
    try:
        return base64.b64decode(match.group(1), validate=True) == RIGHT
    except binascii.Error:
        return False


HEADER_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF) | st.just("\t")
header_text = st.text(HEADER_CHARS, max_size=80)
random_bytes = st.binary(max_size=60)
near_credentials = st.builds(
    lambda user, sep, password: user + sep + password,
    st.sampled_from([USERNAME.encode(), b"", USERNAME.upper().encode(), USERNAME.encode() + b" "]),
    st.sampled_from([b":", b"", b"::", b" :"]),
    st.sampled_from([PASSWORD.encode(), b"", PASSWORD.encode()[:-1], PASSWORD.encode() + b"\x00",
                     PASSWORD.upper().encode(), PASSWORD.encode().split(b":")[0]]),
) | random_bytes.map(lambda raw: RIGHT + raw) | random_bytes
encoded = st.builds(
    lambda raw, strip: base64.b64encode(raw).decode().rstrip("=" if strip else ""),
    near_credentials,
    st.booleans(),
)
authorization_values = st.one_of(
    header_text,
    st.builds(lambda scheme, space, token: scheme + space + token,
              st.sampled_from(["Basic", "basic", "BASIC", "Bearer", "Digest", "", "Basic:", "Basi"]),
              st.sampled_from([" ", "  ", "", "\t", " \t"]),
              encoded | header_text),
    encoded,
    st.builds(lambda token, junk: "Basic " + token + junk, encoded, header_text),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=authorization_values)
@example(header=GOOD)
@example(header="  bAsIc \t" + GOOD.split()[1] + "\t ")
@example(header="Bearer " + GOOD.split()[1])
@example(header=GOOD + "\x00")
def test_random_authorization_never_500_and_200_only_with_the_right_credentials(sqlite_client, header):
    response = sqlite_client.get(URL + "?dryRun=true", headers={"Authorization": header})
    assert response.status_code in (200, 401), (header, response.status_code)
    assert response.mimetype == "application/json"
    assert (response.status_code == 200) == carries_right_credentials(header), header
    if response.status_code == 401:
        assert response.headers["WWW-Authenticate"].startswith("Basic")


QUERY_CHARS = st.sampled_from(list(string.ascii_letters + string.digits + "=&%;+?/.-_ ~!$'()*,:@[]") + ["%00", "%ff"])
query_strings = st.one_of(
    st.lists(QUERY_CHARS, max_size=40).map("".join),
    st.lists(
        st.tuples(st.sampled_from(["dryRun", "dryrun", "DryRun", "", "x", "dryRun[]"]),
                  st.sampled_from(["true", "false", "1", "0", "", "TRUE", "maybe", "%00", "t r u e"])),
        max_size=3,
    ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=query_strings)
@example(query="dryRun=true")
@example(query="dryRun=%00")
def test_random_query_strings_never_500(sqlite_client, query):
    response = sqlite_client.get(URL + "?" + query, headers=AUTH)
    assert response.status_code in (200, 400), (query, response.status_code, response.data)
    assert response.mimetype == "application/json"
    if response.status_code == 400:
        assert response.get_json()["error"] == "bad_request"
    else:
        assert ordered(response)[:4] == MKSAAS_KEYS


# --- 500: the run failed as a whole ----------------------------------------------


def test_failed_run_is_500_json_recorded_and_releases_the_lock(client, world, monkeypatch):
    users = free_users(world, 2)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(credits_service.runs, "distribute", broken)
    response = client.get(URL, headers={**AUTH, "X-Request-Id": "will-fail"})
    body = assert_json_error(response, 500)
    assert body["error"] == "run_failed"
    run = client.get(f"{URL}/runs/{body['runId']}", headers=AUTH).get_json()
    assert run["status"] == "failed"
    assert run["requestId"] == "will-fail"
    assert "boom" in run["error"]

    monkeypatch.undo()
    response = client.get(URL, headers=AUTH)
    assert response.status_code == 200, response.data
    assert [world.balance(user) for user in users] == [50, 50]


def test_failure_while_recording_the_start_releases_the_lock(client, world, monkeypatch):
    free_users(world, 1)

    def broken(*args, **kwargs):
        raise RuntimeError("cannot record")

    monkeypatch.setattr(credits_service.runs, "_record_start", broken)
    # As in production: an unexpected error becomes a JSON 500, not a raise.
    client.application.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.get(URL, headers=AUTH)
    assert_json_error(response, 500)
    monkeypatch.undo()
    # Not 409: the lock taken before the failure was given back.
    response = client.get(URL, headers=AUTH)
    assert response.status_code == 200, response.data
