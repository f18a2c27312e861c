"""indexes for how C-FIND matches on PostgreSQL: names regardless of case, dates as C strings

Patient names match case-insensitively as lower("PatientName") = / LIKE 'prefix%', and date
ranges compare under the C collation (storage/query/sql.py): neither can use the plain column
indexes, so without these a name or date search reads the whole table (tests/test_query_plans.py
holds every main query shape to an index). SQLite folds names with its own function and compares
bytes already: nothing to add there.

Revision ID: 0006
Revises: 0005
"""
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute('CREATE INDEX ix_patients_name_fold ON patients (lower("PatientName") text_pattern_ops)')
    op.execute('CREATE INDEX ix_studies_date_c ON studies ("StudyDate" COLLATE "C")')


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute('DROP INDEX IF EXISTS ix_studies_date_c')
    op.execute('DROP INDEX IF EXISTS ix_patients_name_fold')
