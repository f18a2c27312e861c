"""quotas: a study's protection and last arrival, running totals (archive size, recycling)

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('studies', sa.Column('last_received_at', sa.DateTime(), nullable=True))
    op.add_column('studies', sa.Column('protected', sa.Boolean(), server_default=sa.false(), nullable=False))
    # an archive made before: its studies' last arrival is their newest instance's
    op.execute("UPDATE studies SET last_received_at = COALESCE((SELECT max(instances.received_at) FROM instances "
               "JOIN series ON instances.series_pk = series.id WHERE series.study_pk = studies.id), created_at)")
    op.create_index('ix_studies_recycle', 'studies', ['protected', 'last_received_at'])
    op.create_table('counters',
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.execute("INSERT INTO counters (name, value) SELECT 'archive_bytes', COALESCE(sum(file_size), 0) FROM instances")
    op.execute("INSERT INTO counters (name, value) VALUES ('recycled_studies', 0), ('recycled_bytes', 0)")


def downgrade() -> None:
    op.drop_table('counters')
    op.drop_index('ix_studies_recycle', table_name='studies')
    # ALTER TABLE ... DROP COLUMN, also on SQLite (3.35+): a batch copy of the table would drop
    # the old one, and foreign_keys=ON would cascade that to every series and instance
    op.drop_column('studies', 'protected')
    op.drop_column('studies', 'last_received_at')
