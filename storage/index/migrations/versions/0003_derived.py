"""what was made from an archived instance (de-identified copies, conversions)

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('derived',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source_uid', sa.String(), nullable=False),
    sa.Column('kind', sa.String(), nullable=False),
    sa.Column('uid', sa.String(), nullable=True),
    sa.Column('path', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source_uid', 'kind', 'uid', name='uq_derived')
    )
    op.create_index('ix_derived_source_uid', 'derived', ['source_uid'])
    op.create_index('ix_derived_uid', 'derived', ['uid'])


def downgrade() -> None:
    op.drop_index('ix_derived_uid', table_name='derived')
    op.drop_index('ix_derived_source_uid', table_name='derived')
    op.drop_table('derived')
