"""fold_models: each experiment's fitted per-fold classifiers (issue 15), as npz loaded without pickle

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('fold_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('classifier', sa.String(length=16), nullable=False),
    sa.Column('tap', sa.String(length=64), nullable=False),
    sa.Column('fold', sa.Integer(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('scores', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('experiment_id', 'classifier', 'tap', 'fold', name='uq_fold_model')
    )
    with op.batch_alter_table('fold_models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fold_models_experiment_id'), ['experiment_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('fold_models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fold_models_experiment_id'))
    op.drop_table('fold_models')
