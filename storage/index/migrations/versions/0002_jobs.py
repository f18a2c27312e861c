"""on-arrival jobs, and the analysis figures of each instance

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(), nullable=False),
    sa.Column('action', sa.String(), nullable=False),
    sa.Column('state', sa.String(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('not_before', sa.DateTime(), nullable=False),
    sa.Column('last_error', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_state_not_before', ['state', 'not_before'], unique=False)

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('analyzed_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('pixel_data_offset', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('pixel_data_size', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('finding_errors', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('finding_warnings', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('finding_codes', sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        for col in ('finding_codes', 'finding_warnings', 'finding_errors', 'pixel_data_size',
                    'pixel_data_offset', 'analyzed_at'):
            batch_op.drop_column(col)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_state_not_before')
    op.drop_table('jobs')
