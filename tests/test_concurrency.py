"""Never twice, never lost (SPEC section 4, Concurrency and Crash).

Real PostgreSQL, real processes and threads: gunicorn workers answering
simultaneous calls, two distributor processes with no lock between them, a
consumer hammering balances during a run, ``kill -9`` mid-run, and the
database vanishing in the middle of a run.
"""

import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flask_migrate
import pytest
import sqlalchemy as sa

from credits_service import create_app, demo
from credits_service.distributor import distribute
from credits_service.extensions import db
from credits_service.ledger import find_drift
from credits_service.period import Period

from .conftest import PASSWORD, PRICES, USERNAME

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def service_env(url, **extra):
    env = dict(os.environ, DATABASE_URL=url, CRON_JOBS_USERNAME=USERNAME, CRON_JOBS_PASSWORD=PASSWORD, **PRICES)
    env.update({name: str(value) for name, value in extra.items()})
    return env


def populated(url, users, now, seed=7):
    """Migrate the database at ``url`` and seed ``users`` demo users."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    with app.app_context():
        flask_migrate.upgrade()
        demo.seed(db.engine, app.extensions["credits_plans"], users=users, seed=seed, now=now)
    return app


def grant_rows_per_user(engine, period_key):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT user_id, type, count(*) FROM credit_transaction "
                "WHERE period_key = :key GROUP BY user_id, type"
            ),
            {"key": period_key},
        ).all()


def entitled_users(app, now):
    """How many users a dry run says are to be granted: the expected total."""
    with app.app_context():
        summary = distribute(db.engine, app.extensions["credits_plans"], now, dry_run=True, batch_size=500)
    return sum(summary.granted.values())


def drift(engine):
    with engine.connect() as conn:
        return list(find_drift(conn))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url, path="/api/distribute-credits"):
    token = b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(url + path, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def gunicorn(pg_url):
    processes = []

    def start(workers=4, **env):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT,
            env=service_env(pg_url, **env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        processes.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(base + "/api/distribute-credits", timeout=1)
            except urllib.error.HTTPError:
                return base  # answered (401): the workers are up
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not start: {process.stderr.read1().decode()}")

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


def test_simultaneous_calls_grant_once(pg_url, gunicorn):
    now = datetime.now(UTC)
    app = populated(pg_url, 3000, now - timedelta(minutes=1))
    expected = entitled_users(app, now)
    already = len(grant_rows_per_user(sa.create_engine(pg_url), Period.containing(now).key))
    base = gunicorn(workers=4, CREDITS_BATCH_SIZE=50)

    start = threading.Barrier(8)
    answers = []

    def caller():
        start.wait()
        answers.append(call(base))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    statuses = sorted(status for status, _ in answers)
    assert set(statuses) <= {200, 409}, answers
    assert 409 in statuses  # the calls really overlapped
    granted = [sum(body["granted"].values()) for status, body in answers if status == 200]
    assert sorted(granted)[-1] == expected and sum(granted) == expected
    for status, body in answers:
        if status == 409:
            assert body["error"] == "run_in_progress"
        else:
            assert body["errorCount"] == 0

    print(f"\n8 calls to 4 gunicorn workers: statuses {statuses}, grants {granted}, expected {expected}")
    with app.app_context():
        engine = db.engine
        rows = grant_rows_per_user(engine, Period.containing(now).key)
        assert len(rows) == already + expected
        assert {count for _, _, count in rows} == {1}
        assert drift(engine) == []


def _bypass_lock_worker(url, now_iso, barrier, results):
    os.environ.update(PRICES)
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    with app.app_context():
        barrier.wait()
        summary = distribute(
            db.engine, app.extensions["credits_plans"], datetime.fromisoformat(now_iso), batch_size=20
        )
        results.put(summary.as_json())


def test_two_runs_without_the_lock_still_grant_once(pg_url):
    now = datetime.now(UTC)
    app = populated(pg_url, 2000, now - timedelta(minutes=1))
    expected = entitled_users(app, now)
    already = len(grant_rows_per_user(sa.create_engine(pg_url), Period.containing(now).key))

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_bypass_lock_worker, args=(pg_url, now.isoformat(), barrier, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    summaries = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    assert [summary["errorCount"] for summary in summaries] == [0, 0]
    granted = [sum(summary["granted"].values()) for summary in summaries]
    print(f"\ntwo unlocked runs: granted {granted}, counted already granted "
          f"{[summary['skipped']['alreadyGranted'] for summary in summaries]}, expected {expected}")
    assert sum(granted) == expected
    # What one run granted, the other counted as already granted: nothing lost.
    for mine, theirs in (summaries, summaries[::-1]):
        assert mine["skipped"]["alreadyGranted"] >= sum(theirs["granted"].values())
    with app.app_context():
        rows = grant_rows_per_user(db.engine, Period.containing(now).key)
        assert len(rows) == already + expected and {count for _, _, count in rows} == {1}
        assert drift(db.engine) == []


def _consume(engine, user_id, amount):
    """Spend credits the way a host app does: oldest-expiring grants first, atomically."""
    with engine.begin() as conn:
        grants = conn.execute(
            sa.text(
                "SELECT id, remaining_amount FROM credit_transaction "
                "WHERE user_id = :user AND type NOT IN ('USAGE', 'EXPIRE') AND remaining_amount > 0 "
                "AND (expiration_date IS NULL OR expiration_date > now() AT TIME ZONE 'UTC') "
                "ORDER BY expiration_date NULLS LAST, id FOR UPDATE"
            ),
            {"user": user_id},
        ).all()
        if sum(remaining for _, remaining in grants) < amount:
            return 0
        left = amount
        for grant_id, remaining in grants:
            take = min(left, remaining)
            conn.execute(
                sa.text("UPDATE credit_transaction SET remaining_amount = remaining_amount - :take WHERE id = :id"),
                {"take": take, "id": grant_id},
            )
            left -= take
            if not left:
                break
        conn.execute(
            sa.text(
                "INSERT INTO credit_transaction (id, user_id, type, description, amount, created_at, updated_at) "
                "VALUES (:id, :user, 'USAGE', 'test usage', :amount, now(), now())"
            ),
            {"id": str(uuid.uuid4()), "user": user_id, "amount": -amount},
        )
        conn.execute(
            sa.text("UPDATE user_credit SET current_credits = current_credits - :amount WHERE user_id = :user"),
            {"amount": amount, "user": user_id},
        )
    return amount


def _consumer_worker(url, user_ids, stop, consumed, seed):
    engine = sa.create_engine(url)
    rng = random.Random(seed)
    total = calls = 0
    while not stop.is_set() and calls < 20000:
        calls += 1
        try:
            total += _consume(engine, rng.choice(user_ids), rng.randint(1, 5))
        except sa.exc.OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != "40P01":
                raise
    consumed.put((calls, total))
    engine.dispose()


def total_credits(engine):
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT coalesce(sum(current_credits), 0) FROM user_credit"))


def test_consumer_during_a_run_loses_no_update(pg_url):
    now = datetime.now(UTC)
    app = populated(pg_url, 4000, now - timedelta(minutes=1))
    with app.app_context():
        engine = db.engine
        with engine.connect() as conn:
            user_ids = conn.scalars(sa.text('SELECT id FROM "user" ORDER BY id')).all()
        before = total_credits(engine)

        context = multiprocessing.get_context("spawn")
        stop, consumed = context.Event(), context.Queue()
        consumers = [
            context.Process(target=_consumer_worker, args=(db.engine.url.render_as_string(False), user_ids, stop, consumed, n))
            for n in range(2)
        ]
        for consumer in consumers:
            consumer.start()
        time.sleep(1)
        summary = distribute(engine, app.extensions["credits_plans"], now, batch_size=50)
        time.sleep(0.5)
        stop.set()
        results = [consumed.get(timeout=120) for _ in consumers]
        for consumer in consumers:
            consumer.join(timeout=60)
            assert consumer.exitcode == 0

        calls = sum(c for c, _ in results)
        spent = sum(s for _, s in results)
        print(f"\nconsumers: {calls} calls spent {spent} credits during a run that expired "
              f"{summary.expired_credits} credits of {summary.expired_users} users")
        assert calls > 1000, "the consumers barely ran: the test proved nothing"
        with engine.connect() as conn:
            granted = conn.scalar(
                sa.text(
                    "SELECT coalesce(sum(amount), 0) FROM credit_transaction "
                    "WHERE period_key = :key AND created_at = :now"
                ),
                {"key": Period.containing(now).key, "now": now.replace(tzinfo=None)},
            )
        assert summary.errors == 0
        assert summary.clamped_users == 0
        assert total_credits(engine) == before + granted - spent - summary.expired_credits
        assert drift(engine) == []


def test_kill_9_mid_run_then_the_next_run_finishes(pg_url):
    now = datetime.now(UTC)
    app = populated(pg_url, 6000, now - timedelta(minutes=1))
    expected = entitled_users(app, now)
    period_key = Period.containing(now).key
    engine = sa.create_engine(pg_url)
    already = len(grant_rows_per_user(engine, period_key))

    def granted_so_far():
        with engine.connect() as conn:
            return conn.scalar(
                sa.text("SELECT count(*) FROM credit_transaction WHERE period_key = :key"), {"key": period_key}
            ) - already

    run = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "credits", "distribute"],
        cwd=ROOT,
        env=service_env(pg_url, CREDITS_BATCH_SIZE=20),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while granted_so_far() < expected // 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    partial = granted_so_far()
    print(f"\nkill -9 after {partial} of {expected} grants")
    assert 0 < partial < expected, "the kill did not land in the middle of the run"
    assert drift(engine) == []  # every committed batch is whole

    finish = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "credits", "distribute"],
        cwd=ROOT, env=service_env(pg_url), capture_output=True, text=True, timeout=300,
    )
    assert finish.returncode == 0, finish.stderr
    summary = json.loads(finish.stdout)
    assert sum(summary["granted"].values()) == expected - partial
    rows = grant_rows_per_user(engine, period_key)
    assert len(rows) == already + expected and {count for _, _, count in rows} == {1}
    assert drift(engine) == []
    with engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT status FROM credits_service_run ORDER BY started_at")).scalars().all()
    assert statuses == ["abandoned", "succeeded"]
    engine.dispose()


class FlakyProxy:
    """A TCP proxy to PostgreSQL that the test can cut, like a lost network."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.open.clear()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sockets = []

    def close(self):
        self.cut()
        self.listener.close()


def test_database_lost_at_start_and_mid_run(pg_url):
    now = datetime.now(UTC)
    app = populated(pg_url, 3000, now - timedelta(minutes=1))
    expected = entitled_users(app, now)
    real = sa.engine.make_url(pg_url)
    proxy = FlakyProxy(real.port or 5432)
    via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    engine = sa.create_engine(pg_url)
    try:
        app = create_app({"SQLALCHEMY_DATABASE_URI": via_proxy, "TESTING": True, "CREDITS_BATCH_SIZE": 20,
                          "CRON_JOBS_USERNAME": USERNAME, "CRON_JOBS_PASSWORD": PASSWORD})
        client = app.test_client()
        auth = {"Authorization": "Basic " + b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()}

        response = client.get("/api/distribute-credits", headers=auth)
        assert response.status_code == 503 and response.is_json
        assert response.get_json()["error"] == "database_unavailable"

        proxy.open.set()
        period_key = Period.containing(now).key
        seeded = len(grant_rows_per_user(engine, period_key))
        cutter = threading.Thread(target=_cut_when_granting, args=(engine, period_key, proxy))
        cutter.start()
        time.sleep(0.5)  # let the cutter count the seeded grants first
        response = client.get("/api/distribute-credits", headers=auth)
        cutter.join()
        assert response.status_code == 500 and response.is_json, response.data
        assert response.get_json()["error"] == "run_failed"
        assert drift(engine) == []  # no partial batch
        granted_before_the_cut = len(grant_rows_per_user(engine, period_key)) - seeded
        assert 100 <= granted_before_the_cut < expected  # cut in the middle, committed work kept

        proxy.open.set()
        with app.app_context():
            db.engine.dispose()
        response = client.get("/api/distribute-credits", headers=auth)
        assert response.status_code == 200, response.data
        assert sum(response.get_json()["granted"].values()) == expected - granted_before_the_cut
        rows = grant_rows_per_user(engine, period_key)
        assert len(rows) == seeded + expected
        assert {count for _, _, count in rows} == {1}
        assert drift(engine) == []
        with engine.connect() as conn:
            statuses = conn.execute(
                sa.text("SELECT status FROM credits_service_run ORDER BY started_at")
            ).scalars().all()
        assert statuses[-1] == "succeeded" and statuses[0] in ("failed", "abandoned")
    finally:
        proxy.close()
        engine.dispose()


def _cut_when_granting(engine, period_key, proxy):
    """Cut the proxy once the run has committed its first hundred grants."""

    def grants():
        with engine.connect() as conn:
            return conn.scalar(
                sa.text("SELECT count(*) FROM credit_transaction WHERE period_key = :key"), {"key": period_key}
            )

    seeded = grants()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if grants() - seeded >= 100:
            proxy.cut()
            return
        time.sleep(0.02)


def test_parallel_shard_processes_cover_every_user_once(pg_url):
    now = datetime.now(UTC)
    app = populated(pg_url, 3000, now - timedelta(minutes=1))
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        examined = conn.scalar(sa.text(
            'SELECT count(*) FROM "user" WHERE banned IS NOT TRUE OR (ban_expires IS NOT NULL AND ban_expires <= :now)'
        ), {"now": now.replace(tzinfo=None)})
    expected = entitled_users(app, now)
    env = service_env(pg_url, CREDITS_BATCH_SIZE=100)
    shards = [
        subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "credits", "distribute", "--shard", f"{k}/3"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for k in (1, 2, 3)
    ]
    summaries = []
    for process in shards:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        summaries.append(json.loads(out))

    assert sum(summary["usersCount"] for summary in summaries) == examined
    assert sum(sum(summary["granted"].values()) for summary in summaries) == expected
    assert all(summary["errorCount"] == 0 for summary in summaries)
    rows = grant_rows_per_user(engine, Period.containing(now).key)
    assert {count for _, _, count in rows} == {1}
    with engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT shard, status FROM credits_service_run ORDER BY shard")).all()
    assert [tuple(row) for row in statuses] == [("1/3", "succeeded"), ("2/3", "succeeded"), ("3/3", "succeeded")]
    assert drift(engine) == []
    engine.dispose()
