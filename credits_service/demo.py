"""A realistic, reproducible demo population (``flask credits seed-demo``).

The population is what the daily job meets on the first day of a month on a
live MkSaaS site: mostly free users, some yearly, monthly and lifetime
customers, a few subscribers at a price id the plans file no longer knows,
lapsed and banned users, credit-package buyers, and about a third of the users
holding a grant that expires at ``now``. Every balance agrees with its ledger
(SPEC section 2), so ``credits verify`` passes on a freshly seeded database.

The same seed gives the same rows (ids included); only ``now`` moves the
dates. Users are generated and written in chunks, so memory stays flat
however many are asked for, and rows go in with COPY on PostgreSQL (an order
of magnitude faster than INSERT) and with executemany elsewhere.

``seed`` returns counts of what it made, including what the job should do at
``now`` (``due``: grants per type, ``expiring``: users and credits), so that a
benchmark can check the job against the population by construction.
"""

import queue
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import DateTime

from .models import (
    EXPIRE,
    LIFETIME_MONTHLY,
    MONTHLY_REFRESH,
    SUBSCRIPTION_RENEWAL,
    USAGE,
    CreditTransaction,
    Payment,
    User,
    UserCredit,
)
from .period import Period, utc_naive

CHUNK_USERS = 5000

# The mix of the population: (kind, share). "lapsed" users have a canceled
# or past_due subscription only, so the job treats them as free users.
KINDS = (
    ("free", 0.80),
    ("yearly", 0.08),
    ("monthly", 0.05),
    ("lifetime", 0.03),
    ("unknown", 0.01),
    ("lapsed", 0.02),
    ("banned", 0.01),
)
NEW_THIS_PERIOD = 0.03  # free users who signed up this month (and got its credits)
GRANTED_THIS_PERIOD = 0.02  # free users an earlier run this month already served
WITHOUT_CREDITS = 0.03  # free users from before credits existed: no ledger, no balance
CREDIT_PACKAGE = 0.04  # users who bought a credit package
UPGRADED_FROM_MONTHLY = 0.20  # yearly users with an older, canceled monthly subscription

REGISTER_GIFT = ("REGISTER_GIFT", 50, 30)  # type, amount, expire days: MkSaaS's defaults
PACKAGES = ((100, 90), (500, 90), (1000, None))  # amount, expire days
RETIRED_PRICES = ("price_demo_retired_1", "price_demo_retired_2", "price_demo_retired_3")
UNKNOWN_PLAN_AMOUNT = 1000

# Last month's recurring grant, as the first run of this month finds it.
DUE_AT_NOW = 0.36  # expires at (or just before) now, not yet processed
ALREADY_EXPIRED = 0.44  # expired days ago and processed by an earlier run
# the rest still runs for a few more days

USER_COLUMNS = ("id", "name", "email", "email_verified", "created_at", "updated_at", "banned", "ban_expires")
PAYMENT_COLUMNS = (
    "id", "price_id", "type", "scene", "interval", "user_id", "customer_id", "subscription_id",
    "status", "paid", "period_start", "period_end", "created_at", "updated_at",
)
BALANCE_COLUMNS = ("id", "user_id", "current_credits", "last_refresh_at", "created_at", "updated_at")
LEDGER_COLUMNS = (
    "id", "user_id", "type", "description", "amount", "remaining_amount", "payment_id",
    "expiration_date", "expiration_date_processed_at", "created_at", "updated_at", "period_key",
)
TABLES = (
    (User.__table__, USER_COLUMNS, "users"),
    (Payment.__table__, PAYMENT_COLUMNS, "payments"),
    (UserCredit.__table__, BALANCE_COLUMNS, "balances"),
    (CreditTransaction.__table__, LEDGER_COLUMNS, "ledger"),
)

DAY = timedelta(days=1)
# RFC 4122 version 4: version nibble 4, variant bits 10.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def seed(engine, plans, *, users, seed=1, now=None, zone="UTC"):
    """Add ``users`` demo users to a migrated database; return what was made.

    ``now`` (default: the current time) is the moment the population is
    built for: the job run at ``now`` finds about a third of the users with
    credits to expire and most users owed this month's grant. ``zone`` is
    the job's time zone (``CREDITS_TIMEZONE``), which decides the month.
    """
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    population = _Population(plans, random.Random(seed), now, zone)
    write = {"postgresql": _copy_rows, "sqlite": _sqlite_rows}.get(engine.dialect.name, _insert_rows)
    with engine.begin() as conn:
        for rows in _made_ahead(population, users):
            for table, columns, name in TABLES:
                if getattr(rows, name):
                    write(conn, table, columns, getattr(rows, name))
    if engine.dialect.name == "postgresql":
        # Fresh statistics, as autovacuum would gather a minute later: without
        # them the planner would plan the job's queries for empty tables.
        with engine.begin() as conn:
            for table, _, _ in TABLES:
                conn.exec_driver_sql(f'ANALYZE "{table.name}"')
    return population.counts()


def _made_ahead(population, users):
    """The population's chunks, each one made while the one before is written.

    Making rows is Python work; writing them is mostly waiting for the
    database (index upkeep), which releases the GIL, so on two cores the two
    overlap. The queue holds a single chunk: memory stays at about three
    chunks.
    """
    ready = queue.Queue(maxsize=1)
    stop = threading.Event()

    def make():
        try:
            for first in range(0, users, CHUNK_USERS):
                if stop.is_set():
                    return
                ready.put(population.chunk(min(CHUNK_USERS, users - first)))
            ready.put(None)
        except BaseException as error:  # handed to the writer, which raises it
            ready.put(error)

    maker = threading.Thread(target=make, name="demo-seed", daemon=True)
    maker.start()
    try:
        while (rows := ready.get()) is not None:
            if isinstance(rows, BaseException):
                raise rows
            yield rows
    finally:
        stop.set()
        while maker.is_alive():  # the writer failed: unblock a maker waiting to hand over
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass


def _copy_rows(conn, table, columns, rows):
    """COPY ``rows`` into ``table`` in binary, inside the transaction of ``conn``.

    Binary spares both sides the text round trip of every timestamp.
    """
    names = ", ".join(f'"{column}"' for column in columns)
    types = [table.c[column].type.compile(conn.dialect).lower() for column in columns]
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor:
        with cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN (FORMAT BINARY)') as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)


def _sqlite_rows(conn, table, columns, rows):
    """One driver-level executemany per table and chunk.

    A Core INSERT would spend more time turning each row into a dict and each
    datetime into text than SQLite spends writing it, so the datetimes are
    formatted here, the way SQLAlchemy stores them on SQLite
    ('YYYY-MM-DD HH:MM:SS.ffffff': the job compares them as text).
    """
    moments = [i for i, column in enumerate(columns) if isinstance(table.c[column].type, DateTime)]

    def stored(row):
        row = list(row)
        for i in moments:
            if row[i] is not None:
                row[i] = row[i].isoformat(" ", "microseconds")
        return tuple(row)

    names = ", ".join(f'"{column}"' for column in columns)
    marks = ", ".join("?" for _ in columns)
    conn.exec_driver_sql(f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})', [stored(row) for row in rows])


def _insert_rows(conn, table, columns, rows):
    """One executemany of a Core INSERT, for any other database."""
    conn.execute(table.insert(), [dict(zip(columns, row)) for row in rows])


@dataclass
class _Rows:
    """The rows of one chunk of users, as tuples in the column orders above."""

    users: list = field(default_factory=list)
    payments: list = field(default_factory=list)
    balances: list = field(default_factory=list)
    ledger: list = field(default_factory=list)


class _Population:
    """Draws users one after another from a single seeded generator."""

    def __init__(self, plans, rng, now, zone):
        self.rng = rng
        self.now = utc_naive(now)
        self.period = Period.containing(now, zone)
        self.last = _period_before(self.period, zone)
        self.free = plans.free if plans.free and not plans.free.disabled else None
        subscriptions = sorted(plans.subscription_by_price.items())
        self.yearly = [(price, plan) for price, (plan, interval) in subscriptions if interval == "year"]
        self.monthly = [(price, plan) for price, (plan, interval) in subscriptions if interval == "month"]
        self.lifetime = sorted(plans.lifetime_by_price.items())
        known = set(plans.subscription_by_price) | set(plans.lifetime_by_price)
        self.retired = [price for price in RETIRED_PRICES if price not in known]
        self.number = 0
        self.tally = Counter()
        self.due = Counter()

    # Drawing -----------------------------------------------------------------
    def new_id(self):
        """A version 4 UUID string from the seeded generator.

        The same value as ``str(uuid.UUID(int=bits, version=4))``, built
        directly because the ``UUID`` object costs more than the rest of a
        ledger row.
        """
        bits = self.rng.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET
        text = f"{bits:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"

    def token(self, prefix):
        return f"{prefix}_{self.rng.getrandbits(64):016x}"

    def between(self, start, end):
        """A moment in [start, end), to the second (``start`` if the span is empty)."""
        seconds = (end - start).total_seconds()
        return start + timedelta(seconds=int(self.rng.random() * seconds)) if seconds > 0 else start

    def kind(self):
        """Draw a kind; one the plans cannot express falls back to free."""
        draw = self.rng.random()
        for kind, share in KINDS:
            if draw < share:
                break
            draw -= share
        available = {"yearly": self.yearly, "monthly": self.monthly, "lifetime": self.lifetime,
                     "unknown": self.retired, "lapsed": self.yearly or self.monthly or self.retired}
        return kind if available.get(kind, True) else "free"

    # Users -------------------------------------------------------------------
    def chunk(self, size):
        """The rows of the next ``size`` users."""
        rows = _Rows()
        for _ in range(size):
            self.user(rows)
        return rows

    def user(self, rows):
        self.number += 1
        rng = self.rng
        user_id = self.new_id()
        kind = self.kind()
        new = kind == "free" and rng.random() < NEW_THIS_PERIOD and self.now > self.period.start
        signup = (
            self.between(self.period.start, self.now)
            if new
            else self.between(self.now - 730 * DAY, self.last.start - DAY)
        )
        banned, ban_expires, updated = None, None, signup
        if kind == "banned":
            banned, ban_expires, updated = self.ban(signup)
        rows.users.append((
            user_id, f"Demo User {self.number}", f"demo{self.number}.{user_id[:8]}@example.com",
            rng.random() < 0.9, signup, updated, banned, ban_expires,
        ))
        self.tally[kind] += 1
        plan = self.payments(rows, kind, user_id, signup)
        account = _Account(self, user_id)
        if kind == "free" and not new and rng.random() < WITHOUT_CREDITS:
            self.tally["without_credits"] += 1
        else:
            account.register_gift(signup)
            self.history(account, kind, plan, signup, new)
            if rng.random() < CREDIT_PACKAGE:
                self.credit_package(rows, account, signup)
        if not banned or (ban_expires is not None and ban_expires <= self.now):
            self.owe(kind, plan, served=account.served_this_period)
        account.close(rows, signup)

    def ban(self, signup):
        """Half the bans have run out (the user is served again), the rest hold."""
        banned_at = self.between(signup, self.now - DAY)
        draw = self.rng.random()
        if draw < 0.5:
            self.tally["ban_expired"] += 1
            return True, self.between(banned_at, self.now - DAY), banned_at
        if draw < 0.75:
            return True, self.between(self.now + DAY, self.now + 90 * DAY), banned_at
        return True, None, banned_at

    def owe(self, kind, plan, served):
        """Count the grant SPEC section 4 owes this (not banned) user at ``now``."""
        grant_type, plan = {
            "lifetime": (LIFETIME_MONTHLY, plan),
            "yearly": (SUBSCRIPTION_RENEWAL, plan),
            "monthly": (None, None),
            "unknown": (None, None),
        }.get(kind, (MONTHLY_REFRESH, self.free))
        if grant_type and plan is not None and plan.grants_credits:
            if served:
                self.tally["already_granted"] += 1
            else:
                self.due[grant_type] += 1

    # Payments ----------------------------------------------------------------
    def payments(self, rows, kind, user_id, signup):
        """The user's payment rows; returns the plan whose credits they get."""
        rng = self.rng
        customer = self.token("cus")
        if kind == "yearly":
            price, plan = rng.choice(self.yearly)
            started = self.between(signup, self.now - DAY)
            if self.monthly and rng.random() < UPGRADED_FROM_MONTHLY:
                old_price, _ = rng.choice(self.monthly)
                self.subscription(rows, user_id, customer, old_price, "month", "canceled", signup, started)
            status = "trialing" if rng.random() < 0.15 else "active"
            self.subscription(rows, user_id, customer, price, "year", status, started, started + 365 * DAY)
            return plan
        if kind == "monthly":
            price, plan = rng.choice(self.monthly)
            started = self.between(signup, self.now - DAY)
            status = "trialing" if rng.random() < 0.1 else "active"
            self.subscription(rows, user_id, customer, price, "month", status, started, started + 30 * DAY)
            return plan
        if kind == "unknown":
            started = self.between(signup, self.now - DAY)
            price = rng.choice(self.retired)
            self.subscription(rows, user_id, customer, price, "month", "active", started, started + 30 * DAY)
            return None
        if kind == "lapsed":
            price, interval = self.any_subscription_price()
            started = self.between(signup, self.now - 60 * DAY)
            status = rng.choice(("canceled", "canceled", "past_due"))
            self.subscription(rows, user_id, customer, price, interval, status, started, started + 30 * DAY)
            return self.free
        if kind == "lifetime":
            price, plan = rng.choice(self.lifetime)
            paid_at = self.between(signup, self.last.start)
            self.one_time(rows, user_id, customer, price, "lifetime", paid_at)
            return plan
        return self.free

    def any_subscription_price(self):
        choices = [(price, "year") for price, _ in self.yearly] + [(price, "month") for price, _ in self.monthly]
        return self.rng.choice(choices) if choices else (self.retired[0], "month")

    def subscription(self, rows, user_id, customer, price, interval, status, start, end):
        payment_id = self.new_id()
        rows.payments.append((
            payment_id, price, "subscription", "subscription", interval, user_id, customer,
            self.token("sub"), status, True, start, end, start, min(end, self.now),
        ))
        self.tally["payments"] += 1
        return payment_id

    def one_time(self, rows, user_id, customer, price, scene, paid_at):
        payment_id = self.new_id()
        rows.payments.append((
            payment_id, price, "one_time", scene, None, user_id, customer,
            None, "completed", True, None, None, paid_at, paid_at,
        ))
        self.tally["payments"] += 1
        return payment_id

    def credit_package(self, rows, account, signup):
        amount, expire_days = self.rng.choice(PACKAGES)
        bought = self.between(max(signup, self.now - 150 * DAY), self.now - DAY)
        payment_id = self.one_time(rows, account.user_id, self.token("cus"), f"price_demo_credits_{amount}",
                                   "credit", bought)
        expires = bought + expire_days * DAY if expire_days else None
        # An earlier daily run processed it, unless it ran out since then.
        processed = expires is None or expires < self.now - DAY
        account.grant("PURCHASE_PACKAGE", amount, bought, expires, f"Credit package: {amount} credits",
                      payment_id=payment_id, processed=processed)
        self.tally["credit_packages"] += 1

    # The ledger's recurring grants -------------------------------------------
    def history(self, account, kind, plan, signup, new):
        """Last month's recurring grant (and this month's, if any).

        Older months are left out: they hold nothing any more, and writing
        them would add half again to the seeding time for little change in
        what the job does.

        Monthly and unknown-price subscribers hold the payment webhook's
        renewal grant (period_key 0) instead. Sets
        ``account.served_this_period`` when the user already holds this
        period's grant.
        """
        rng = self.rng
        if kind in ("monthly", "unknown"):
            amount = plan.credits.amount if plan else UNKNOWN_PLAN_AMOUNT
            renewed = self.between(max(signup, self.now - 29 * DAY), self.now)
            account.grant(SUBSCRIPTION_RENEWAL, amount, renewed, renewed + 30 * DAY,
                          f"Subscription renewal credits: {amount}")
            return
        grant_type = {"lifetime": LIFETIME_MONTHLY, "yearly": SUBSCRIPTION_RENEWAL}.get(kind, MONTHLY_REFRESH)
        if plan is None or not plan.grants_credits:
            return
        credits = plan.credits
        if new:
            # The host app's sign-up grant: no period key, created this month.
            expires = signup + credits.expire_days * DAY if credits.expire_days else None
            account.grant(grant_type, credits.amount, signup, expires, self.describe(grant_type, plan, self.period))
            account.served_this_period = True
            return
        created = self.between(self.last.start, self.last.start + 36 * DAY / 24)
        expires, due = self.expiry(credits.expire_days)
        account.grant(grant_type, credits.amount, created, expires, self.describe(grant_type, plan, self.last),
                      period_key=self.last.key, due=due)
        if kind in ("free", "lapsed", "banned") and rng.random() < GRANTED_THIS_PERIOD:
            created = self.between(self.period.start, self.now)
            expires = created + credits.expire_days * DAY if credits.expire_days else None
            account.grant(grant_type, credits.amount, created, expires,
                          self.describe(grant_type, plan, self.period), period_key=self.period.key)
            account.served_this_period = True

    def expiry(self, expire_days):
        """When last month's grant expires, and whether it is due at ``now``.

        Drawn so that the first run of this month meets the three cases it
        must handle: due now, already expired and processed by an earlier
        run, still running (past tomorrow, so that a run later today has
        nothing of it to expire).
        """
        if expire_days is None:
            return None, False
        draw = self.rng.random()
        if draw < DUE_AT_NOW:
            return (self.now if self.rng.random() < 0.25 else self.between(self.now - DAY, self.now)), True
        if draw < DUE_AT_NOW + ALREADY_EXPIRED:
            return self.between(self.now - 10 * DAY, self.now - DAY), False
        return self.between(self.now + 2 * DAY, self.now + 25 * DAY), False

    def describe(self, grant_type, plan, period):
        label = period.label
        return {
            MONTHLY_REFRESH: f"Free monthly credits: {plan.credits.amount} for {label}",
            SUBSCRIPTION_RENEWAL: f"Yearly subscription credits ({plan.id}): {plan.credits.amount} for {label}",
            LIFETIME_MONTHLY: f"Lifetime monthly credits ({plan.id}): {plan.credits.amount} for {label}",
        }[grant_type]

    def counts(self):
        tally = self.tally
        return {
            "users": self.number,
            "payments": tally["payments"],
            "user_credits": tally["user_credits"],
            "credit_transactions": tally["credit_transactions"],
            "kinds": {kind: tally[kind] for kind, _ in KINDS},
            "ban_expired": tally["ban_expired"],
            "without_credits": tally["without_credits"],
            "credit_packages": tally["credit_packages"],
            "already_granted": tally["already_granted"],
            "expiring": {"users": tally["expiring_users"], "credits": tally["expiring_credits"]},
            "due": {kind: self.due[kind] for kind in (MONTHLY_REFRESH, SUBSCRIPTION_RENEWAL, LIFETIME_MONTHLY)},
        }


def _period_before(period, zone):
    return Period.containing(period.start.replace(tzinfo=UTC) - timedelta(microseconds=1), zone)


class _Account:
    """One user's ledger under construction, and the balance that matches it.

    Most grants are partly used (a USAGE row) and, once expired, either still
    due (remaining > 0, unprocessed) or processed by an earlier run
    (remaining 0, with its EXPIRE row). The balance is the sum of what the
    grants still hold, which is the ledger invariant.
    """

    def __init__(self, population, user_id):
        self.population = population
        self.user_id = user_id
        self.rows = []
        self.balance = 0
        self.expiring = 0
        self.last_refresh = None
        self.served_this_period = False

    def register_gift(self, signup):
        kind, amount, expire_days = REGISTER_GIFT
        self.grant(kind, amount, signup, signup + expire_days * DAY, f"Register gift credits: {amount}")

    def grant(self, kind, amount, created, expires, description, *, period_key=0, payment_id=None,
              due=False, processed=True):
        """A grant row, its usage so far, and its expiry if ``expires`` is past.

        An expired grant stays unprocessed (due at ``now``) when ``due`` is
        set or ``processed`` is not.
        """
        rng = self.population.rng
        now = self.population.now
        expired = expires is not None and expires <= now
        unprocessed = expired and (due or not processed)
        used = 0 if rng.random() < 0.3 else rng.randint(1, amount)
        if unprocessed:
            used = min(used, amount - 1)  # something left to expire
        left = amount - used
        if used:
            spent_at = self.population.between(created, min(expires or now, now))
            self.entry(USAGE, f"Credits used: {used}", -used, None, created=spent_at)
        processed_at = None
        if expired and not unprocessed:
            processed_at = min(expires + timedelta(minutes=5), now)
            if left:
                self.entry(EXPIRE, f"Expired credits: {left}", -left, None, created=processed_at)
            left = 0
        if unprocessed:
            self.expiring += left
        self.entry(kind, description, amount, left, created=created, expires=expires,
                   processed_at=processed_at, period_key=period_key, payment_id=payment_id)
        self.balance += left
        if period_key:
            self.last_refresh = max(self.last_refresh or created, created)

    def entry(self, kind, description, amount, remaining, *, created, expires=None, processed_at=None,
              period_key=0, payment_id=None):
        self.rows.append((
            self.population.new_id(), self.user_id, kind, description, amount, remaining, payment_id,
            expires, processed_at, created, processed_at or created, period_key,
        ))

    def close(self, rows, signup):
        """Hand the rows over, with the balance row if the user has a ledger."""
        if not self.rows:
            return
        tally = self.population.tally
        rows.ledger.extend(self.rows)
        latest = max(row[10] for row in self.rows)
        rows.balances.append((self.population.new_id(), self.user_id, self.balance, self.last_refresh,
                              signup, latest))
        tally["user_credits"] += 1
        tally["credit_transactions"] += len(self.rows)
        if self.expiring:
            tally["expiring_users"] += 1
            tally["expiring_credits"] += self.expiring
