"""Runs that outgrow one call: background runs and shards."""

import time
from base64 import b64encode

import pytest

from credits_service.extensions import db
from credits_service.run_lock import LockBusy, run_lock
from credits_service.shards import Shard, shard_index

from .conftest import PASSWORD, USERNAME

AUTH = {"Authorization": "Basic " + b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()}
URL = "/api/distribute-credits"


def test_async_run_answers_202_and_finishes_in_the_background(client, world):
    users = [world.user() for _ in range(7)]

    response = client.get(URL + "?async=true", headers=AUTH)

    assert response.status_code == 202
    body = response.get_json()
    assert response.headers["Location"] == body["statusUrl"] == f"{URL}/runs/{body['runId']}"
    deadline = time.monotonic() + 30
    while True:
        run = client.get(response.headers["Location"], headers=AUTH).get_json()
        if run["status"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert run["status"] == "succeeded"
    assert run["summary"]["granted"]["MONTHLY_REFRESH"] == len(users)
    assert all(world.balance(user) == 50 for user in users)
    assert world.drift() == []


@pytest.mark.parametrize("bad", ["0/3", "4/3", "1/0", "x", "1/3/5", "-1/3", "1/99999"])
def test_bad_shards_are_refused(client, world, bad):
    world.user()
    before = world.counts()
    response = client.get(URL, query_string={"shard": bad}, headers=AUTH)
    assert response.status_code == 400 and "shard" in response.get_json()["message"]
    assert world.counts() == before


def test_shards_split_the_users_exactly(client, world):
    users = [world.user() for _ in range(40)]
    counted = []
    for number in (1, 2, 3):
        response = client.get(URL, query_string={"shard": f"{number}/3"}, headers=AUTH)
        assert response.status_code == 200
        summary = response.get_json()
        counted.append(summary["usersCount"])
        expected = [user for user in users if shard_index(user, 3) == number - 1]
        assert summary["usersCount"] == len(expected) > 0
        assert all(world.balance(user) == 50 for user in expected)
    assert sum(counted) == len(users)
    assert all(len(world.rows(user, "MONTHLY_REFRESH")) == 1 for user in users)
    assert world.drift() == []
    latest = client.get(URL + "/runs/latest", headers=AUTH).get_json()
    assert latest["shard"] == "3/3"


def test_shard_locks_exclude_the_whole_run_but_not_each_other(app):
    with app.app_context():
        engine = db.engine
        with run_lock(engine, Shard(1, 2)):
            with pytest.raises(LockBusy):
                with run_lock(engine):
                    pass
            with pytest.raises(LockBusy):
                with run_lock(engine, Shard(1, 2)):
                    pass
            with run_lock(engine, Shard(2, 2)):
                pass
        with run_lock(engine):
            with pytest.raises(LockBusy):
                with run_lock(engine, Shard(2, 2)):
                    pass


def test_shards_of_another_count_wait_for_each_other(app):
    with app.app_context():
        engine = db.engine
        with run_lock(engine, Shard(1, 2)):
            with run_lock(engine, Shard(2, 2)):  # same count: side by side
                with pytest.raises(LockBusy):
                    with run_lock(engine, Shard(1, 3)):
                        pass
        with run_lock(engine, Shard(1, 3)):  # once the others are done, fine
            pass
