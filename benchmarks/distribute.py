"""Benchmark the daily job against a hand-written set-based SQL floor.

    python benchmarks/distribute.py --users 100000 \\
        --database-url postgresql://postgres@127.0.0.1:5432/t_bench [--batch-size 5000] [--workers 2] [--keep]

SPEC section 7 asks the job to be "at least as fast as one hand-written
set-based SQL transaction doing the same job on the same data (measured side
by side)". This script is that measurement:

1. creates two fresh databases (PostgreSQL: ``<name>_bench`` and
   ``<name>_bench_floor`` next to the URL's database; SQLite: temp files),
   migrates both and seeds both with the same demo population at a fixed
   ``now`` (``credits_service.demo``; same seed, so the same rows);
2. times one full run of ``distributor.distribute`` on the first, in a child
   process so that its peak memory is the run's and not the seeding's, and
   counts the SQL statements it issues;
3. times the floor (``FloorScript``) on the second;
4. checks both: the ledger invariant holds, and the grants and expiries
   match what the population implies (the demo's own counts, and a count
   taken from the database before the run); exits non-zero if not;
5. times a second run an hour later (same month: nothing to grant);
6. prints one line per figure, then all figures as one JSON object, and
   drops the databases unless ``--keep``.
"""

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask_migrate  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from credits_service import create_app, demo  # noqa: E402
from credits_service.config import database_uri  # noqa: E402
from credits_service.distributor import distribute  # noqa: E402
from credits_service.extensions import db  # noqa: E402
from credits_service.ledger import find_drift  # noqa: E402
from credits_service.models import LIFETIME_MONTHLY, MONTHLY_REFRESH, RECURRING_GRANTS, SUBSCRIPTION_RENEWAL  # noqa: E402
from credits_service.period import Period, utc_naive  # noqa: E402

NOW = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)  # the first run of a month: everything is due
LATER = NOW + timedelta(hours=1)  # the same month: nothing left to grant
SEED = 1
DEMO_PRICES = {
    "NEXT_PUBLIC_STRIPE_PRICE_PRO_MONTHLY": "price_demo_pro_monthly",
    "NEXT_PUBLIC_STRIPE_PRICE_PRO_YEARLY": "price_demo_pro_yearly",
    "NEXT_PUBLIC_STRIPE_PRICE_LIFETIME": "price_demo_lifetime",
}


class BenchmarkFailed(Exception):
    """A check failed: the figures of a wrong run mean nothing."""


def main(argv=None):
    args = parse_args(argv)
    for name, value in DEMO_PRICES.items():
        os.environ.setdefault(name, value)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.child:
        return child_run(args)
    databases = Databases(database_uri(args.database_url), keep=args.keep)
    try:
        figures = benchmark(args, databases)
    except BenchmarkFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        databases.drop_all()
    print_figures(figures)
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, required=True, help="how many demo users to seed")
    parser.add_argument("--database-url", required=True,
                        help="PostgreSQL URL (the benchmark databases are created next to it) or any sqlite URL")
    parser.add_argument("--batch-size", type=int, default=5000, help="users per batch of the job (default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="batches run at once (default 2; SQLite: 1)")
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the databases it created")
    # Internal: one timed run of the job, in a fresh process (see child_run).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--now", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# Databases ----------------------------------------------------------------------


class Databases:
    """The fresh databases of one benchmark, and their removal."""

    def __init__(self, url, keep):
        self.url = sa.engine.make_url(url)
        self.keep = keep
        self.created = []
        self.tempdir = None

    @property
    def dialect(self):
        return self.url.get_backend_name()

    def create(self, suffix):
        """A new empty database; its URL as a string."""
        if self.dialect == "sqlite":
            self.tempdir = self.tempdir or tempfile.mkdtemp(prefix="credits_bench_")
            path = Path(self.tempdir) / f"{suffix}.sqlite"
            self.created.append(path)
            return f"sqlite:///{path}"
        name = f"{self.url.database}_{suffix}"
        with self.admin() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    def admin(self):
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        return engine.connect()

    def drop_all(self):
        if self.keep:
            if self.created:
                print(f"kept: {', '.join(map(str, self.created))}", file=sys.stderr)
            return
        if self.dialect == "sqlite":
            if self.tempdir:
                shutil.rmtree(self.tempdir, ignore_errors=True)
            return
        with self.admin() as conn:
            for name in self.created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_app(url):
    """The service as it runs in production, on ``url`` (engine settings included)."""
    return create_app({"SQLALCHEMY_DATABASE_URI": url, "CRON_JOBS_USERNAME": "bench", "CRON_JOBS_PASSWORD": "bench"})


def prepare(url, users, seed):
    """Migrate and seed a fresh database; return the demo's counts and seconds."""
    app = make_app(url)
    with app.app_context():
        flask_migrate.upgrade()
        started = time.perf_counter()
        counts = demo.seed(db.engine, app.extensions["credits_plans"], users=users, seed=seed, now=NOW,
                           zone=app.config["CREDITS_TIMEZONE"])
        seconds = time.perf_counter() - started
        db.engine.dispose()
    return counts, seconds


# Measuring ----------------------------------------------------------------------


class StatementCounter:
    """Counts statements sent to the database (an executemany counts once)."""

    def __init__(self, engine):
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self.seen)

    def seen(self, *_):
        self.count += 1


def rss_mb():
    """Resident memory now, from /proc (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def peak_rss_mb():
    """Peak resident memory of this process image.

    /proc's VmHWM rather than getrusage: Linux carries ru_maxrss across
    exec, so a child would report its parent's peak at fork time.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def timed_run(url, now, batch_size, workers):
    """One run of the job in a fresh Python process; its figures as a dict.

    A fresh process, because this one has just generated the whole demo
    population: its peak RSS says nothing about the job's memory.
    """
    command = [sys.executable, __file__, "--child", "--database-url", url, "--users", "0",
               "--now", now.isoformat(), "--batch-size", str(batch_size), "--workers", str(workers)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise BenchmarkFailed(f"the timed run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_run(args):
    app = make_app(args.database_url)
    with app.app_context():
        engine = db.engine
        with engine.connect():
            pass  # a warm pool, as in a long-running service
        counter = StatementCounter(engine)
        before = rss_mb()
        started = time.perf_counter()
        summary = distribute(engine, app.extensions["credits_plans"], datetime.fromisoformat(args.now),
                             zone=app.config["CREDITS_TIMEZONE"], batch_size=args.batch_size,
                             workers=args.workers)
        seconds = time.perf_counter() - started
    print(json.dumps({
        "seconds": seconds,
        "statements": counter.count,
        "rss_before_mb": before,
        "rss_peak_mb": peak_rss_mb(),
        "summary": summary.as_json(),
    }))
    return 0


# The floor ----------------------------------------------------------------------


class FloorScript:
    """The job as one hand-written, set-based SQL transaction.

    No batches, no per-user error handling, no concurrency safety beyond the
    single transaction: the fastest the database can do the same work, which
    is the yardstick SPEC section 7 sets. It runs on PostgreSQL and SQLite
    (3.33+: UPDATE ... FROM); the few differences are in ``DIALECT``.
    """

    DIALECT = {
        "postgresql": {
            "new_id": "gen_random_uuid()::text",
            "greatest": "GREATEST",
            "on_commit": " ON COMMIT DROP",
        },
        "sqlite": {
            "new_id": "lower(hex(randomblob(16)))",
            "greatest": "MAX",
            "on_commit": "",
        },
    }

    DUE = """remaining_amount > 0 AND expiration_date_processed_at IS NULL
             AND expiration_date <= :now AND type NOT IN ('USAGE', 'EXPIRE')"""

    PRICES = """CREATE TEMP TABLE floor_price (price_id TEXT, kind TEXT, grant_type TEXT, amount INTEGER,
                        description TEXT, expiration_date TIMESTAMP){on_commit}"""

    # Step 2: one row per user owed a grant (SPEC section 4's table, then
    # "at most once per (user, type, period)").
    CLASSIFY = """
        WITH lifetime AS (
            SELECT user_id, price_id FROM (
                SELECT p.user_id, p.price_id,
                       ROW_NUMBER() OVER (PARTITION BY p.user_id ORDER BY p.created_at, p.id) AS n
                FROM payment p JOIN floor_price f ON f.price_id = p.price_id AND f.kind = 'lifetime'
                WHERE p.type = 'one_time' AND p.status = 'completed' AND p.paid = true
            ) ranked WHERE n = 1
        ), subscription AS (
            SELECT user_id, price_id FROM (
                SELECT p.user_id, p.price_id,
                       ROW_NUMBER() OVER (PARTITION BY p.user_id ORDER BY p.created_at DESC, p.id DESC) AS n
                FROM payment p
                WHERE p.type = 'subscription' AND p.status IN ('active', 'trialing')
            ) ranked WHERE n = 1
        )
        SELECT u.id AS user_id, f.grant_type, f.amount, f.description, f.expiration_date
        FROM "user" u
        LEFT JOIN lifetime l ON l.user_id = u.id
        LEFT JOIN subscription s ON s.user_id = u.id
        JOIN floor_price f ON f.price_id = COALESCE(l.price_id, s.price_id, '')
        WHERE (u.banned IS NULL OR u.banned = false OR u.ban_expires <= :now)
          AND f.grant_type IS NOT NULL
          AND NOT EXISTS (
              SELECT 1 FROM credit_transaction t
              WHERE t.user_id = u.id AND t.type = f.grant_type
                AND (t.period_key = :period_key
                     OR (t.period_key = 0 AND t.created_at >= :start AND t.created_at < :end)))"""

    LEDGER_COLUMNS = """(id, user_id, type, description, amount, remaining_amount, payment_id,
                         expiration_date, expiration_date_processed_at, created_at, updated_at, period_key)"""

    def __init__(self, conn, plans, now, zone):
        self.conn = conn
        self.plans = plans
        self.now = utc_naive(now)
        self.period = Period.containing(now, zone)
        self.sql = self.DIALECT[conn.dialect.name]

    def execute(self, statement, params=None):
        """Run ``statement`` with the dialect's fragments and typed parameters.

        Moments are bound as ``DateTime`` so that SQLite compares them in the
        same text format SQLAlchemy stored them in.
        """
        statement = statement.format(**self.sql, due=self.DUE, ledger=self.LEDGER_COLUMNS)
        typed = [sa.bindparam(name, type_=sa.DateTime) for name in ("now", "start", "end", "expiration_date")
                 if f":{name}" in statement]
        values = {"now": self.now, "start": self.period.start, "end": self.period.end,
                  "period_key": self.period.key}
        return self.conn.execute(sa.text(statement).bindparams(*typed), params if params is not None else values)

    def temp(self, name, query):
        """A temp table from ``query``, with statistics so that it is joined sensibly."""
        self.execute(f"CREATE TEMP TABLE {name}{{on_commit}} AS {query}")
        if self.conn.dialect.name == "postgresql":
            self.execute(f"ANALYZE {name}")

    def price_rows(self):
        """The plans as a table: each price id (and '' for free) and what it grants."""
        plans, label = self.plans, self.period.label

        def row(price_id, kind, grant_type, plan, description):
            credits = plan.credits
            granted = grant_type if plan.grants_credits else None
            expires = self.now + timedelta(days=credits.expire_days) if credits.expire_days else None
            return {"price_id": price_id, "kind": kind, "grant_type": granted, "amount": credits.amount,
                    "description": description.format(plan=plan.id, amount=credits.amount, label=label),
                    "expiration_date": expires}

        rows = [row(price_id, "lifetime", LIFETIME_MONTHLY, plan,
                    "Lifetime monthly credits ({plan}): {amount} for {label}")
                for price_id, plan in plans.lifetime_by_price.items()]
        rows += [row(price_id, "subscription", SUBSCRIPTION_RENEWAL if interval == "year" else None, plan,
                     "Yearly subscription credits ({plan}): {amount} for {label}")
                 for price_id, (plan, interval) in plans.subscription_by_price.items()]
        if plans.free and not plans.free.disabled:
            rows.append(row("", "free", MONTHLY_REFRESH, plans.free, "Free monthly credits: {amount} for {label}"))
        return rows

    def load_prices(self):
        self.execute(self.PRICES)
        self.execute("INSERT INTO floor_price VALUES (:price_id, :kind, :grant_type, :amount, :description, "
                     ":expiration_date)", self.price_rows())

    def expire(self):
        """Step 1: zero every due grant, one EXPIRE row per user, lower balances (not below 0)."""
        self.temp("floor_expired", """
            SELECT user_id, SUM(remaining_amount) AS credits FROM credit_transaction
            WHERE {due} GROUP BY user_id""")
        self.execute("""UPDATE credit_transaction
            SET remaining_amount = 0, expiration_date_processed_at = :now, updated_at = :now WHERE {due}""")
        self.execute("""INSERT INTO credit_transaction {ledger}
            SELECT {new_id}, user_id, 'EXPIRE', 'Expired credits: ' || credits, -credits, NULL, NULL,
                   NULL, NULL, :now, :now, 0
            FROM floor_expired""")
        self.execute("""UPDATE user_credit
            SET current_credits = {greatest}(user_credit.current_credits - e.credits, 0), updated_at = :now
            FROM floor_expired e WHERE user_credit.user_id = e.user_id""")

    def grant(self):
        """Steps 2 and 3: classify in SQL, insert every grant, add them to the balances."""
        self.temp("floor_grant", self.CLASSIFY)
        self.execute("""INSERT INTO credit_transaction {ledger}
            SELECT {new_id}, user_id, grant_type, description, amount, amount, NULL,
                   expiration_date, NULL, :now, :now, :period_key
            FROM floor_grant WHERE true
            ON CONFLICT (user_id, type, period_key) WHERE period_key > 0 DO NOTHING""")
        # floor_grant already left out every user served this period, and the
        # transaction is alone on the database: every row above went in.
        self.execute("""INSERT INTO user_credit (id, user_id, current_credits, last_refresh_at, created_at, updated_at)
            SELECT {new_id}, user_id, amount, :now, :now, :now FROM floor_grant WHERE true
            ON CONFLICT (user_id) DO UPDATE
            SET current_credits = user_credit.current_credits + excluded.current_credits,
                updated_at = excluded.updated_at""")

    def due_grants(self):
        """What the population owes at ``now``, counted in SQL (nothing is changed)."""
        self.load_prices()
        rows = self.execute(f"SELECT grant_type, COUNT(*) FROM ({self.CLASSIFY}) owed GROUP BY grant_type")
        return dict(rows.all())

    def due_expiry(self):
        users, credits = self.execute(
            "SELECT COUNT(DISTINCT user_id), COALESCE(SUM(remaining_amount), 0) FROM credit_transaction WHERE {due}"
        ).one()
        return {"users": users, "credits": int(credits)}

    def run(self):
        self.load_prices()
        self.expire()
        self.grant()
        if self.conn.dialect.name == "sqlite":
            for name in ("floor_price", "floor_expired", "floor_grant"):
                self.execute(f"DROP TABLE temp.{name}")


def run_floor(url, now):
    """Time the floor script on ``url``; its figures as a dict."""
    app = make_app(url)
    with app.app_context():
        engine = db.engine
        with engine.connect():
            pass
        counter = StatementCounter(engine)
        started = time.perf_counter()
        with engine.begin() as conn:
            FloorScript(conn, app.extensions["credits_plans"], now, app.config["CREDITS_TIMEZONE"]).run()
        seconds = time.perf_counter() - started
        figures = {"seconds": seconds, "statements": counter.count}
        figures.update(ledger_outcome(engine, now, app.config["CREDITS_TIMEZONE"]))
        engine.dispose()
    return figures


# Checking -----------------------------------------------------------------------


def expectations(url, now):
    """What the seeded database owes at ``now``, counted in SQL before any run."""
    app = make_app(url)
    with app.app_context():
        with db.engine.begin() as conn:
            floor = FloorScript(conn, app.extensions["credits_plans"], now, app.config["CREDITS_TIMEZONE"])
            owed = floor.due_grants()
            expiring = floor.due_expiry()
            conn.rollback()
        db.engine.dispose()
    return {"granted": {kind: owed.get(kind, 0) for kind in RECURRING_GRANTS}, "expired": expiring}


def ledger_outcome(engine, now, zone):
    """What a run at ``now`` wrote, read back from the ledger, and the drift it left."""
    key = Period.containing(now, zone).key
    now = utc_naive(now)
    with engine.connect() as conn:
        granted = dict(conn.execute(
            sa.text("SELECT type, COUNT(*) FROM credit_transaction "
                    "WHERE period_key = :key AND created_at = :now GROUP BY type")
            .bindparams(sa.bindparam("now", type_=sa.DateTime)),
            {"key": key, "now": now},
        ).all())
        users, credits = conn.execute(
            sa.text("SELECT COUNT(*), COALESCE(-SUM(amount), 0) FROM credit_transaction "
                    "WHERE type = 'EXPIRE' AND created_at = :now")
            .bindparams(sa.bindparam("now", type_=sa.DateTime)),
            {"now": now},
        ).one()
        drift = sum(1 for _ in find_drift(conn))
    return {
        "granted": {kind: granted.get(kind, 0) for kind in RECURRING_GRANTS},
        "expired": {"users": users, "credits": int(credits)},
        "drift": drift,
    }


def note(message, _started=time.perf_counter()):
    """Progress on stderr, so that a long benchmark shows where it is."""
    print(f"[{time.perf_counter() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


def check(condition, message):
    if not condition:
        raise BenchmarkFailed(message)


def check_run(name, run, outcome, expected):
    """The service's own summary, what it wrote, and what it had to do must agree."""
    summary = run["summary"]
    check(summary["errorCount"] == 0, f"{name}: {summary['errorCount']} user(s) failed: {summary['failedUsers']}")
    check(outcome["drift"] == 0, f"{name}: {outcome['drift']} user(s) out of balance after the run")
    check(summary["granted"] == expected["granted"],
          f"{name}: granted {summary['granted']}, expected {expected['granted']}")
    check(outcome["granted"] == expected["granted"],
          f"{name}: the ledger holds {outcome['granted']} new grants, expected {expected['granted']}")
    check(summary["expired"]["usersCount"] == expected["expired"]["users"]
          and summary["expired"]["credits"] == expected["expired"]["credits"],
          f"{name}: expired {summary['expired']}, expected {expected['expired']}")


# The benchmark ------------------------------------------------------------------


def benchmark(args, databases):
    service_url = databases.create("bench")
    floor_url = databases.create("bench_floor")
    note(f"seeding {args.users:,} users, twice")
    seeded, seed_seconds = prepare(service_url, args.users, args.seed)
    seeded_again, _ = prepare(floor_url, args.users, args.seed)
    note(f"seeded in {seed_seconds:.1f} s each; counting what is owed")
    check(seeded == seeded_again, "the demo population differs between two seedings with one seed")

    by_demo = {"granted": seeded["due"], "expired": seeded["expiring"]}
    by_sql = expectations(service_url, NOW)
    check(by_sql == by_demo, f"the database owes {by_sql}, the demo says it made {by_demo}")

    note("service run")
    first = timed_run(service_url, NOW, args.batch_size, args.workers)
    note(f"service run took {first['seconds']:.2f} s; checking it")
    app = make_app(service_url)
    with app.app_context():
        outcome = ledger_outcome(db.engine, NOW, app.config["CREDITS_TIMEZONE"])
        db.engine.dispose()
    check_run("service run", first, outcome, by_sql)

    note("floor run")
    floor = run_floor(floor_url, NOW)
    note(f"floor run took {floor['seconds']:.2f} s")
    check(floor["drift"] == 0, f"floor: {floor['drift']} user(s) out of balance")
    check(floor["granted"] == outcome["granted"], f"floor granted {floor['granted']}, service {outcome['granted']}")
    check(floor["expired"] == outcome["expired"], f"floor expired {floor['expired']}, service {outcome['expired']}")

    note("second service run")
    second = timed_run(service_url, LATER, args.batch_size, args.workers)
    # Grants only: a few credit packages do run out within the hour.
    check(sum(second["summary"]["granted"].values()) == 0, f"second run in the same month granted: {second['summary']}")
    check(second["summary"]["errorCount"] == 0, "second run: errors")

    users = args.users
    return {
        "database": databases.dialect,
        "users": users,
        "examined": first["summary"]["usersCount"],
        "batch_size": args.batch_size,
        "workers": 1 if service_url.startswith("sqlite") else args.workers,
        "seeded": {table: seeded[table] for table in ("payments", "user_credits", "credit_transactions")},
        "seed_seconds": round(seed_seconds, 2),
        "seed_peak_rss_mb": round(peak_rss_mb(), 1),
        "seconds": round(first["seconds"], 3),
        "users_per_second": round(users / first["seconds"]),
        "statements": first["statements"],
        "statements_per_1000_users": round(first["statements"] * 1000 / users, 1),
        "run_peak_rss_mb": round(first["rss_peak_mb"], 1),
        "run_rss_growth_mb": round(first["rss_peak_mb"] - first["rss_before_mb"], 1),
        "floor_seconds": round(floor["seconds"], 3),
        "floor_statements": floor["statements"],
        "ratio_service_to_floor": round(first["seconds"] / floor["seconds"], 2),
        "second_run_seconds": round(second["seconds"], 3),
        "second_run_statements": second["statements"],
        "ratio_second_to_first": round(second["seconds"] / first["seconds"], 2),
        "granted": outcome["granted"],
        "expired": outcome["expired"],
        "already_granted": first["summary"]["skipped"]["alreadyGranted"],
    }


def print_figures(f):
    lines = [
        ("database", f"{f['database']}, {f['users']:,} users ({f['examined']:,} not banned), batch {f['batch_size']}, workers {f['workers']}"),
        ("seeding", f"{f['seed_seconds']:.2f} s per database (peak RSS of this process {f['seed_peak_rss_mb']} MB)"),
        ("seeded rows", ", ".join(f"{table} {count:,}" for table, count in f["seeded"].items())),
        ("service run", f"{f['seconds']:.2f} s, {f['users_per_second']:,} users/s"),
        ("statements", f"{f['statements']:,} ({f['statements_per_1000_users']} per 1,000 users)"),
        ("run memory", f"peak RSS {f['run_peak_rss_mb']} MB, growth during the run {f['run_rss_growth_mb']} MB"),
        ("floor (one SQL tx)", f"{f['floor_seconds']:.2f} s, {f['floor_statements']} statements"),
        ("service / floor", f"{f['ratio_service_to_floor']:.2f}x"),
        ("second run", f"{f['second_run_seconds']:.2f} s, {f['second_run_statements']:,} statements, "
                       f"{f['ratio_second_to_first']:.2f}x the first"),
        ("granted", ", ".join(f"{kind} {count:,}" for kind, count in f["granted"].items())),
        ("expired", f"{f['expired']['users']:,} users, {f['expired']['credits']:,} credits; "
                    f"already granted {f['already_granted']:,}"),
        ("checks", "ledger in balance; grants and expiries = population = floor"),
    ]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label:<{width}}  {value}")
    print(json.dumps(f))


if __name__ == "__main__":
    sys.exit(main())
