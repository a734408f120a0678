"""MkSaaS's four tables, for a database that does not have them yet.

On a MkSaaS database they exist already and this revision leaves them alone:
the host app owns them. On an empty database it creates them with MkSaaS's
names and types, so that tests, demos and fresh installs see the same schema.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _timestamps():
    return (
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
    )


def upgrade():
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "user" not in existing:
        op.create_table(
            "user",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("email", sa.Text, nullable=False, unique=True),
            sa.Column("email_verified", sa.Boolean, nullable=False, server_default=sa.false()),
            *_timestamps(),
            sa.Column("banned", sa.Boolean),
            sa.Column("ban_expires", sa.DateTime),
        )
    if "payment" not in existing:
        op.create_table(
            "payment",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("price_id", sa.Text, nullable=False),
            sa.Column("type", sa.Text, nullable=False),
            sa.Column("scene", sa.Text),
            sa.Column("interval", sa.Text),
            sa.Column("user_id", sa.Text, sa.ForeignKey("user.id", ondelete="CASCADE"), nullable=False),
            sa.Column("customer_id", sa.Text, nullable=False),
            sa.Column("subscription_id", sa.Text),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("paid", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("period_start", sa.DateTime),
            sa.Column("period_end", sa.DateTime),
            *_timestamps(),
        )
    if "user_credit" not in existing:
        op.create_table(
            "user_credit",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("user_id", sa.Text, sa.ForeignKey("user.id", ondelete="CASCADE"), nullable=False),
            sa.Column("current_credits", sa.Integer, nullable=False, server_default="0"),
            sa.Column("last_refresh_at", sa.DateTime),
            *_timestamps(),
        )
    if "credit_transaction" not in existing:
        op.create_table(
            "credit_transaction",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("user_id", sa.Text, sa.ForeignKey("user.id", ondelete="CASCADE"), nullable=False),
            sa.Column("type", sa.Text, nullable=False),
            sa.Column("description", sa.Text),
            sa.Column("amount", sa.Integer, nullable=False),
            sa.Column("remaining_amount", sa.Integer),
            sa.Column("payment_id", sa.Text),
            sa.Column("expiration_date", sa.DateTime),
            sa.Column("expiration_date_processed_at", sa.DateTime),
            *_timestamps(),
        )


def downgrade():
    # The tables may hold the host app's data: never dropped by a migration.
    pass
