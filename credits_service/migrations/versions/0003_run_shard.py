"""Record which shard (K/N) a run covered; null for a run over every user.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("credits_service_run", sa.Column("shard", sa.String(9)))


def downgrade():
    op.drop_column("credits_service_run", "shard")
