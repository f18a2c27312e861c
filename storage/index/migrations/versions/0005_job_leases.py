"""job leases: which node runs a job, and until when its claim holds (several nodes on one index)

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('owner', sa.String(), nullable=True))
    op.add_column('jobs', sa.Column('lease_until', sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column('jobs', 'lease_until')
    op.drop_column('jobs', 'owner')
