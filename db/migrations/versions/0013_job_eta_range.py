"""jobs: the range of the smoothed time left (issue 25 item 4)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('eta_low_seconds', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('eta_high_seconds', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('eta_high_seconds')
        batch_op.drop_column('eta_low_seconds')
