"""The daily credits job (SPEC section 4), free of any HTTP concern.

Users are taken in batches, in ``user.id`` order (keyset, so memory stays flat
however many users there are). Each batch is one transaction that runs the
three steps of the SPEC for its users with a fixed number of set-based
statements, the rows in between kept in scratch tables (scratch.py):

1. expire the grants whose time has passed,
2. classify every user who is not banned,
3. grant this period's credits to those entitled and not yet served,

and finally moves each balance once, atomically. A batch that fails is
replayed one user at a time, so a bad row costs one user, not the run. On
PostgreSQL several batches run at once, each on its own connection.
"""

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import DateTime, Text, and_, case, cast, func, literal, or_, select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InternalError, OperationalError

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
from . import scratch
from .period import Period, utc_naive
from .scratch import due, entitlement, movement, new_id, verdict

log = logging.getLogger(__name__)

users = User.__table__
payments = Payment.__table__
balances = UserCredit.__table__
ledger = CreditTransaction.__table__

ACTIVE_SUBSCRIPTION = ("active", "trialing")
LIST_CAP = 20  # cron-job.org reads 64 KB of the answer: every list is capped
RETRIES = 3  # deadlocks with the host app are retried before a batch is split


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

    def merge(self, other):
        """Add the counts of ``other`` (another worker's share of the run)."""
        self.users += other.users
        self.errors += other.errors
        self.expired_users += other.expired_users
        self.expired_credits += other.expired_credits
        self.clamped_users += other.clamped_users
        self.granted.update(other.granted)
        self.skipped.update(other.skipped)
        self.unknown_price_ids |= other.unknown_price_ids
        self.failed_users = (self.failed_users + other.failed_users)[:LIST_CAP]

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

    grant_type: str | None = None
    plan: object = None
    skip: str | None = None
    price_id: str | None = None  # the unknown price id, for the summary


def classify(lifetime_price_id, subscription_price_id, plans):
    """The table of SPEC section 4, step 2, for one user."""
    if lifetime_price_id is not None:  # lifetime
        return _entitled(LIFETIME_MONTHLY, plans.lifetime_by_price[lifetime_price_id])
    if subscription_price_id is not None:
        known = plans.subscription_by_price.get(subscription_price_id)
        if known is None:  # unknown price
            return Decision(skip="unknownPrice", price_id=subscription_price_id)
        plan, interval = known
        if interval == "year":  # yearly
            return _entitled(SUBSCRIPTION_RENEWAL, plan)
        return Decision(skip="monthly")  # the payment webhook grants these
    free = plans.free
    if free is None or free.disabled:
        return Decision(skip="noCredits")
    return _entitled(MONTHLY_REFRESH, free)


def _entitled(grant_type, plan):
    if not plan.grants_credits:
        return Decision(skip="noCredits", plan=plan)
    return Decision(grant_type=grant_type, plan=plan)


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
    engine, plans, now, *, zone="UTC", dry_run=False, batch_size=1000, run_id=None, progress=None, shard=None,
    workers=1,
):
    """Run the job at ``now`` (an aware datetime) and return its ``Summary``.

    A dry run does all the work in transactions that are rolled back, so its
    summary is exactly what a real run at the same moment would report.
    ``progress``, if given, is called with the number of users each batch
    covered. ``shard`` (a ``shards.Shard``) limits the run to its users.
    ``workers`` batches run at once, each on its own connection, so that the
    database can use more than one core; SQLite, which has one writer at a
    time, always gets one.
    """
    started = time.monotonic()
    job = _Job(plans, now, zone, run_id or str(uuid.uuid4()), dry_run, shard)
    keyset = _Keyset(batch_size, shard)

    def work():
        partial = Summary(run_id=job.run_id, period=job.period.label, dry_run=dry_run)
        try:
            # Each batch reads what it then writes: on SQLite it must hold the
            # write lock from its first statement (PostgreSQL ignores this).
            with engine.connect().execution_options(begin_immediate=True) as conn:
                while ids := keyset.next(conn):
                    _run_batch(conn, job, ids, partial)
                    if progress:
                        progress(len(ids))
        except BaseException:
            keyset.stop()  # the run has failed: the other workers stop after their batch
            raise
        return partial

    if engine.dialect.name == "sqlite":
        workers = 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"run-{job.run_id[:8]}") as pool:
        running = [pool.submit(work) for _ in range(workers)]
        partials = [future.result() for future in running]
    summary = Summary(run_id=job.run_id, period=job.period.label, dry_run=dry_run)
    for partial in partials:
        summary.merge(partial)
    summary.duration_ms = round((time.monotonic() - started) * 1000)
    return summary


def count_users(engine, shard=None):
    """How many users a run goes through (banned ones included)."""
    query = select(func.count()).select_from(users)
    if shard is not None:
        query = query.where(shard.holds(users.c.id))
    with engine.connect() as conn:
        return conn.scalar(query)


class _Keyset:
    """Hands out the users in ``user.id`` order, a batch at a time, to any worker."""

    def __init__(self, batch_size, shard):
        self.batch_size = batch_size
        self.shard = shard
        self.after = None
        self.finished = False
        self.lock = threading.Lock()

    def next(self, conn):
        with self.lock:
            if self.finished:
                return []
            query = select(users.c.id).order_by(users.c.id).limit(self.batch_size)
            if self.after is not None:
                query = query.where(users.c.id > self.after)
            if self.shard is not None:
                query = query.where(self.shard.holds(users.c.id))
            ids = conn.scalars(query).all()
            conn.rollback()
            if ids:
                self.after = ids[-1]
            else:
                self.finished = True
            return ids

    def stop(self):
        with self.lock:
            self.finished = True


def _run_batch(conn, job, ids, summary):
    """All of ``ids`` in one transaction, or else each user in its own."""
    scratch.create(conn)
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
                if len(summary.failed_users) < LIST_CAP:
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
            if not _is_transient(error):
                raise
            if attempt == RETRIES:
                # Still colliding with the host app: split the batch, so that
                # at worst the one user it keeps busy is reported.
                raise _UserFailure(_reason(error)) from error
            log.info("run %s: batch %s..%s retried after %s", job.run_id, first, last, error.orig)
        except DBAPIError as error:
            if not _caused_by_rows(error):
                raise
            raise _UserFailure(_reason(error)) from error
        except (LookupError, TypeError, ValueError) as error:
            raise _UserFailure(f"bad data: {error!r}") from error


def _caused_by_rows(error):
    """Whether the rows at hand, not the SQL, made a statement fail.

    A constraint, a value out of range, or an exception raised by a trigger
    of the host app (PL/pgSQL's SQLSTATE class P0) costs the users of the
    batch; an error in the SQL itself (a missing index, a renamed column)
    would fail every user alike, so it fails the run instead.
    """
    if error.connection_invalidated:
        return False
    if isinstance(error, (IntegrityError, DataError, InternalError)):
        return True
    return str(getattr(error.orig, "sqlstate", "") or "").startswith("P0")


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


class _Batch:
    """SPEC section 4 for the users whose id lies in ``first``..``last``.

    Each step is a few set-based statements; the rows in between stay in the
    connection's scratch tables (see scratch.py), so the work per batch is a
    fixed number of statements and no per-user data goes through Python.
    """

    def __init__(self, conn, job, first, last):
        self.conn = conn
        self.job = job
        self.first = first
        self.last = last
        # What the batch did, added to the summary once it has committed.
        self.users = 0
        self.expired_users = 0
        self.expired_credits = 0
        self.clamped = []
        self.entitled = 0
        self.moved = 0
        self.skipped = Counter()
        self.unknown_price_ids = set()
        self.granted = Counter()

    def in_batch(self, column):
        """The users of this batch: an id range, narrowed to the run's shard."""
        if self.job.shard is None:
            return column.between(self.first, self.last)
        return and_(column.between(self.first, self.last), self.job.shard.holds(column))

    def run(self):
        scratch.empty(self.conn)
        self.expire()
        self.classify()
        self.grant()
        self.move_balances()

    # Step 1 -----------------------------------------------------------------
    def expire(self):
        """Zero every grant past its expiration date, one EXPIRE row per user.

        The due rows are locked as they are copied, so that a consumer of the
        host app, which takes from the same grants, waits for us instead of
        racing us; what they held is what expires.
        """
        now = self.job.now
        is_due = and_(
            self.in_batch(ledger.c.user_id),
            ledger.c.remaining_amount > 0,
            ledger.c.expiration_date_processed_at.is_(None),
            ledger.c.expiration_date <= now,
            ledger.c.type.not_in(NOT_GRANTS),
        )
        copied = self.conn.execute(
            due.insert().from_select(
                ["id", "user_id", "credits"],
                select(ledger.c.id, ledger.c.user_id, ledger.c.remaining_amount)
                .where(is_due)
                .order_by(ledger.c.id)
                .with_for_update(),
            )
        )
        if not copied.rowcount:
            return
        # Restating the condition lets the database find the rows by index;
        # the id list keeps the update to exactly the rows copied and locked.
        self.conn.execute(
            update(ledger)
            .where(is_due, ledger.c.id.in_(select(due.c.id)))
            .values(remaining_amount=0, expiration_date_processed_at=now, updated_at=now)
        )
        per_user = select(due.c.user_id, func.sum(due.c.credits).label("credits")).group_by(due.c.user_id).subquery()
        self.conn.execute(
            ledger.insert().from_select(
                ["id", "user_id", "type", "description", "amount", "created_at", "updated_at", "period_key"],
                select(
                    new_id(),
                    per_user.c.user_id,
                    literal(EXPIRE),
                    literal("Expired credits: ") + cast(per_user.c.credits, Text),
                    -per_user.c.credits,
                    literal(now, DateTime),
                    literal(now, DateTime),
                    literal(0),
                ),
            )
        )

    # Step 2 -----------------------------------------------------------------
    def classify(self):
        """Find what decides each examined user's plan, then judge it.

        A user's verdict depends only on two price ids (of a lifetime
        purchase, of the latest active subscription), and a batch holds few
        distinct pairs: ``classify`` judges each pair once, in Python, and
        the verdicts go back to the database to be joined on.
        """
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
        self.conn.execute(
            entitlement.insert().from_select(
                ["user_id", "lifetime_price", "subscription_price", "grant_id"],
                select(users.c.id, lifetime, subscription, new_id()).where(self.in_batch(users.c.id), not_banned),
            )
        )
        pairs = self.conn.execute(
            select(entitlement.c.lifetime_price, entitlement.c.subscription_price, func.count())
            .group_by(entitlement.c.lifetime_price, entitlement.c.subscription_price)
        ).all()
        verdicts = []
        for lifetime_price, subscription_price, count in pairs:
            decision = classify(lifetime_price, subscription_price, self.job.plans)
            self.users += count
            if decision.grant_type:
                self.entitled += count
            if decision.skip:
                self.skipped[decision.skip] += count
            if decision.price_id is not None:
                self.unknown_price_ids.add(decision.price_id)
            verdicts.append(self.verdict_row(lifetime_price, subscription_price, decision))
        if verdicts:
            self.conn.execute(verdict.insert(), verdicts)

    def verdict_row(self, lifetime_price, subscription_price, decision):
        row = {
            "lifetime_price": lifetime_price,
            "subscription_price": subscription_price,
            "skip": decision.skip,
            "grant_type": decision.grant_type,
            "amount": None,
            "expiration_date": None,
            "description": None,
        }
        if decision.grant_type:
            credits = decision.plan.credits
            row["amount"] = credits.amount
            if credits.expire_days:
                row["expiration_date"] = self.job.now + timedelta(days=credits.expire_days)
            row["description"] = _description(decision, credits.amount, self.job.period.label)
        return row

    # Step 3 -----------------------------------------------------------------
    def grant(self):
        """At most one grant per (user, type, period), enforced twice.

        Rows already in the ledger are looked for first (including those the
        host app wrote without a period key); the unique period index then
        turns any grant a concurrent writer got in first into a no-op. Each
        grant carries the id picked for it in step 2, which is how the batch
        knows afterwards which of its grants were written.
        """
        now = self.job.now
        period = self.job.period
        judged = entitlement.join(
            verdict,
            and_(
                verdict.c.lifetime_price.is_not_distinct_from(entitlement.c.lifetime_price),
                verdict.c.subscription_price.is_not_distinct_from(entitlement.c.subscription_price),
            ),
        )
        served = (
            select(ledger.c.id)
            .where(
                ledger.c.user_id == entitlement.c.user_id,
                ledger.c.type == verdict.c.grant_type,
                or_(
                    ledger.c.period_key == period.key,
                    and_(
                        ledger.c.period_key == 0,
                        ledger.c.created_at >= period.start,
                        ledger.c.created_at < period.end,
                    ),
                ),
            )
            .exists()
        )
        wanted = (
            select(
                entitlement.c.grant_id,
                entitlement.c.user_id,
                verdict.c.grant_type,
                verdict.c.description,
                verdict.c.amount,
                verdict.c.amount,
                verdict.c.expiration_date,
                literal(now, DateTime),
                literal(now, DateTime),
                literal(period.key),
            )
            .select_from(judged)
            .where(verdict.c.grant_type.is_not(None), ~served)
        )
        written = entitlement.join(ledger, ledger.c.id == entitlement.c.grant_id)
        if self.entitled:
            self.conn.execute(
                _insert(self.conn, ledger)
                .from_select(
                    ["id", "user_id", "type", "description", "amount", "remaining_amount", "expiration_date",
                     "created_at", "updated_at", "period_key"],
                    wanted,
                )
                .on_conflict_do_nothing(
                    index_elements=["user_id", "type", "period_key"], index_where=PERIOD_INDEX_WHERE
                )
            )
            by_type = select(ledger.c.type, func.count()).select_from(written).group_by(ledger.c.type)
            self.granted.update(dict(self.conn.execute(by_type).all()))
        self.skipped["alreadyGranted"] += self.entitled - sum(self.granted.values())

        expired = select(due.c.user_id, due.c.credits.label("expired"), literal(0).label("granted"))
        granted = select(entitlement.c.user_id, literal(0), ledger.c.amount).select_from(written)
        moves = union_all(expired, granted).subquery()
        self.moved = self.conn.execute(
            movement.insert().from_select(
                ["user_id", "expired", "granted"],
                select(moves.c.user_id, func.sum(moves.c.expired), func.sum(moves.c.granted)).group_by(
                    moves.c.user_id
                ),
            )
        ).rowcount

    # Balances ---------------------------------------------------------------
    def move_balances(self):
        """Apply expiry and grant to each balance in one atomic update.

        ``current_credits`` becomes max(current - expired, 0) + granted,
        computed by the database on the row it holds locked, never from a
        value read earlier. Balances smaller than what expired (drift written
        by other software) are reported.
        """
        if not self.moved:
            return
        now = self.job.now
        expiring = movement.c.expired > 0
        has_balance = select(balances.c.id).where(balances.c.user_id == movement.c.user_id).exists()
        unheld = self.conn.scalars(select(movement.c.user_id).where(expiring, ~has_balance)).all()
        # Lock every balance that loses credits before looking at any, so
        # that the shortfall seen is the one the update below meets.
        locked = (
            select(balances.c.user_id)
            .join(movement, movement.c.user_id == balances.c.user_id)
            .where(expiring)
            .order_by(balances.c.user_id)
            .with_for_update(of=balances)
            .subquery()
        )
        self.conn.execute(select(func.count()).select_from(locked))
        short = self.conn.scalars(
            select(balances.c.user_id)
            .join(movement, movement.c.user_id == balances.c.user_id)
            .where(expiring, balances.c.current_credits < movement.c.expired)
        ).all()
        self.clamped = [*short, *unheld]
        for user_id in self.clamped:
            log.warning(
                "run %s: user %s held fewer credits than expired; balance set to 0 (ledger drift)",
                self.job.run_id, user_id,
                extra={"run_id": self.job.run_id, "user_id": user_id},
            )
        # Every balance row first exists (waiting for a host app creating one
        # at this moment), then one update moves them all.
        self.conn.execute(
            _insert(self.conn, balances)
            .from_select(
                ["id", "user_id", "current_credits", "created_at", "updated_at"],
                select(new_id(), movement.c.user_id, literal(0), literal(now, DateTime), literal(now, DateTime))
                .where(~has_balance),
            )
            .on_conflict_do_nothing(index_elements=["user_id"])
        )
        self.conn.execute(
            update(balances)
            .where(balances.c.user_id == movement.c.user_id)
            .values(
                current_credits=case(
                    (balances.c.current_credits > movement.c.expired,
                     balances.c.current_credits - movement.c.expired),
                    else_=0,
                )
                + movement.c.granted,
                updated_at=now,
            )
        )
        self.expired_users, self.expired_credits = self.conn.execute(
            select(
                func.count(movement.c.user_id).filter(movement.c.expired > 0),
                func.coalesce(func.sum(movement.c.expired), 0),
            )
        ).one()

    def add_to(self, summary):
        summary.users += self.users
        summary.expired_users += self.expired_users
        summary.expired_credits += self.expired_credits
        summary.clamped_users += len(self.clamped)
        summary.skipped.update(self.skipped)
        summary.unknown_price_ids |= self.unknown_price_ids
        summary.granted.update(self.granted)


def _description(decision, amount, period_label):
    plan = decision.plan.id
    return {
        MONTHLY_REFRESH: f"Free monthly credits: {amount} for {period_label}",
        SUBSCRIPTION_RENEWAL: f"Yearly subscription credits ({plan}): {amount} for {period_label}",
        LIFETIME_MONTHLY: f"Lifetime monthly credits ({plan}): {amount} for {period_label}",
    }[decision.grant_type]
