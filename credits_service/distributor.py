"""The daily credits job (SPEC section 4), free of any HTTP concern.

Users are taken in batches, in ``user.id`` order (keyset, so memory stays flat
however many users there are). Each batch is one transaction that runs the
three steps of the SPEC for its users with a fixed number of set-based
statements:

1. expire the grants whose time has passed,
2. classify every user who is not banned,
3. grant this period's credits to those entitled and not yet served,

and finally moves each balance once, atomically. A batch that fails is
replayed one user at a time, so a bad row costs one user, not the run.
"""

import logging
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError

from .models import (
    EXPIRE,
    LIFETIME_MONTHLY,
    MONTHLY_REFRESH,
    NOT_GRANTS,
    PERIOD_INDEX_WHERE,
    RECURRING_GRANTS,
    SUBSCRIPTION_RENEWAL,
    CreditTransaction,
    Payment,
    User,
    UserCredit,
)
from .period import Period, utc_naive

log = logging.getLogger(__name__)

users = User.__table__
payments = Payment.__table__
balances = UserCredit.__table__
ledger = CreditTransaction.__table__

ACTIVE_SUBSCRIPTION = ("active", "trialing")
LIST_CAP = 20  # cron-job.org reads 64 KB of the answer: every list is capped
RETRIES = 3  # deadlocks with the host app are retried before a batch is split
IDS_PER_STATEMENT = 5000  # well under SQLite's and PostgreSQL's bind limits


@dataclass
class Summary:
    """What a run did; ``as_json`` is the answer of the endpoint and the CLI."""

    run_id: str
    period: str
    dry_run: bool
    users: int = 0
    errors: int = 0
    expired_users: int = 0
    expired_credits: int = 0
    clamped_users: int = 0
    granted: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    unknown_price_ids: set = field(default_factory=set)
    failed_users: list = field(default_factory=list)
    duration_ms: int = 0

    @property
    def processed(self):
        return self.users - self.errors

    def as_json(self):
        return {
            "message": (
                f"distribute credits success, users: {self.users}, "
                f"processed: {self.processed}, errors: {self.errors}"
            ),
            "usersCount": self.users,
            "processedCount": self.processed,
            "errorCount": self.errors,
            "runId": self.run_id,
            "period": self.period,
            "dryRun": self.dry_run,
            "durationMs": self.duration_ms,
            "expired": {
                "usersCount": self.expired_users,
                "credits": self.expired_credits,
                "clampedUsers": self.clamped_users,
            },
            "granted": {kind: self.granted[kind] for kind in RECURRING_GRANTS},
            "skipped": {
                reason: self.skipped[reason]
                for reason in ("alreadyGranted", "monthly", "unknownPrice", "noCredits")
            },
            "unknownPriceIds": sorted(self.unknown_price_ids)[:LIST_CAP],
            "failedUsers": self.failed_users[:LIST_CAP],
        }


@dataclass(frozen=True)
class Decision:
    """Step 2's verdict for one user: a grant, or the reason for none."""

    kind: str  # lifetime / yearly / monthly / unknown / free
    grant_type: str | None = None
    plan: object = None
    skip: str | None = None
    price_id: str | None = None


def classify(lifetime_price_id, subscription_price_id, plans):
    """The table of SPEC section 4, step 2, for one user."""
    if lifetime_price_id is not None:
        plan = plans.lifetime_by_price[lifetime_price_id]
        return _entitled("lifetime", LIFETIME_MONTHLY, plan)
    if subscription_price_id is not None:
        known = plans.subscription_by_price.get(subscription_price_id)
        if known is None:
            return Decision("unknown", skip="unknownPrice", price_id=subscription_price_id)
        plan, interval = known
        if interval == "year":
            return _entitled("yearly", SUBSCRIPTION_RENEWAL, plan)
        return Decision("monthly", skip="monthly")
    free = plans.free
    if free is None or free.disabled:
        return Decision("free", skip="noCredits")
    return _entitled("free", MONTHLY_REFRESH, free)


def _entitled(kind, grant_type, plan):
    if not plan.grants_credits:
        return Decision(kind, skip="noCredits", plan=plan)
    return Decision(kind, grant_type=grant_type, plan=plan)


class _Job:
    """The settings of one run, shared by every batch."""

    def __init__(self, plans, now, zone, run_id, dry_run, shard):
        self.plans = plans
        self.shard = shard
        self.now = utc_naive(now)
        self.period = Period.containing(now, zone)
        self.run_id = run_id
        self.dry_run = dry_run
        self.lifetime_price_ids = sorted(plans.lifetime_by_price)


def distribute(
    engine, plans, now, *, zone="UTC", dry_run=False, batch_size=1000, run_id=None, progress=None, shard=None
):
    """Run the job at ``now`` (an aware datetime) and return its ``Summary``.

    A dry run does all the work in transactions that are rolled back, so its
    summary is exactly what a real run at the same moment would report.
    ``progress``, if given, is called with the number of users each batch
    covered. ``shard`` (a ``shards.Shard``) limits the run to its users.
    """
    started = time.monotonic()
    job = _Job(plans, now, zone, run_id or str(uuid.uuid4()), dry_run, shard)
    summary = Summary(run_id=job.run_id, period=job.period.label, dry_run=dry_run)
    after = None
    while True:
        with engine.connect() as conn:
            ids = _next_user_ids(conn, after, batch_size, shard)
            conn.rollback()
            if not ids:
                break
            _run_batch(conn, job, ids, summary)
        after = ids[-1]
        if progress:
            progress(len(ids))
    summary.duration_ms = round((time.monotonic() - started) * 1000)
    return summary


def _next_user_ids(conn, after, batch_size, shard):
    query = select(users.c.id).order_by(users.c.id).limit(batch_size)
    if after is not None:
        query = query.where(users.c.id > after)
    if shard is not None:
        query = query.where(shard.holds(users.c.id))
    return conn.scalars(query).all()


def _run_batch(conn, job, ids, summary):
    """All of ``ids`` in one transaction, or else each user in its own."""
    try:
        _transaction(conn, job, ids[0], ids[-1], summary)
    except _UserFailure:
        for user_id in ids:
            try:
                _transaction(conn, job, user_id, user_id, summary)
            except _UserFailure as failure:
                summary.users += 1
                summary.errors += 1
                reason = failure.reason
                summary.failed_users.append({"userId": user_id, "reason": reason})
                log.warning(
                    "run %s: user %s failed: %s", job.run_id, user_id, reason,
                    extra={"run_id": job.run_id, "user_id": user_id, "reason": reason},
                )


class _UserFailure(Exception):
    """Something in the data of the users at hand; other users can go on."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def _transaction(conn, job, first, last, summary):
    """Process users ``first``..``last`` (by id) in one transaction.

    The summary is only touched once the transaction has committed, so a
    failed attempt leaves no trace in it.
    """
    for attempt in range(1, RETRIES + 1):
        try:
            with conn.begin() as tx:
                batch = _Batch(conn, job, first, last)
                batch.run()
                if job.dry_run:
                    tx.rollback()
            batch.add_to(summary)
            return
        except OperationalError as error:
            if not _is_transient(error) or attempt == RETRIES:
                raise
            log.info("run %s: batch %s..%s retried after %s", job.run_id, first, last, error.orig)
        except DBAPIError as error:
            if error.connection_invalidated:
                raise
            raise _UserFailure(_reason(error)) from error
        except (LookupError, TypeError, ValueError) as error:
            raise _UserFailure(f"bad data: {error!r}") from error


def _is_transient(error):
    """Deadlock or serialization failure: the same work succeeds if replayed."""
    return getattr(error.orig, "sqlstate", None) in ("40001", "40P01")


def _reason(error):
    first_line = str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else type(error.orig).__name__
    return f"{type(error.orig).__name__}: {first_line}"[:300]


def _insert(conn, table):
    """An INSERT that knows ON CONFLICT, in the dialect of ``conn``."""
    dialect = {"postgresql": postgresql, "sqlite": sqlite}[conn.dialect.name]
    return dialect.insert(table)


def _chunks(items, size=IDS_PER_STATEMENT):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _Batch:
    """SPEC section 4 for the users whose id lies in ``first``..``last``."""

    def __init__(self, conn, job, first, last):
        self.conn = conn
        self.job = job
        self.first = first
        self.last = last
        self.expired = {}  # user id -> credits expired
        self.clamped = []  # users whose balance was smaller than what expired
        self.decisions = {}  # user id -> Decision, for users not banned
        self.already_granted = set()  # user ids with this period's grant
        self.granted = {}  # user id -> (grant type, amount)

    def in_batch(self, column):
        """The users of this batch: an id range, narrowed to the run's shard."""
        if self.job.shard is None:
            return column.between(self.first, self.last)
        return and_(column.between(self.first, self.last), self.job.shard.holds(column))

    def run(self):
        self.expire()
        self.classify()
        self.grant()
        self.move_balances()

    # Step 1 -----------------------------------------------------------------
    def expire(self):
        """Zero every grant past its expiration date, one EXPIRE row per user.

        The rows are locked first so that a consumer of the host app, which
        takes from the same grants, waits for us instead of racing us.
        """
        now = self.job.now
        due = self.conn.execute(
            select(ledger.c.id, ledger.c.user_id, ledger.c.remaining_amount)
            .where(
                self.in_batch(ledger.c.user_id),
                ledger.c.remaining_amount > 0,
                ledger.c.expiration_date_processed_at.is_(None),
                ledger.c.expiration_date <= now,
                ledger.c.type.not_in(NOT_GRANTS),
            )
            .order_by(ledger.c.id)
            .with_for_update()
        ).all()
        if not due:
            return
        for chunk in _chunks([row.id for row in due]):
            self.conn.execute(
                update(ledger)
                .where(ledger.c.id.in_(chunk))
                .values(remaining_amount=0, expiration_date_processed_at=now, updated_at=now)
            )
        expired = defaultdict(int)
        for row in due:
            expired[row.user_id] += row.remaining_amount
        self.expired = dict(expired)
        self.conn.execute(
            ledger.insert(),
            [
                self.ledger_row(user_id, EXPIRE, -credits, f"Expired credits: {credits}", remaining=None)
                for user_id, credits in self.expired.items()
            ],
        )

    # Step 2 -----------------------------------------------------------------
    def classify(self):
        now = self.job.now
        lifetime = (
            select(payments.c.price_id)
            .where(
                payments.c.user_id == users.c.id,
                payments.c.type == "one_time",
                payments.c.status == "completed",
                payments.c.paid.is_(True),
                payments.c.price_id.in_(self.job.lifetime_price_ids),
            )
            .order_by(payments.c.created_at, payments.c.id)
            .limit(1)
            .scalar_subquery()
        )
        subscription = (
            select(payments.c.price_id)
            .where(
                payments.c.user_id == users.c.id,
                payments.c.type == "subscription",
                payments.c.status.in_(ACTIVE_SUBSCRIPTION),
            )
            .order_by(payments.c.created_at.desc(), payments.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        not_banned = or_(
            users.c.banned.is_(None),
            users.c.banned.is_(False),
            and_(users.c.ban_expires.is_not(None), users.c.ban_expires <= now),
        )
        rows = self.conn.execute(
            select(users.c.id, lifetime, subscription).where(self.in_batch(users.c.id), not_banned)
        )
        self.decisions = {
            user_id: classify(lifetime_price, subscription_price, self.job.plans)
            for user_id, lifetime_price, subscription_price in rows
        }

    # Step 3 -----------------------------------------------------------------
    def grant(self):
        """At most one grant per (user, type, period), enforced twice.

        Rows already in the ledger are looked up first (including those the
        host app wrote without a period key); the unique period index then
        turns any grant a concurrent writer got in first into a no-op.
        """
        period = self.job.period
        served = self.conn.execute(
            select(ledger.c.user_id, ledger.c.type).where(
                self.in_batch(ledger.c.user_id),
                ledger.c.type.in_(RECURRING_GRANTS),
                or_(
                    ledger.c.period_key == period.key,
                    and_(
                        ledger.c.period_key == 0,
                        ledger.c.created_at >= period.start,
                        ledger.c.created_at < period.end,
                    ),
                ),
            )
        )
        served = {tuple(row) for row in served}
        wanted = []
        for user_id, decision in self.decisions.items():
            if decision.grant_type is None:
                continue
            if (user_id, decision.grant_type) in served:
                self.already_granted.add(user_id)
                continue
            amount = decision.plan.credits.amount
            wanted.append(
                self.ledger_row(
                    user_id,
                    decision.grant_type,
                    amount,
                    _description(decision, amount, period.label),
                    remaining=amount,
                    expire_days=decision.plan.credits.expire_days,
                    period_key=period.key,
                )
            )
        if not wanted:
            return
        inserted = self.conn.execute(
            _insert(self.conn, ledger)
            .on_conflict_do_nothing(
                index_elements=["user_id", "type", "period_key"], index_where=PERIOD_INDEX_WHERE
            )
            .returning(ledger.c.user_id, ledger.c.type, ledger.c.amount),
            wanted,
        )
        self.granted = {user_id: (kind, amount) for user_id, kind, amount in inserted}
        lost_race = {row["user_id"] for row in wanted} - set(self.granted)
        self.already_granted |= lost_race

    # Balances ---------------------------------------------------------------
    def move_balances(self):
        """Apply expiry and grant to each balance in one atomic increment.

        The balances of expiring users are locked and read first, only to
        clamp at zero (SPEC: never below 0, drift reported); the write itself
        is ``current_credits + delta``, never a value computed from a read.
        """
        held = {}
        for chunk in _chunks(list(self.expired)):
            held.update(
                self.conn.execute(
                    select(balances.c.user_id, balances.c.current_credits)
                    .where(balances.c.user_id.in_(chunk))
                    .with_for_update()
                ).all()
            )
        delta = defaultdict(int)
        for user_id, credits in self.expired.items():
            balance = held.get(user_id) or 0
            if credits > balance:
                self.clamped.append(user_id)
                log.warning(
                    "run %s: user %s had %s credits but %s expired; balance set to 0 (ledger drift)",
                    self.job.run_id, user_id, balance, credits,
                    extra={"run_id": self.job.run_id, "user_id": user_id},
                )
            # The balance after expiry is max(balance - credits, 0); written as a delta.
            delta[user_id] -= balance - max(balance - credits, 0)
        for user_id, (_, amount) in self.granted.items():
            delta[user_id] += amount
        # A balance that expiry and grant both touched is written even when they
        # cancel out, so that its updated_at says the run was here.
        rows = [self.balance_row(user_id, change) for user_id, change in delta.items()]
        if not rows:
            return
        upsert = _insert(self.conn, balances)
        self.conn.execute(
            upsert.on_conflict_do_update(
                index_elements=["user_id"],
                set_={
                    "current_credits": balances.c.current_credits + upsert.excluded.current_credits,
                    "updated_at": upsert.excluded.updated_at,
                },
            ),
            rows,
        )

    def ledger_row(self, user_id, kind, amount, description, *, remaining, expire_days=None, period_key=0):
        now = self.job.now
        return {
            "id": str(uuid.uuid4()),
            "user_id": user_id,
            "type": kind,
            "description": description,
            "amount": amount,
            "remaining_amount": remaining,
            "payment_id": None,
            "expiration_date": now + timedelta(days=expire_days) if expire_days else None,
            "expiration_date_processed_at": None,
            "created_at": now,
            "updated_at": now,
            "period_key": period_key,
        }

    def balance_row(self, user_id, change):
        now = self.job.now
        return {
            "id": str(uuid.uuid4()),
            "user_id": user_id,
            "current_credits": change,
            "last_refresh_at": None,
            "created_at": now,
            "updated_at": now,
        }

    def add_to(self, summary):
        summary.users += len(self.decisions)
        summary.expired_users += len(self.expired)
        summary.expired_credits += sum(self.expired.values())
        summary.clamped_users += len(self.clamped)
        summary.skipped["alreadyGranted"] += len(self.already_granted)
        for user_id, decision in self.decisions.items():
            if decision.skip:
                summary.skipped[decision.skip] += 1
            if decision.price_id:
                summary.unknown_price_ids.add(decision.price_id)
        for kind, _ in self.granted.values():
            summary.granted[kind] += 1


def _description(decision, amount, period_label):
    plan = decision.plan.id
    return {
        MONTHLY_REFRESH: f"Free monthly credits: {amount} for {period_label}",
        SUBSCRIPTION_RENEWAL: f"Yearly subscription credits ({plan}): {amount} for {period_label}",
        LIFETIME_MONTHLY: f"Lifetime monthly credits ({plan}): {amount} for {period_label}",
    }[decision.grant_type]
