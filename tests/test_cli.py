"""``flask credits distribute`` and ``flask credits verify`` (SPEC section 5b)."""

import json
from datetime import datetime, timedelta

import pytest

import credits_service.runs
from credits_service.extensions import db
from credits_service.run_lock import run_lock
from credits_service.runs import find_run

from .world import World

NOW = "2026-12-01T00:05:00Z"
NOW_DB = datetime(2026, 12, 1, 0, 5)


def distribute(runner, *options):
    return runner.invoke(args=["credits", "distribute", "--now", NOW, *options])


def verify(runner):
    return runner.invoke(args=["credits", "verify"])


def latest_run(app):
    with app.app_context():
        return find_run()


def test_distribute_prints_the_summary_and_exits_0(world, runner):
    free = world.user()
    yearly = world.user()
    world.subscription(yearly, "price_pro_yearly")
    world.give(free, 30, expires=NOW_DB - timedelta(days=1))

    result = distribute(runner)

    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert list(answer)[:4] == ["message", "usersCount", "processedCount", "errorCount"]
    assert answer["message"] == "distribute credits success, users: 2, processed: 2, errors: 0"
    assert answer["period"] == "2026-12"
    assert answer["dryRun"] is False
    assert answer["granted"] == {"MONTHLY_REFRESH": 1, "SUBSCRIPTION_RENEWAL": 1, "LIFETIME_MONTHLY": 0}
    assert answer["expired"] == {"usersCount": 1, "credits": 30, "clampedUsers": 0}
    assert world.balance(free) == 50
    assert world.balance(yearly) == 1000
    assert world.rows(free, "MONTHLY_REFRESH")[0]["created_at"] == NOW_DB
    assert world.drift() == []


@pytest.mark.parametrize(
    "now, period, stored",
    [
        ("2026-12-01T00:05:00", "2026-12", datetime(2026, 12, 1, 0, 5)),  # no offset: UTC
        ("2026-12-01T07:30:00+08:00", "2026-11", datetime(2026, 11, 30, 23, 30)),
        ("2026-11-30T23:30:00-01:00", "2026-12", datetime(2026, 12, 1, 0, 30)),
    ],
    ids=["naive-is-utc", "east-of-utc", "west-of-utc"],
)
def test_distribute_takes_now_with_or_without_offset(world, runner, now, period, stored):
    user = world.user()

    result = runner.invoke(args=["credits", "distribute", "--now", now])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["period"] == period
    [row] = world.rows(user, "MONTHLY_REFRESH")
    assert row["created_at"] == stored
    assert world.drift() == []


def test_distribute_uses_the_configured_time_zone(make_app):
    app = make_app({"CREDITS_TIMEZONE": "Asia/Shanghai"})
    with app.app_context():
        world = World(db.engine, app)
        user = world.user()

        result = app.test_cli_runner().invoke(args=["credits", "distribute", "--now", "2026-11-30T23:30:00Z"])

        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["period"] == "2026-12"
        assert [row["period_key"] for row in world.rows(user, "MONTHLY_REFRESH")] == [202612]


def test_distribute_exits_1_when_a_user_failed(world, runner):
    users = [world.user() for _ in range(4)]
    world.fail_inserts_for("user-0002")

    result = distribute(runner)

    assert result.exit_code == 1, result.output
    answer = json.loads(result.stdout)
    assert answer["errorCount"] == 1
    assert answer["processedCount"] == 3
    assert [failed["userId"] for failed in answer["failedUsers"]] == ["user-0002"]
    assert [world.balance(user) for user in users] == [50, None, 50, 50]
    assert world.drift() == []
    run = latest_run(world.app)
    assert run["status"] == "succeeded"
    assert run["summary"]["errorCount"] == 1


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01T00:00:00Z", "", "2026-12-01T25:00"])
def test_distribute_exits_2_on_a_bad_now(world, runner, bad):
    world.user()
    before = world.counts()

    result = runner.invoke(args=["credits", "distribute", "--now", bad])

    assert result.exit_code == 2, result.output
    assert "ISO 8601" in result.output
    assert result.stdout == ""
    assert world.counts() == before
    assert latest_run(world.app) is None


def test_distribute_exits_2_on_an_unknown_option(world, runner):
    result = runner.invoke(args=["credits", "distribute", "--now", NOW, "--users", "3"])
    assert result.exit_code == 2
    assert latest_run(world.app) is None


def test_dry_run_writes_nothing(world, runner):
    free = world.user()
    expiring = world.user()
    world.give(expiring, 30, expires=NOW_DB)
    lifetime = world.user()
    world.purchase(lifetime, "price_lifetime")
    world.user(banned=True)
    before = world.counts()

    dry = distribute(runner, "--dry-run")

    assert dry.exit_code == 0, dry.output
    dry_answer = json.loads(dry.stdout)
    assert dry_answer["dryRun"] is True
    assert dry_answer["granted"] == {"MONTHLY_REFRESH": 2, "SUBSCRIPTION_RENEWAL": 0, "LIFETIME_MONTHLY": 1}
    assert world.counts() == before
    assert world.balance(free) is None
    assert latest_run(world.app)["dryRun"] is True

    real = distribute(runner)

    assert real.exit_code == 0, real.output
    real_answer = json.loads(real.stdout)
    assert world.counts() != before
    details = ("runId", "dryRun", "durationMs")
    assert {k: v for k, v in dry_answer.items() if k not in details} == {
        k: v for k, v in real_answer.items() if k not in details
    }
    assert world.drift() == []


def test_verify_exits_0_after_a_run(world, runner):
    for _ in range(3):
        world.user()
    world.give("user-0001", 30, expires=NOW_DB)
    assert distribute(runner).exit_code == 0

    result = verify(runner)

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "ledger in balance" in result.stderr


def test_verify_exits_1_and_names_the_users_out_of_balance(world, runner):
    users = [world.user() for _ in range(3)]
    assert distribute(runner).exit_code == 0
    world.add_balance(users[1], 7)  # no grant behind these credits
    world.give(users[2], 20, balance=False)  # a grant the balance never got

    result = verify(runner)

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(users[1] + "\t")
    assert "drift +7" in lines[0]
    assert lines[1].startswith(users[2] + "\t")
    assert "drift -20" in lines[1]
    assert users[0] not in result.stdout
    assert "2 user(s) out of balance" in result.stderr


def test_verify_reports_grants_without_a_balance_row(world, runner):
    user = world.user()
    world.give(user, 15, balance=False)

    result = verify(runner)

    assert result.exit_code == 1
    assert result.stdout.startswith(f"{user}\tbalance 0\tgrants hold 15")


def test_the_run_is_recorded_in_the_history(world, runner):
    world.user()

    result = distribute(runner)

    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    run = latest_run(world.app)
    assert run["runId"] == answer["runId"]
    assert run["status"] == "succeeded"
    assert run["trigger"] == "cli"
    assert run["period"] == "2026-12"
    assert run["dryRun"] is False
    assert run["summary"] == answer
    assert run["error"] is None
    assert run["finishedAt"] is not None
    with world.app.app_context():
        assert find_run(answer["runId"]) == run


def test_a_run_that_fails_as_a_whole_is_recorded_as_failed(world, runner, monkeypatch):
    world.user()

    def broken(*args, **kwargs):
        raise RuntimeError("the job broke")

    monkeypatch.setattr(credits_service.runs, "distribute", broken)

    result = distribute(runner)

    assert result.exit_code == 1
    answer = json.loads(result.stderr)
    assert answer["error"] == "run_failed"
    run = latest_run(world.app)
    assert run["runId"] == answer["runId"]
    assert run["status"] == "failed"
    assert "the job broke" in run["error"]


def test_a_second_run_while_one_holds_the_lock_is_refused(world, runner):
    world.user()
    with run_lock(world.engine):
        result = distribute(runner)

    assert result.exit_code == 1
    assert json.loads(result.stderr)["error"] == "run_in_progress"
    assert world.balance("user-0001") is None

    assert distribute(runner).exit_code == 0
    assert world.balance("user-0001") == 50


def test_progress_is_logged_when_not_on_a_terminal(caplog):
    import io
    import logging

    from credits_service.progress import Progress

    caplog.set_level(logging.INFO, logger="credits_service.progress")
    with Progress(10, stream=io.StringIO()) as progress:
        progress(4)
        progress(6)
    assert "progress: 10 of 10 users" in caplog.text
