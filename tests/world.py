"""A small vocabulary for building users, payments and ledgers in tests."""

import itertools
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from credits_service.distributor import distribute
from credits_service.ledger import find_drift
from credits_service.models import CreditTransaction, Payment, User, UserCredit
from credits_service.period import utc_naive

LONG_AGO = datetime(2025, 1, 1)


class World:
    def __init__(self, engine, app):
        self.engine = engine
        self.app = app
        self.plans = app.extensions["credits_plans"]
        self._numbers = itertools.count(1)

    def insert(self, table, **values):
        with self.engine.begin() as conn:
            conn.execute(table.__table__.insert().values(**values))

    def user(self, *, banned=None, ban_expires=None, user_id=None):
        number = next(self._numbers)
        user_id = user_id or f"user-{number:04d}"
        self.insert(
            User,
            id=user_id,
            name=f"User {number}",
            email=f"{user_id}@example.com",
            email_verified=True,
            created_at=LONG_AGO,
            updated_at=LONG_AGO,
            banned=banned,
            ban_expires=ban_expires,
        )
        return user_id

    def subscription(self, user_id, price_id, *, status="active", created_at=LONG_AGO, interval=None):
        self.insert(
            Payment,
            id=str(uuid.uuid4()),
            price_id=price_id,
            type="subscription",
            scene="subscription",
            interval=interval,
            user_id=user_id,
            customer_id=f"cus_{user_id}",
            subscription_id=f"sub_{uuid.uuid4().hex[:8]}",
            status=status,
            paid=True,
            created_at=created_at,
            updated_at=created_at,
        )

    def purchase(self, user_id, price_id, *, scene="lifetime", status="completed", paid=True):
        self.insert(
            Payment,
            id=str(uuid.uuid4()),
            price_id=price_id,
            type="one_time",
            scene=scene,
            user_id=user_id,
            customer_id=f"cus_{user_id}",
            status=status,
            paid=paid,
            created_at=LONG_AGO,
            updated_at=LONG_AGO,
        )

    def give(self, user_id, amount, *, kind="PURCHASE_PACKAGE", expires=None, created_at=LONG_AGO,
             period_key=0, balance=True):
        """A grant row holding ``amount``, and (by default) the balance to match."""
        self.insert(
            CreditTransaction,
            id=str(uuid.uuid4()),
            user_id=user_id,
            type=kind,
            description="test grant",
            amount=amount,
            remaining_amount=amount,
            expiration_date=utc_naive(expires) if expires else None,
            created_at=utc_naive(created_at) if created_at.tzinfo else created_at,
            updated_at=LONG_AGO,
            period_key=period_key,
        )
        if balance:
            self.add_balance(user_id, amount)

    def entry(self, user_id, kind, amount, *, remaining=None, expires=None, created_at=LONG_AGO,
              processed_at=None, period_key=0):
        """Any ledger row, as the host app might write it; the balance is left alone."""
        row_id = str(uuid.uuid4())
        self.insert(
            CreditTransaction,
            id=row_id,
            user_id=user_id,
            type=kind,
            description="test row",
            amount=amount,
            remaining_amount=remaining,
            expiration_date=utc_naive(expires) if expires else None,
            expiration_date_processed_at=processed_at,
            created_at=utc_naive(created_at) if created_at.tzinfo else created_at,
            updated_at=LONG_AGO,
            period_key=period_key,
        )
        return row_id

    def fail_inserts_for(self, user_id):
        """Plant a trigger that makes every ledger insert for ``user_id`` fail."""
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.exec_driver_sql(
                    "CREATE FUNCTION planted_failure() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'planted failure'; END $$"
                )
                conn.exec_driver_sql(
                    "CREATE TRIGGER planted_failure BEFORE INSERT ON credit_transaction FOR EACH ROW "
                    f"WHEN (NEW.user_id = '{user_id}') EXECUTE FUNCTION planted_failure()"
                )
            else:
                conn.exec_driver_sql(
                    "CREATE TRIGGER planted_failure BEFORE INSERT ON credit_transaction "
                    f"WHEN NEW.user_id = '{user_id}' BEGIN SELECT RAISE(ABORT, 'planted failure'); END"
                )

    def stop_failing(self):
        """Remove the trigger ``fail_inserts_for`` planted."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER planted_failure" + (
                " ON credit_transaction" if self.engine.dialect.name == "postgresql" else ""
            ))

    def add_balance(self, user_id, amount):
        credits = UserCredit.__table__
        with self.engine.begin() as conn:
            changed = conn.execute(
                credits.update()
                .where(credits.c.user_id == user_id)
                .values(current_credits=credits.c.current_credits + amount)
            ).rowcount
            if not changed:
                conn.execute(
                    credits.insert().values(
                        id=str(uuid.uuid4()), user_id=user_id, current_credits=amount,
                        created_at=LONG_AGO, updated_at=LONG_AGO,
                    )
                )

    def balance(self, user_id):
        credits = UserCredit.__table__
        with self.engine.connect() as conn:
            return conn.scalar(sa.select(credits.c.current_credits).where(credits.c.user_id == user_id))

    def balance_row(self, user_id):
        credits = UserCredit.__table__
        with self.engine.connect() as conn:
            return conn.execute(sa.select(credits).where(credits.c.user_id == user_id)).mappings().first()

    def rows(self, user_id=None, kind=None):
        ledger = CreditTransaction.__table__
        query = sa.select(ledger).order_by(ledger.c.created_at, ledger.c.type, ledger.c.id)
        if user_id:
            query = query.where(ledger.c.user_id == user_id)
        if kind:
            query = query.where(ledger.c.type == kind)
        with self.engine.connect() as conn:
            return conn.execute(query).mappings().all()

    def counts(self):
        """Row counts and balances: what a dry run must leave untouched."""
        with self.engine.connect() as conn:
            return {
                table.__tablename__: conn.scalar(sa.select(sa.func.count()).select_from(table.__table__))
                for table in (User, Payment, UserCredit, CreditTransaction)
            } | {
                "balances": sorted(map(tuple, conn.execute(sa.select(UserCredit.user_id, UserCredit.current_credits)))),
                "remaining": sorted(
                    map(tuple, conn.execute(sa.select(CreditTransaction.id, CreditTransaction.remaining_amount)))
                ),
            }

    def run(self, now, *, dry_run=False, zone="UTC", plans=None, batch_size=3):
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return distribute(self.engine, plans or self.plans, now, zone=zone, dry_run=dry_run, batch_size=batch_size)

    def drift(self):
        with self.engine.connect() as conn:
            return list(find_drift(conn))
