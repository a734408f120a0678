"""What the service adds to MkSaaS's schema, all of it additive.

* ``credit_transaction.period_key`` (not null, default 0): the host app keeps
  inserting rows without it.
* A unique index on (user_id, type, period_key) where period_key > 0: the
  database itself refuses a second grant of a period.
* A unique index on ``user_credit.user_id``: one balance per user, which the
  atomic upsert of a balance relies on. Existing duplicates stop the upgrade
  before anything changes, with the users to merge.
* Indexes for the job's lookups, and the service's own run history table.

Revision ID: 0002
Revises: 0001
"""

import click
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OPEN_GRANTS = sa.text("remaining_amount > 0 AND expiration_date_processed_at IS NULL")
PERIOD_KEYED = sa.text("period_key > 0")
SHOWN_DUPLICATES = 20

MERGE_ADVICE = """\
Keep one user_credit row per user and delete the others, for example on PostgreSQL:

    DELETE FROM user_credit uc
     USING user_credit keep
     WHERE keep.user_id = uc.user_id
       AND (keep.created_at, keep.id) < (uc.created_at, uc.id);

then set each kept balance to what the user really holds (usually the sum of
remaining_amount of their grants), run this upgrade again, and check with
`flask --app wsgi credits verify`."""


def upgrade():
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    _refuse_duplicate_balances(bind)

    if "period_key" not in {column["name"] for column in inspector.get_columns("credit_transaction")}:
        op.add_column(
            "credit_transaction",
            sa.Column("period_key", sa.Integer, nullable=False, server_default="0"),
        )

    if not _has_unique(inspector, "user_credit", ["user_id"]):
        op.create_index("uq_user_credit_user_id", "user_credit", ["user_id"], unique=True)
    op.create_index(
        "uq_credit_transaction_period",
        "credit_transaction",
        ["user_id", "type", "period_key"],
        unique=True,
        postgresql_where=PERIOD_KEYED,
        sqlite_where=PERIOD_KEYED,
    )
    op.create_index("ix_credit_transaction_user_created", "credit_transaction", ["user_id", "created_at"])
    op.create_index(
        "ix_credit_transaction_open_grants",
        "credit_transaction",
        ["user_id", "expiration_date"],
        postgresql_where=OPEN_GRANTS,
        sqlite_where=OPEN_GRANTS,
    )
    if not _has_index_on(inspector, "payment", "user_id"):
        op.create_index("ix_payment_user_id", "payment", ["user_id"])

    op.create_table(
        "credits_service_run",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("now", sa.DateTime, nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("request_id", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("summary", sa.JSON),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_credits_service_run_status", "credits_service_run", ["status"])


def _refuse_duplicate_balances(bind):
    duplicates = bind.execute(
        sa.text(
            "SELECT user_id, count(*) FROM user_credit GROUP BY user_id HAVING count(*) > 1 ORDER BY user_id"
        )
    ).all()
    if duplicates:
        shown = ", ".join(f"{user_id} ({rows} rows)" for user_id, rows in duplicates[:SHOWN_DUPLICATES])
        more = f" and {len(duplicates) - SHOWN_DUPLICATES} more" if len(duplicates) > SHOWN_DUPLICATES else ""
        raise click.ClickException(
            f"nothing was changed: user_credit has more than one row for {len(duplicates)} user(s): "
            f"{shown}{more}.\n{MERGE_ADVICE}"
        )


def _has_unique(inspector, table, columns):
    indexes = [index for index in inspector.get_indexes(table) if index["unique"]]
    constraints = inspector.get_unique_constraints(table)
    return any(list(item["column_names"]) == columns for item in indexes + constraints)


def _has_index_on(inspector, table, column):
    return any((index["column_names"] or [None])[0] == column for index in inspector.get_indexes(table))


def downgrade():
    op.drop_table("credits_service_run")
    for name in (
        "ix_credit_transaction_open_grants",
        "ix_credit_transaction_user_created",
        "uq_credit_transaction_period",
    ):
        op.drop_index(name, table_name="credit_transaction")
    # period_key and uq_user_credit_user_id stay: the job's data depends on them.
