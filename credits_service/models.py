"""The tables the job works on, with MkSaaS's table and column names.

``user`` and ``payment`` belong to the host app and are only read. The job
writes ``user_credit`` (the balance) and ``credit_transaction`` (the ledger).
Our own tables carry the ``credits_service_`` prefix so that they cannot
clash with anything the host app creates.

Timestamps are naive UTC, as MkSaaS stores them (``timestamp`` without time
zone).
"""

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    JSON,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db

# Grants are every type except these two (SPEC section 2): the host app may
# invent types of its own, and those are grants too.
USAGE = "USAGE"
EXPIRE = "EXPIRE"
NOT_GRANTS = (USAGE, EXPIRE)

MONTHLY_REFRESH = "MONTHLY_REFRESH"
SUBSCRIPTION_RENEWAL = "SUBSCRIPTION_RENEWAL"
LIFETIME_MONTHLY = "LIFETIME_MONTHLY"
RECURRING_GRANTS = (MONTHLY_REFRESH, SUBSCRIPTION_RENEWAL, LIFETIME_MONTHLY)


class User(db.Model):
    __tablename__ = "user"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(Text, unique=True)
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    banned: Mapped[bool | None] = mapped_column(Boolean)
    ban_expires: Mapped[datetime | None] = mapped_column(DateTime)


class Payment(db.Model):
    __tablename__ = "payment"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    price_id: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    scene: Mapped[str | None] = mapped_column(Text)
    interval: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text, ForeignKey("user.id", ondelete="CASCADE"), index=True)
    customer_id: Mapped[str] = mapped_column(Text)
    subscription_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    paid: Mapped[bool] = mapped_column(Boolean, default=False)
    period_start: Mapped[datetime | None] = mapped_column(DateTime)
    period_end: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class UserCredit(db.Model):
    __tablename__ = "user_credit"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, ForeignKey("user.id", ondelete="CASCADE"))
    current_credits: Mapped[int] = mapped_column(Integer, default=0)
    last_refresh_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (Index("uq_user_credit_user_id", "user_id", unique=True),)


# The period index: the database itself refuses a second recurring grant of
# one type to one user in one period, whatever happens to the run lock.
PERIOD_INDEX_WHERE = text("period_key > 0")
# Grants still holding credits: the only rows step 1 ever looks at.
OPEN_GRANT_WHERE = text("remaining_amount > 0 AND expiration_date_processed_at IS NULL")


class CreditTransaction(db.Model):
    __tablename__ = "credit_transaction"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, ForeignKey("user.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    amount: Mapped[int] = mapped_column(Integer)
    remaining_amount: Mapped[int | None] = mapped_column(Integer)
    payment_id: Mapped[str | None] = mapped_column(Text)
    expiration_date: Mapped[datetime | None] = mapped_column(DateTime)
    expiration_date_processed_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    period_key: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        Index(
            "uq_credit_transaction_period",
            "user_id",
            "type",
            "period_key",
            unique=True,
            postgresql_where=PERIOD_INDEX_WHERE,
            sqlite_where=PERIOD_INDEX_WHERE,
        ),
        Index("ix_credit_transaction_user_created", "user_id", "created_at"),
        Index(
            "ix_credit_transaction_open_grants",
            "user_id",
            "expiration_date",
            postgresql_where=OPEN_GRANT_WHERE,
            sqlite_where=OPEN_GRANT_WHERE,
        ),
    )


class Run(db.Model):
    """One call of the job: who started it, and how it ended."""

    __tablename__ = "credits_service_run"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    trigger: Mapped[str] = mapped_column(String(16))
    period: Mapped[str] = mapped_column(String(7))
    now: Mapped[datetime] = mapped_column(DateTime)
    dry_run: Mapped[bool] = mapped_column(Boolean)
    request_id: Mapped[str | None] = mapped_column(String(200))
    shard: Mapped[str | None] = mapped_column(String(9))  # "K/N", or None for every user
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    summary: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
