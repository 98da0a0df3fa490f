"""permutation_tests: label-permutation tests of an experiment's headline AUCs (issue 24)

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('permutation_tests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('n_permutations', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('code_version', sa.String(length=64), nullable=False),
    sa.Column('result', sa.JSON(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('permutation_tests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_permutation_tests_experiment_id'), ['experiment_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('permutation_tests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_permutation_tests_experiment_id'))
    op.drop_table('permutation_tests')
